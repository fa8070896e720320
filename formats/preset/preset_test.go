package preset

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// familyCase is one skeleton every family test runs over.
type familyCase struct {
	family string
	naming string
	scale  float64
	blocks int
}

func allCases() []familyCase {
	var cs []familyCase
	for _, f := range Names() {
		if f == genericName {
			continue
		}
		cs = append(cs, familyCase{f, "", 0.125, 2}, familyCase{f, "", 1, 0})
	}
	for _, n := range []string{"bfl", "comfyui"} {
		cs = append(cs, familyCase{"flux-dev", n, 0.125, 2}, familyCase{"flux-schnell", n, 1, 0})
	}
	return cs
}

func (c familyCase) String() string {
	return fmt.Sprintf("%s/%s/scale=%g/blocks=%d", c.family, c.naming, c.scale, c.blocks)
}

func planCase(t *testing.T, c familyCase) (MapTable, *Plan) {
	t.Helper()
	specs, err := Skeleton(c.family, SkeletonOptions{Scale: c.scale, Blocks: c.blocks, Naming: c.naming})
	if err != nil {
		t.Fatalf("%v: %v", c, err)
	}
	tab := SkeletonTable(specs)
	f, err := Detect(tab)
	if err != nil {
		t.Fatalf("%v: %v", c, err)
	}
	if f.Name() != c.family {
		t.Fatalf("%v: detected %s", c, f.Name())
	}
	p, err := f.Plan(tab, Options{})
	if err != nil {
		t.Fatalf("%v: %v", c, err)
	}
	return tab, p
}

// TestEveryTensorAccountedFor: each tensor of each skeleton is a source
// (weight or bias) of a layer or (part of) a kept tensor, exactly once, and
// every layer's geometry is consistent.
func TestEveryTensorAccountedFor(t *testing.T) {
	for _, c := range allCases() {
		tab, p := planCase(t, c)
		uses := map[string]int{}
		for _, l := range p.Layers {
			checkLayer(t, c, tab, l)
			seen := map[string]bool{}
			for _, s := range l.Sources {
				for _, n := range []string{s.Tensor, s.Bias} {
					if n != "" && !seen[n] {
						seen[n] = true
						uses[n]++
					}
				}
			}
		}
		for _, k := range p.Kept {
			if k.Reason == "" {
				t.Errorf("%v: kept %s has no reason", c, k.Name)
			}
			if k.Transform == "" {
				uses[k.Tensor]++
				if s, _ := tab.Shape(k.Tensor); fmt.Sprint(s) != fmt.Sprint(k.Shape) {
					t.Errorf("%v: kept %s shape %v, file %v", c, k.Name, k.Shape, s)
				}
				continue
			}
			seen := map[string]bool{}
			for _, pc := range k.Pieces {
				if !seen[pc.Tensor] {
					seen[pc.Tensor] = true
					uses[pc.Tensor]++
				}
			}
		}
		// Tensors shared by layers of a column split (FLUX proj_out) count
		// once per layer, and T5's shared.weight also feeds the copy
		// encoder.embed_tokens.weight: allow those cases only.
		for _, n := range tab.Names() {
			u := uses[n]
			if u == 0 {
				t.Errorf("%v: tensor %s not accounted for", c, n)
			}
			if u > 1 && !(strings.Contains(n, "proj_out.weight") || strings.Contains(n, "linear2.weight") ||
				strings.Contains(n, "linear1.") || (c.family == "t5-xxl" && n == "shared.weight" && u == 2)) {
				t.Errorf("%v: tensor %s used %d times", c, n, u)
			}
		}
		for n := range uses {
			if _, ok := tab.Shape(n); !ok {
				t.Errorf("%v: plan uses %s, not in the file", c, n)
			}
		}
		if p.Config == "" || p.ModelClass == "" {
			t.Errorf("%v: config %q class %q", c, p.Config, p.ModelClass)
		}
	}
}

// checkLayer verifies a layer's sources against the table.
func checkLayer(t *testing.T, c familyCase, tab Table, l Layer) {
	t.Helper()
	if l.Role != W4A4 && l.Role != W4A16 && l.Role != W4A16G128 || l.N <= 0 || l.K <= 0 || len(l.Sources) == 0 || len(l.Calib) == 0 || l.Reason == "" {
		t.Errorf("%v: layer %+v", c, l)
		return
	}
	if l.Role != W4A4 && (l.Shifted || l.SmoothGroup != "") {
		t.Errorf("%v: weight-only layer %s shifted or grouped", c, l.Name)
	}
	if l.Role == W4A16G128 && (l.Chunks != 0 || l.K%128 != 0 || l.N%8 != 0) {
		t.Errorf("%v: W4Linear layer %s [%d %d] chunks %d", c, l.Name, l.N, l.K, l.Chunks)
	}
	if l.Chunks != 0 && l.N%l.Chunks != 0 {
		t.Errorf("%v: %s N %d not a multiple of %d chunks", c, l.Name, l.N, l.Chunks)
	}
	covered := make([]bool, l.N)
	for _, s := range l.Sources {
		sh, ok := tab.Shape(s.Tensor)
		if !ok {
			t.Errorf("%v: %s source %s missing", c, l.Name, s.Tensor)
			continue
		}
		if l.Conv1x1 != (len(sh) == 4) {
			t.Errorf("%v: %s Conv1x1 %v but %s is %v", c, l.Name, l.Conv1x1, s.Tensor, sh)
		}
		if s.SrcRows.Len() != s.Rows.Len() || s.SrcRows.Hi > int(sh[0]) || s.Cols.Hi > int(sh[1]) ||
			s.Cols.Len() != l.K || s.Rows.Hi > l.N || s.Rows.Lo < 0 {
			t.Errorf("%v: %s source %+v shape %v N %d K %d", c, l.Name, s, sh, l.N, l.K)
			continue
		}
		for r := s.Rows.Lo; r < s.Rows.Hi; r++ {
			if covered[r] {
				t.Errorf("%v: %s row %d covered twice", c, l.Name, r)
				break
			}
			covered[r] = true
		}
		if s.Bias != "" {
			if bs, _ := tab.Shape(s.Bias); len(bs) != 1 || bs[0] != sh[0] {
				t.Errorf("%v: %s bias %s shape %v", c, l.Name, s.Bias, bs)
			}
		}
	}
	for _, key := range l.Calib {
		if strings.HasPrefix(key, "model.diffusion_model.") || strings.HasSuffix(key, ".weight") {
			t.Errorf("%v: %s calib key %q", c, l.Name, key)
		}
	}
}

// TestResolveRoundTrip: every source module resolves to its layer, in its
// own and its kohya-flattened form, and the targets cover the layer rows.
func TestResolveRoundTrip(t *testing.T) {
	for _, c := range allCases() {
		if c.scale == 1 {
			continue
		}
		_, p := planCase(t, c)
		for _, l := range p.Layers {
			rows := 0
			for _, key := range l.Calib {
				ts, ok := p.Resolve(key)
				if !ok {
					t.Errorf("%v: %s does not resolve", c, key)
					continue
				}
				for _, tg := range ts {
					if tg.Layer == l.Name && tg.SrcRows.Len() != tg.Rows.Len() {
						t.Errorf("%v: %s target %+v", c, key, tg)
					}
				}
			}
			for _, s := range l.Sources {
				ts, ok := p.Resolve(s.Module)
				if !ok {
					t.Fatalf("%v: source module %s does not resolve", c, s.Module)
				}
				found := false
				for _, tg := range ts {
					if tg.Layer == l.Name && tg.Cols == s.Cols {
						found = true
						rows += tg.Rows.Len()
					}
				}
				if !found {
					t.Errorf("%v: %s -> %+v, no target in %s with cols %v", c, s.Module, ts, l.Name, s.Cols)
				}
				if kts, ok := p.Resolve("lora_unet_" + flatten(s.Module)); ok && fmt.Sprint(kts) != fmt.Sprint(ts) {
					t.Errorf("%v: kohya %s -> %+v, want %+v", c, s.Module, kts, ts)
				}
			}
			_ = rows
		}
	}
}

func TestResolveFlux(t *testing.T) {
	for _, naming := range []string{"diffusers", "bfl", "comfyui"} {
		p := fluxPlan(t, "flux-dev", naming, 0.25, 2)
		const D, H = 768, 3072
		cases := []struct {
			module string
			want   []Target
		}{
			{"transformer.transformer_blocks.0.attn.to_k", []Target{{Layer: "transformer_blocks.0.qkv_proj", SrcRows: Range{0, D}, Rows: Range{D, 2 * D}, Cols: Range{0, D}}}},
			{"double_blocks.1.img_attn.qkv", []Target{{Layer: "transformer_blocks.1.qkv_proj", SrcRows: Range{0, 3 * D}, Rows: Range{0, 3 * D}, Cols: Range{0, D}}}},
			{"lora_unet_double_blocks_1_txt_mlp_2", []Target{{Layer: "transformer_blocks.1.mlp_context_fc2", SrcRows: Range{0, D}, Rows: Range{0, D}, Cols: Range{0, H}}}},
			{"lora_unet_single_blocks_3_linear1", []Target{
				{Layer: "single_transformer_blocks.3.mlp_fc1", SrcRows: Range{3 * D, 3*D + H}, Rows: Range{0, H}, Cols: Range{0, D}},
				{Layer: "single_transformer_blocks.3.qkv_proj", SrcRows: Range{0, 3 * D}, Rows: Range{0, 3 * D}, Cols: Range{0, D}}}},
			{"single_transformer_blocks.0.proj_out", []Target{
				{Layer: "single_transformer_blocks.0.mlp_fc2", SrcRows: Range{0, D}, Rows: Range{0, D}, Cols: Range{D, D + H}},
				{Layer: "single_transformer_blocks.0.out_proj", SrcRows: Range{0, D}, Rows: Range{0, D}, Cols: Range{0, D}}}},
			{"lora_unet_single_blocks_0_modulation_lin", []Target{{Layer: "single_transformer_blocks.0.norm.linear", SrcRows: Range{0, 3 * D}, Rows: Range{0, 3 * D}, Cols: Range{0, D}}}},
			{"final_layer.adaLN_modulation.1", []Target{
				{Layer: "norm_out.linear.weight", Kept: true, SrcRows: Range{0, D}, Rows: Range{D, 2 * D}, Cols: Range{0, D}},
				{Layer: "norm_out.linear.weight", Kept: true, SrcRows: Range{D, 2 * D}, Rows: Range{0, D}, Cols: Range{0, D}}}},
			{"lora_unet_img_in", []Target{{Layer: "x_embedder.weight", Kept: true, SrcRows: Range{0, D}, Rows: Range{0, D}, Cols: Range{0, 64}}}},
			{"context_embedder", []Target{{Layer: "context_embedder.weight", Kept: true, SrcRows: Range{0, D}, Rows: Range{0, D}, Cols: Range{0, 4096}}}},
		}
		for _, tc := range cases {
			got, ok := p.Resolve(tc.module)
			if !ok || fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("%s: Resolve(%s) = %+v %v\nwant %+v", naming, tc.module, got, ok, tc.want)
			}
		}
		if _, ok := p.Resolve("double_blocks.7.img_attn.qkv"); ok {
			t.Errorf("%s: block 7 resolved in a 2-block plan", naming)
		}
	}
}

func TestDetectErrors(t *testing.T) {
	if _, err := Detect(MapTable{"foo.weight": {4, 4}}); err == nil || !strings.Contains(err.Error(), "generic") {
		t.Errorf("unknown table: %v", err)
	}
	if _, err := Lookup("nope"); err == nil || !strings.Contains(err.Error(), "flux-dev") {
		t.Errorf("Lookup: %v", err)
	}
}

func TestUnknownTensors(t *testing.T) {
	specs, _ := Skeleton("flux-dev", SkeletonOptions{Scale: 0.125, Blocks: 1})
	tab := SkeletonTable(specs)
	tab["transformer_blocks.0.extra.weight"] = []int64{128, 128}
	f, _ := Lookup("flux-dev")
	if _, err := f.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), "transformer_blocks.0.extra.weight") {
		t.Errorf("unknown tensor: %v", err)
	}
	p, err := f.Plan(tab, Options{PassUnknown: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, k := range p.Kept {
		if k.Name == "transformer_blocks.0.extra.weight" && strings.HasPrefix(k.Reason, "unrecognised") {
			found = true
		}
	}
	if !found {
		t.Error("pass-unknown did not keep the tensor")
	}
	// A wrong shape names the tensor.
	tab = SkeletonTable(specs)
	tab["transformer_blocks.0.attn.to_k.weight"] = []int64{384, 256}
	if _, err := f.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), "to_k.weight") {
		t.Errorf("bad shape: %v", err)
	}
}

func TestGeneric(t *testing.T) {
	specs, _ := Skeleton("llama", SkeletonOptions{Scale: 0.125, Blocks: 2})
	tab := SkeletonTable(specs)
	g, _ := Lookup("generic")
	p, err := g.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Layers) != 14 {
		t.Errorf("%d layers, want 14 (7 per block)", len(p.Layers))
	}
	for _, k := range p.Kept {
		if strings.Contains(k.Name, "proj.weight") && !strings.Contains(k.Name, "embed") {
			t.Errorf("kept %s", k.Name)
		}
	}
	p, err = g.Plan(tab, Options{Include: []*regexp.Regexp{regexp.MustCompile(`mlp\.`)},
		Exclude: []*regexp.Regexp{regexp.MustCompile(`down_proj`)}})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Layers) != 4 {
		t.Errorf("%d layers with include/exclude, want 4", len(p.Layers))
	}
}

// TestResolveAmbiguousKohya: two modules that flatten to the same kohya
// name resolve by their dotted names only.
func TestResolveAmbiguousKohya(t *testing.T) {
	tab := MapTable{"a.b_c.weight": {128, 128}, "a_b.c.weight": {128, 128}, "x.y.weight": {128, 128}}
	g, _ := Lookup("generic")
	p, err := g.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Resolve("a_b_c"); ok {
		t.Error("ambiguous kohya name resolved")
	}
	if ts, ok := p.Resolve("a.b_c"); !ok || ts[0].Layer != "a.b_c" {
		t.Errorf("a.b_c -> %v %v", ts, ok)
	}
	if ts, ok := p.Resolve("lora_unet_x_y"); !ok || ts[0].Layer != "x.y" {
		t.Errorf("x_y -> %v %v", ts, ok)
	}
}

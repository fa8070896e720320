package preset

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Expected values below are written from the sources, not from the code:
// diffusers transformer_z_image.py (ZImageTransformerBlock: Attention with
// bias=False/out_bias=False, FeedForward(dim, int(dim/3*8)) with w1, w2, w3
// bias-free; adaLN_modulation only with modulation=True, which
// context_refiner lacks), diffusers activations.py SwiGLU.forward
// ("hidden_states, gate = proj(x).chunk(2)"; hidden_states * silu(gate)),
// and nunchaku transformer_zimage.py (to_qkv = fuse_linears([to_q, to_k,
// to_v]), FFN converted to FeedForward(activation_fn="swiglu")).

func zImagePlanOf(t *testing.T, scale float64, blocks int) (MapTable, *Plan) {
	t.Helper()
	return planCase(t, familyCase{"z-image", "", scale, blocks})
}

// TestZImageLayers: at scale 0.125 the width is 512 (3840·0.125 = 480,
// rounded to 4·128), the SwiGLU hidden int(512/3*8) = 1365; 2 layers and 2+2
// refiner blocks give 6 blocks of 4 W4A4 layers.
func TestZImageLayers(t *testing.T) {
	_, p := zImagePlanOf(t, 0.125, 2)
	const D, F = 512, 1365
	if p.ModelClass != "NunchakuZImageTransformer2DModel" || p.Naming != "diffusers" || p.Prefix != "" {
		t.Errorf("class %q naming %q prefix %q", p.ModelClass, p.Naming, p.Prefix)
	}
	var names []string
	for _, l := range p.Layers {
		names = append(names, l.Name)
		if l.Role != W4A4 || l.Shifted || l.SmoothGroup != "" || l.Chunks != 0 || l.Conv1x1 {
			t.Errorf("%s: role %v shifted %v group %q chunks %d conv %v", l.Name, l.Role, l.Shifted, l.SmoothGroup, l.Chunks, l.Conv1x1)
		}
		for _, s := range l.Sources {
			if s.Bias != "" {
				t.Errorf("%s: source %s has bias %s", l.Name, s.Tensor, s.Bias)
			}
		}
	}
	var want []string
	for _, b := range []string{"layers.0.", "layers.1.", "noise_refiner.0.", "noise_refiner.1.", "context_refiner.0.", "context_refiner.1."} {
		for _, m := range []string{"attention.to_qkv", "attention.to_out.0", "feed_forward.net.0.proj", "feed_forward.net.2"} {
			want = append(want, b+m)
		}
	}
	if !reflect.DeepEqual(names, want) {
		t.Fatalf("layers\n%v\nwant\n%v", names, want)
	}

	type src struct {
		tensor        string
		srcRows, rows Range
	}
	cases := []struct {
		layer string
		n, k  int
		srcs  []src
		calib []string
	}{
		{"layers.1.attention.to_qkv", 3 * D, D, []src{
			{"layers.1.attention.to_q.weight", Range{0, D}, Range{0, D}},
			{"layers.1.attention.to_k.weight", Range{0, D}, Range{D, 2 * D}},
			{"layers.1.attention.to_v.weight", Range{0, D}, Range{2 * D, 3 * D}}},
			[]string{"layers.1.attention.to_q", "layers.1.attention.to_k", "layers.1.attention.to_v"}},
		{"context_refiner.0.attention.to_out.0", D, D, []src{
			{"context_refiner.0.attention.to_out.0.weight", Range{0, D}, Range{0, D}}},
			[]string{"context_refiner.0.attention.to_out.0"}},
		// SwiGLU: rows [0, F) the ungated half (w3), rows [F, 2F) the gate (w1).
		{"noise_refiner.1.feed_forward.net.0.proj", 2 * F, D, []src{
			{"noise_refiner.1.feed_forward.w3.weight", Range{0, F}, Range{0, F}},
			{"noise_refiner.1.feed_forward.w1.weight", Range{0, F}, Range{F, 2 * F}}},
			[]string{"noise_refiner.1.feed_forward.w3", "noise_refiner.1.feed_forward.w1"}},
		{"layers.0.feed_forward.net.2", D, F, []src{
			{"layers.0.feed_forward.w2.weight", Range{0, D}, Range{0, D}}},
			[]string{"layers.0.feed_forward.w2"}},
	}
	for _, c := range cases {
		l, ok := p.Layer(c.layer)
		if !ok {
			t.Errorf("no layer %s", c.layer)
			continue
		}
		if l.N != c.n || l.K != c.k || l.CalibCols != (Range{0, c.k}) {
			t.Errorf("%s: N %d K %d calib cols %v, want %d %d", c.layer, l.N, l.K, l.CalibCols, c.n, c.k)
		}
		if !reflect.DeepEqual(l.Calib, c.calib) {
			t.Errorf("%s: calib %v, want %v", c.layer, l.Calib, c.calib)
		}
		if len(l.Sources) != len(c.srcs) {
			t.Errorf("%s: %d sources, want %d", c.layer, len(l.Sources), len(c.srcs))
			continue
		}
		for i, s := range l.Sources {
			w := c.srcs[i]
			if s.Tensor != w.tensor || s.Module != strings.TrimSuffix(w.tensor, ".weight") ||
				s.SrcRows != w.srcRows || s.Rows != w.rows || s.Cols != (Range{0, c.k}) {
				t.Errorf("%s source %d: %+v, want %+v", c.layer, i, s, w)
			}
		}
	}

	// LoRA fusion: w1 lands in the second half of net.0.proj.
	ts, ok := p.Resolve("layers.1.feed_forward.w1")
	if want := []Target{{Layer: "layers.1.feed_forward.net.0.proj", SrcRows: Range{0, F}, Rows: Range{F, 2 * F}, Cols: Range{0, D}}}; !ok || !reflect.DeepEqual(ts, want) {
		t.Errorf("Resolve w1 = %+v %v, want %+v", ts, ok, want)
	}

	// 16-bit tensors under their diffusers names.
	for name, reason := range map[string]string{
		"layers.0.adaLN_modulation.0.weight":            "adaLN modulation (16-bit in nunchaku's Z-Image)",
		"noise_refiner.1.adaLN_modulation.0.bias":       "adaLN modulation (16-bit in nunchaku's Z-Image)",
		"context_refiner.1.attention.norm_k.weight":     "norm",
		"layers.1.ffn_norm2.weight":                     "norm",
		"all_x_embedder.2-1.weight":                     "embedder",
		"all_final_layer.2-1.linear.bias":               "final projection",
		"all_final_layer.2-1.adaLN_modulation.1.weight": "final norm modulation",
		"t_embedder.mlp.2.weight":                       "embedder",
		"cap_embedder.0.weight":                         "norm",
		"cap_embedder.1.weight":                         "embedder",
		"x_pad_token":                                   "pad token",
		"cap_pad_token":                                 "pad token",
	} {
		k := keptByName(p, name)
		if k == nil || k.Reason != reason || k.Tensor != name || k.Transform != "" {
			t.Errorf("kept %s = %+v, want reason %q", name, k, reason)
		}
	}
	if k := keptByName(p, "context_refiner.0.adaLN_modulation.0.weight"); k != nil {
		t.Errorf("context_refiner has no adaLN, kept %+v", k)
	}
	// Per modulated block: 6 norms + adaLN weight and bias; context: 6 norms.
	// Top level: x_embedder 2, final layer 4, t_embedder 4, cap_embedder 3,
	// pad tokens 2.
	if want := 4*8 + 2*6 + 15; len(p.Kept) != want {
		t.Errorf("%d kept tensors, want %d", len(p.Kept), want)
	}
}

// TestZImageRealWidths: the real model (dim 3840, F 10240, 30 + 2 + 2
// blocks) gives the shapes of the contract notes' table (to_qkv 11520 ×
// 3840, net.0.proj 20480 × 3840, net.2 3840 × 10240).
func TestZImageRealWidths(t *testing.T) {
	_, p := zImagePlanOf(t, 1, 0)
	if len(p.Layers) != 34*4 {
		t.Errorf("%d layers, want %d", len(p.Layers), 34*4)
	}
	for name, nk := range map[string][2]int{
		"layers.29.attention.to_qkv":                {11520, 3840},
		"layers.0.attention.to_out.0":               {3840, 3840},
		"context_refiner.1.feed_forward.net.0.proj": {20480, 3840},
		"noise_refiner.0.feed_forward.net.2":        {3840, 10240},
	} {
		if l, ok := p.Layer(name); !ok || l.N != nk[0] || l.K != nk[1] {
			t.Errorf("%s: %+v, want N %d K %d", name, l, nk[0], nk[1])
		}
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(p.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	// Tongyi-MAI/Z-Image-Turbo transformer/config.json values.
	want := map[string]any{
		"_class_name": "ZImageTransformer2DModel", "all_f_patch_size": []any{1.0}, "all_patch_size": []any{2.0},
		"axes_dims": []any{32.0, 48.0, 48.0}, "axes_lens": []any{1536.0, 512.0, 512.0}, "cap_feat_dim": 2560.0,
		"dim": 3840.0, "in_channels": 16.0, "n_heads": 30.0, "n_kv_heads": 30.0, "n_layers": 30.0,
		"n_refiner_layers": 2.0, "norm_eps": 1e-5, "qk_norm": true, "rope_theta": 256.0, "t_scale": 1000.0,
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config\n%v\nwant\n%v", cfg, want)
	}
}

// TestZImageConfigScaled: widths and counts come from the file.
func TestZImageConfigScaled(t *testing.T) {
	_, p := zImagePlanOf(t, 0.125, 1)
	var cfg struct {
		Dim      int   `json:"dim"`
		Heads    int   `json:"n_heads"`
		KVHeads  int   `json:"n_kv_heads"`
		Layers   int   `json:"n_layers"`
		Refiners int   `json:"n_refiner_layers"`
		Cap      int   `json:"cap_feat_dim"`
		In       int   `json:"in_channels"`
		Axes     []int `json:"axes_dims"`
	}
	if err := json.Unmarshal([]byte(p.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Dim != 512 || cfg.Heads != 4 || cfg.KVHeads != 4 || cfg.Layers != 1 || cfg.Refiners != 1 ||
		cfg.Cap != 2560 || cfg.In != 16 || fmt.Sprint(cfg.Axes) != "[32 48 48]" {
		t.Errorf("config %s", p.Config)
	}
	if len(p.Layers) != 3*4 {
		t.Errorf("%d layers, want 12 (1 layer, 1+1 refiner blocks)", len(p.Layers))
	}
}

// TestZImageDetect: the skeleton detects as z-image only, and no other
// family's skeleton does.
func TestZImageDetect(t *testing.T) {
	specs, err := Skeleton("z-image", SkeletonOptions{Scale: 0.125, Blocks: 1})
	if err != nil {
		t.Fatal(err)
	}
	if f, err := Detect(SkeletonTable(specs)); err != nil || f.Name() != "z-image" {
		t.Fatalf("detect: %v %v", f, err)
	}
	z, _ := Lookup("z-image")
	for _, name := range Names() {
		if name == "z-image" || name == genericName {
			continue
		}
		specs, err := Skeleton(name, SkeletonOptions{Scale: 0.125, Blocks: 1})
		if err != nil {
			t.Fatal(err)
		}
		if z.Detect(SkeletonTable(specs)) {
			t.Errorf("z-image detects the %s skeleton", name)
		}
	}
	if _, err := Skeleton("z-image", SkeletonOptions{Naming: "bfl"}); err == nil {
		t.Error("bfl naming accepted")
	}
}

// TestZImageMissingAndUnknown: a missing tensor (layer source, block norm,
// top-level) fails naming it; unknown tensors fail, adaLN included where
// diffusers builds none (context_refiner); refiner counts must agree.
func TestZImageMissingAndUnknown(t *testing.T) {
	specs, _ := Skeleton("z-image", SkeletonOptions{Scale: 0.125, Blocks: 2})
	z, _ := Lookup("z-image")
	for _, name := range []string{
		"layers.1.feed_forward.w3.weight",
		"noise_refiner.0.attention.to_v.weight",
		"context_refiner.1.ffn_norm2.weight",
		"layers.0.adaLN_modulation.0.bias",
		"cap_pad_token",
		"all_final_layer.2-1.linear.weight",
		"t_embedder.mlp.0.bias",
	} {
		tab := SkeletonTable(specs)
		delete(tab, name)
		if _, err := z.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("without %s: %v", name, err)
		}
	}
	for _, extra := range []string{"layers.0.extra.weight", "context_refiner.0.adaLN_modulation.0.weight", "foo"} {
		tab := SkeletonTable(specs)
		tab[extra] = []int64{128, 128}
		if _, err := z.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), extra) {
			t.Errorf("with %s: %v", extra, err)
		}
	}
	tab := SkeletonTable(specs)
	for n := range tab {
		if strings.HasPrefix(n, "context_refiner.1.") {
			delete(tab, n)
		}
	}
	if _, err := z.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), "context_refiner") {
		t.Errorf("2 noise, 1 context refiner blocks: %v", err)
	}
	// A wrong shape names the tensor.
	tab = SkeletonTable(specs)
	tab["layers.0.feed_forward.w1.weight"] = []int64{1365, 384}
	if _, err := z.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), "feed_forward.w1.weight") {
		t.Errorf("bad shape: %v", err)
	}
}

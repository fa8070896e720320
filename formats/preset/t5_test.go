package preset

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// TestT5Plan: every linear of every block is a W4A16G128 layer under its
// transformers name; norms, the relative position bias and the embedding
// stay 16-bit; encoder.embed_tokens.weight is a copy of shared.weight; the
// config is T5Config's, read from the widths.
func TestT5Plan(t *testing.T) {
	_, p := planCase(t, familyCase{"t5-xxl", "", 0.125, 2})
	const D, F, H, V = 512, 1280, 8, 32128
	if p.ModelClass != "NunchakuT5EncoderModel" || p.Naming != "transformers" || len(p.Layers) != 14 {
		t.Fatalf("class %s naming %s, %d layers", p.ModelClass, p.Naming, len(p.Layers))
	}
	want := map[string][2]int{"layer.0.SelfAttention.q": {D, D}, "layer.0.SelfAttention.k": {D, D}, "layer.0.SelfAttention.v": {D, D},
		"layer.0.SelfAttention.o": {D, D}, "layer.1.DenseReluDense.wi_0": {F, D}, "layer.1.DenseReluDense.wi_1": {F, D},
		"layer.1.DenseReluDense.wo": {D, F}}
	for b := range 2 {
		for m, nk := range want {
			name := fmt.Sprintf("encoder.block.%d.%s", b, m)
			l, ok := p.Layer(name)
			if !ok || l.Role != W4A16G128 || l.N != nk[0] || l.K != nk[1] || l.Chunks != 0 || len(l.Sources) != 1 ||
				l.Sources[0].Tensor != name+".weight" || l.Sources[0].Bias != "" || l.Calib[0] != name {
				t.Errorf("%s: %+v", name, l)
			}
		}
	}
	kept := map[string]string{}
	for _, k := range p.Kept {
		kept[k.Name] = k.Reason
	}
	for _, n := range []string{"shared.weight", "encoder.embed_tokens.weight", "encoder.final_layer_norm.weight",
		"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "encoder.block.0.layer.0.layer_norm.weight",
		"encoder.block.1.layer.1.layer_norm.weight"} {
		if kept[n] == "" {
			t.Errorf("%s not kept", n)
		}
	}
	if len(p.Kept) != 8 {
		t.Errorf("%d kept tensors, want 8", len(p.Kept))
	}
	emb := keptByName(p, "encoder.embed_tokens.weight")
	if emb.Transform != "concat" || len(emb.Pieces) != 1 || emb.Pieces[0].Tensor != "shared.weight" ||
		emb.Pieces[0].SrcRows != All(V) || emb.Pieces[0].Rows != All(V) || fmt.Sprint(emb.Shape) != fmt.Sprint([]int64{V, D}) {
		t.Errorf("embed_tokens %+v", emb)
	}
	if sh := keptByName(p, "shared.weight"); sh.Transform != "" || sh.Tensor != "shared.weight" {
		t.Errorf("shared %+v", sh)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(p.Config), &cfg); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]any{"d_model": D, "d_ff": F, "d_kv": 64, "num_heads": H, "num_layers": 2, "vocab_size": V,
		"relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
		"is_gated_act": true, "dense_act_fn": "gelu_new", "layer_norm_epsilon": 1e-6, "model_type": "t5"} {
		if fmt.Sprint(cfg[k]) != fmt.Sprint(v) {
			t.Errorf("config %s = %v, want %v", k, cfg[k], v)
		}
	}
}

// TestT5Embeddings: a file with both embedding names keeps both as they
// are; one with only encoder.embed_tokens gets shared.weight as its copy.
func TestT5Embeddings(t *testing.T) {
	specs, _ := Skeleton("t5-xxl", SkeletonOptions{Scale: 0.125, Blocks: 1})
	f, _ := Lookup("t5-xxl")
	tab := SkeletonTable(specs)
	tab["encoder.embed_tokens.weight"] = tab["shared.weight"]
	p, err := f.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"shared.weight", "encoder.embed_tokens.weight"} {
		if k := keptByName(p, n); k == nil || k.Transform != "" || k.Tensor != n {
			t.Errorf("%s: %+v", n, k)
		}
	}
	delete(tab, "shared.weight")
	if !f.Detect(tab) {
		t.Fatal("not detected without shared.weight")
	}
	p, err = f.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if k := keptByName(p, "shared.weight"); k == nil || k.Transform != "concat" || k.Pieces[0].Tensor != "encoder.embed_tokens.weight" {
		t.Errorf("shared copy %+v", k)
	}
}

// TestT5Prefix: ComfyUI's full-checkpoint prefix is read and dropped from
// the output names.
func TestT5Prefix(t *testing.T) {
	specs, _ := Skeleton("t5-xxl", SkeletonOptions{Scale: 0.125, Blocks: 1})
	const pre = "text_encoders.t5xxl.transformer."
	tab := MapTable{}
	for _, s := range specs {
		tab[pre+s.Name] = s.Shape
	}
	f, err := Detect(tab)
	if err != nil || f.Name() != "t5-xxl" {
		t.Fatalf("detect: %v %v", f, err)
	}
	p, err := f.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, ok := p.Layer("encoder.block.0.layer.1.DenseReluDense.wo")
	if !ok || p.Prefix != pre || l.Sources[0].Tensor != pre+"encoder.block.0.layer.1.DenseReluDense.wo.weight" ||
		l.Sources[0].Module != "encoder.block.0.layer.1.DenseReluDense.wo" {
		t.Fatalf("prefix %q, layer %+v", p.Prefix, l)
	}
	if k := keptByName(p, "encoder.embed_tokens.weight"); k == nil || k.Pieces[0].Tensor != pre+"shared.weight" {
		t.Errorf("embed copy %+v", k)
	}
	if k := keptByName(p, "encoder.final_layer_norm.weight"); k == nil || k.Tensor != pre+"encoder.final_layer_norm.weight" {
		t.Errorf("final norm %+v", k)
	}
}

// TestT5MissingAndUnknown: what the strict load needs is required, the
// decoder refused, an unknown tensor named; a linear W4Linear cannot hold
// stays 16-bit.
func TestT5MissingAndUnknown(t *testing.T) {
	specs, _ := Skeleton("t5-xxl", SkeletonOptions{Scale: 0.125, Blocks: 2})
	f, _ := Lookup("t5-xxl")
	for _, name := range []string{
		"encoder.block.1.layer.0.layer_norm.weight",
		"encoder.block.0.layer.1.layer_norm.weight",
		"encoder.final_layer_norm.weight",
		"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
		"encoder.block.1.layer.1.DenseReluDense.wi_1.weight",
		"encoder.block.0.layer.0.SelfAttention.q.weight",
	} {
		tab := SkeletonTable(specs)
		delete(tab, name)
		if _, err := f.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("without %s: %v", name, err)
		}
	}
	for _, extra := range []string{"decoder.block.0.layer.0.SelfAttention.q.weight", "lm_head.weight",
		"encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight", "foo"} {
		tab := SkeletonTable(specs)
		tab[extra] = []int64{128, 128}
		if _, err := f.Plan(tab, Options{}); err == nil || !strings.Contains(err.Error(), extra) {
			t.Errorf("with %s: %v", extra, err)
		}
	}
	if _, err := f.Plan(SkeletonTable(append(specs, TensorSpec{"decoder.final_layer_norm.weight", []int64{512}})),
		Options{PassUnknown: true}); err == nil || !strings.Contains(err.Error(), "encoder-decoder") {
		t.Errorf("decoder with --pass-unknown: %v", err)
	}
	tab := SkeletonTable(specs)
	tab["encoder.block.1.layer.1.DenseReluDense.wo.weight"] = []int64{512, 1000}
	p, err := f.Plan(tab, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.Layer("encoder.block.1.layer.1.DenseReluDense.wo"); ok || len(p.Layers) != 13 {
		t.Errorf("in-features 1000 quantized (%d layers)", len(p.Layers))
	}
	if k := keptByName(p, "encoder.block.1.layer.1.DenseReluDense.wo.weight"); k == nil || !strings.Contains(k.Reason, "multiple of 128") {
		t.Errorf("kept %+v", k)
	}
}

// TestT5Detect: the T5 skeleton detects as t5-xxl only (planCase), and
// t5-xxl detects no other family's skeleton; T5 v1.0 (DenseReluDense.wi,
// no gate) is not t5-xxl.
func TestT5Detect(t *testing.T) {
	f, _ := Lookup("t5-xxl")
	for _, name := range Names() {
		if name == "t5-xxl" || name == genericName {
			continue
		}
		specs, err := Skeleton(name, SkeletonOptions{Scale: 0.125, Blocks: 1})
		if err != nil {
			t.Fatal(err)
		}
		if f.Detect(SkeletonTable(specs)) {
			t.Errorf("t5-xxl detects the %s skeleton", name)
		}
	}
	specs, _ := Skeleton("t5-xxl", SkeletonOptions{Scale: 0.125, Blocks: 1})
	tab := SkeletonTable(specs)
	tab["encoder.block.0.layer.1.DenseReluDense.wi.weight"] = tab["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"]
	delete(tab, "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
	delete(tab, "encoder.block.0.layer.1.DenseReluDense.wi_1.weight")
	if f.Detect(tab) {
		t.Error("a non-gated T5 detected as t5-xxl")
	}
	if _, err := Skeleton("t5-xxl", SkeletonOptions{Naming: "bfl"}); err == nil {
		t.Error("bfl naming accepted")
	}
	// The real size: 24 blocks of width 4096, 168 layers.
	_, p := planCase(t, familyCase{"t5-xxl", "", 1, 0})
	if l, _ := p.Layer("encoder.block.23.layer.1.DenseReluDense.wo"); len(p.Layers) != 168 || l == nil || l.N != 4096 || l.K != 10240 {
		t.Errorf("%d layers, wo %+v", len(p.Layers), l)
	}
}

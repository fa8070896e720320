package lora

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

func vecTensor(name string, shape []int64) safetensors.Tensor {
	n := int64(1)
	for _, s := range shape {
		n *= s
	}
	return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: safetensors.F32, Shape: shape}, Data: EncodeF32(make([]float32, n))}
}

// TestParseControl: a lora_B.bias goes to its plain LoRA module, a norm
// scale (BFL, or diffusers-converted) to Norms; lora_A.bias, diff_b and a bias without factors stay in
// Control; a bias of the wrong length and a 2-D scale are errors naming
// the file and tensor.
func TestParseControl(t *testing.T) {
	dir := t.TempDir()
	base := []safetensors.Tensor{vecTensor("double_blocks.0.img_attn.qkv.lora_A.weight", []int64{2, 8}), vecTensor("double_blocks.0.img_attn.qkv.lora_B.weight", []int64{24, 2})}
	write := func(name string, extra ...safetensors.Tensor) string {
		p := filepath.Join(dir, name)
		if err := safetensors.WriteFile(p, append(append([]safetensors.Tensor(nil), base...), extra...), nil); err != nil {
			t.Fatal(err)
		}
		return p
	}
	p := write("ok.safetensors", vecTensor("double_blocks.0.img_attn.qkv.lora_B.bias", []int64{24}), vecTensor("double_blocks.0.img_attn.qkv.lora_A.bias", []int64{2}),
		vecTensor("double_blocks.0.img_attn.norm.query_norm.scale", []int64{4}), vecTensor("txt_in.lora_B.bias", []int64{8}), vecTensor("x.diff_b", []int64{8}),
		vecTensor("transformer.single_transformer_blocks.0.attn.norm_k.weight", []int64{4}))
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(f.Modules) != 1 || f.Modules[0].Bias != "double_blocks.0.img_attn.qkv.lora_B.bias" {
		t.Errorf("modules %+v", f.Modules)
	}
	if !reflect.DeepEqual(f.Norms, []string{"double_blocks.0.img_attn.norm.query_norm.scale", "transformer.single_transformer_blocks.0.attn.norm_k.weight"}) {
		t.Errorf("norms %v", f.Norms)
	}
	if want := []string{"double_blocks.0.img_attn.qkv.lora_A.bias", "txt_in.lora_B.bias", "x.diff_b"}; !reflect.DeepEqual(f.Control, want) {
		t.Errorf("control %v, want %v", f.Control, want)
	}
	for _, c := range []struct {
		t    safetensors.Tensor
		want string
	}{
		{vecTensor("double_blocks.0.img_attn.qkv.lora_B.bias", []int64{23}), "shape [23]"},
		{vecTensor("double_blocks.0.img_attn.norm.key_norm.scale", []int64{2, 2}), "shape [2 2]"},
	} {
		p := write("bad.safetensors", c.t)
		if _, err := Open(p); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.t.Name) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %v: %v", c.t.Name, c.t.Shape, err)
		}
	}
}

// TestApplyVector: ops apply in order, a delta adds, a replacement sets
// (worked by hand).
func TestApplyVector(t *testing.T) {
	got := ApplyVector([]float64{1, 2, 3}, [][]float32{{0, 0, 0}, {0, 1, 0}, {0, 0, 0}}, [][]float32{{0.5, 0, 0}, {0, 7, 0}, {0, 0.25, 0}})
	if want := []float64{1.5, 7.25, 3}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestStoredIndex: a W4A16 layer of 4 rows in 2 chunks stores checkpoint
// rows 0, 2, 1, 3 (new row j·c + s = old row s·m + j); a W4A4 vector of
// 128 rows stores row 2 at 4 (n = c·2 + d with c = 1: c·4 = 4), row 8 at
// 2 (y = 1: y·2); a kept one as is.
func TestStoredIndex(t *testing.T) {
	if got := (&VectorInfo{Kind: W4A16, Chunks: 2, N: 4, Stored: 4}).StoredIndex(); !reflect.DeepEqual(got, []int{0, 2, 1, 3}) {
		t.Errorf("W4A16: %v", got)
	}
	w := (&VectorInfo{Kind: W4A4, N: 128, Stored: 128}).StoredIndex()
	if w[4] != 2 || w[2] != 8 || w[0] != 0 {
		t.Errorf("W4A4: stored 4 holds %d, 2 holds %d", w[4], w[2])
	}
	if got := (&VectorInfo{Kind: Kept, N: 3, Stored: 3}).StoredIndex(); !reflect.DeepEqual(got, []int{0, 1, 2}) {
		t.Errorf("kept: %v", got)
	}
}

// TestProvenanceVector: a vector entry must have base 0; the summary
// counts it apart from the layers' rank.
func TestProvenanceVector(t *testing.T) {
	h := strings.Repeat("a", 64)
	p := &Provenance{Version: ProvenanceVersion, Base: Base{SHA256: h}, Layers: map[string]Layer{"l": {Kind: "w4a4", Base: 16}, "l.bias": {Kind: KindVector}},
		LoRAs: []Applied{{Name: "c", SHA256: h, Strength: 1, Ranges: map[string][2]int{"l": {16, 20}, "l.bias": {0, 1}}}}}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if s := p.Summary()[0]; !strings.Contains(s, "1 layers, rank +4 in total, 1 biases/norms") {
		t.Errorf("summary %q", s)
	}
	p.Layers["l.bias"] = Layer{Kind: KindVector, Base: 1}
	p.LoRAs[0].Ranges["l.bias"] = [2]int{1, 2} // consistent with the base: only the base check refuses it
	if err := p.Validate(); err == nil {
		t.Errorf("vector with base 1 accepted")
	}
}

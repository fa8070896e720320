package lora

import (
	"math"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// m32 is a float32 matrix tensor for writeRaw.
func m32(name string, rows, cols int, v ...float32) rawTensor {
	if len(v) != rows*cols {
		panic("m32: " + name)
	}
	return rawTensor{name, safetensors.F32, []int64{int64(rows), int64(cols)}, v}
}

func alpha32(name string, a float32) rawTensor {
	return rawTensor{name, safetensors.F32, []int64{}, []float32{a}}
}

// TestDenseConventions: each LoHa and LoKr form and alpha convention gives
// the ΔW written out by hand here (LyCORIS's products, ComfyUI's scale:
// α / rows(hada_w1_b) for LoHa; α / rows(lokr_w2_b), else rows(lokr_w1_b),
// and 1 when both LoKr factors are full; 1 without α).
func TestDenseConventions(t *testing.T) {
	cases := []struct {
		name     string
		ts       []rawTensor
		strength float64
		n, k     int
		want     []float64 // strength·scale·product, row-major
	}{
		{"loha", []rawTensor{
			m32("m.hada_w1_a", 2, 1, 1, 2), m32("m.hada_w1_b", 1, 3, 1, 0, -1),
			m32("m.hada_w2_a", 2, 1, 3, 1), m32("m.hada_w2_b", 1, 3, 2, 1, 1),
			alpha32("m.alpha", 0.5)},
			// (w1a·w1b) = [[1 0 -1] [2 0 -2]], (w2a·w2b) = [[6 3 3] [2 1 1]], ⊙ = [[6 0 -3] [4 0 -2]]; scale 2·0.5/1
			2, 2, 3, []float64{6, 0, -3, 4, 0, -2}},
		{"loha no alpha", []rawTensor{
			m32("m.hada_w1_a", 2, 1, 1, 2), m32("m.hada_w1_b", 1, 3, 1, 0, -1),
			m32("m.hada_w2_a", 2, 1, 3, 1), m32("m.hada_w2_b", 1, 3, 2, 1, 1)},
			1, 2, 3, []float64{6, 0, -3, 4, 0, -2}},
		{"loha tucker", []rawTensor{
			m32("m.hada_t1", 2, 2, 1, 2, 0, 1), m32("m.hada_w1_a", 2, 2, 1, 1, 0, 2), m32("m.hada_w1_b", 2, 2, 1, 1, 0, 1),
			m32("m.hada_t2", 1, 1, 1), m32("m.hada_w2_a", 1, 2, 1, 2), m32("m.hada_w2_b", 1, 2, 1, -1),
			alpha32("m.alpha", 3)},
			// w1aᵀ·t1·w1b = [[1 0] [1 2]]·[[1 3] [0 1]] = [[1 3] [1 5]]; w2 = [[1 -1] [2 -2]];
			// ⊙ = [[1 -3] [2 -10]]; scale 3/2
			1, 2, 2, []float64{1.5, -4.5, 3, -15}},
		{"lokr w1 full, w2 decomposed", []rawTensor{
			m32("m.lokr_w1", 2, 2, 1, 2, 3, 4),
			m32("m.lokr_w2_a", 2, 1, 1, -1), m32("m.lokr_w2_b", 1, 2, 2, 0.5),
			alpha32("m.alpha", 2)},
			// w2 = [[2 .5] [-2 -.5]]; kron rows (i·2+k), cols (j·2+l); scale 2/1
			1, 4, 4, []float64{
				4, 1, 8, 2,
				-4, -1, -8, -2,
				12, 3, 16, 4,
				-12, -3, -16, -4}},
		{"lokr both full: alpha ignored", []rawTensor{
			m32("m.lokr_w1", 1, 1, 2), m32("m.lokr_w2", 2, 2, 1, 2, 3, 4), alpha32("m.alpha", 8)},
			1, 2, 2, []float64{2, 4, 6, 8}},
		{"lokr w1 decomposed, w2 full", []rawTensor{
			m32("m.lokr_w1_a", 2, 1, 1, 2), m32("m.lokr_w1_b", 1, 1, 3), m32("m.lokr_w2", 1, 2, 1, -1),
			alpha32("m.alpha", 0.5)},
			// w1 = [[3] [6]]; kron = [[3 -3] [6 -6]]; scale 0.5 / rows(w1_b) = 0.5
			1, 2, 2, []float64{1.5, -1.5, 3, -3}},
		{"lokr both decomposed: w2_b's rank", []rawTensor{
			m32("m.lokr_w1_a", 1, 1, 1), m32("m.lokr_w1_b", 1, 1, 1),
			m32("m.lokr_w2_a", 1, 2, 1, 1), m32("m.lokr_w2_b", 2, 1, 1, 1),
			alpha32("m.alpha", 4)},
			// w2 = [[2]]; scale 4 / rows(w2_b) = 2 (LyCORIS's functional form would take w1_b's: 4)
			1, 1, 1, []float64{4}},
	}
	for _, c := range cases {
		f, err := Open(writeRaw(t, c.ts))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if len(f.Modules) != 1 || len(f.Unknown) != 0 {
			t.Fatalf("%s: modules %v, unknown %v", c.name, f.Modules, f.Unknown)
		}
		m := &f.Modules[0]
		if m.N != c.n || m.K != c.k || m.LowRank() || m.Style != StyleLyCORIS {
			t.Errorf("%s: [%d %d] %s %s, want [%d %d] lycoris", c.name, m.N, m.K, m.Type, m.Style, c.n, c.k)
		}
		d, err := m.Dense()
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		s := m.Scale(c.strength)
		for i, w := range c.want {
			if got := s * d[i]; math.Abs(got-w) > 1e-12 {
				t.Errorf("%s: ΔW[%d, %d] = %v, want %v", c.name, i/c.k, i%c.k, got, w)
			}
		}
		f.Close()
	}
}

// TestXLabsAndTextEncoder: XLabs processor LoRAs map to BFL / diffusers
// modules (the single block's qkv split in three with A shared), and
// text-encoder keys are listed apart, not as unknown.
func TestXLabsAndTextEncoder(t *testing.T) {
	path := writeRaw(t, []rawTensor{
		m32("double_blocks.0.processor.qkv_lora1.down.weight", 1, 2, 1, 2),
		m32("double_blocks.0.processor.qkv_lora1.up.weight", 6, 1, 1, 2, 3, 4, 5, 6),
		m32("double_blocks.0.processor.proj_lora2.down.weight", 1, 2, 1, 2),
		m32("double_blocks.0.processor.proj_lora2.up.weight", 2, 1, 1, 2),
		m32("single_blocks.3.processor.qkv_lora.down.weight", 1, 2, 1, 2),
		m32("single_blocks.3.processor.qkv_lora.up.weight", 6, 1, 1, 2, 3, 4, 5, 6),
		m32("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", 1, 2, 1, 2),
		m32("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", 2, 1, 1, 2),
	})
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var keys []string
	for _, m := range f.Modules {
		keys = append(keys, m.Key)
	}
	want := "double_blocks.0.img_attn.qkv double_blocks.0.txt_attn.proj single_transformer_blocks.3.attn.to_k single_transformer_blocks.3.attn.to_q single_transformer_blocks.3.attn.to_v"
	if strings.Join(keys, " ") != want {
		t.Errorf("modules %v, want %s", keys, want)
	}
	if len(f.TextEncoder) != 2 || len(f.Unknown) != 0 || f.Format != StyleXLabs {
		t.Errorf("text encoder %v, unknown %v, format %s", f.TextEncoder, f.Unknown, f.Format)
	}
	k := f.Modules[2] // to_k: the middle third of up
	a, b, err := k.Factors()
	if err != nil {
		t.Fatal(err)
	}
	if k.N != 2 || k.Rank != 1 || b[0] != 3 || b[1] != 4 || a[1] != 2 || k.Scale(1) != 1 {
		t.Errorf("to_k: N %d rank %d B %v A %v scale %v", k.N, k.Rank, b, a, k.Scale(1))
	}
	if q := f.Modules[0]; q.N != 6 {
		t.Errorf("img_attn.qkv N %d, want 6", q.N)
	}
}

// TestDenseErrors: malformed LoHa/LoKr modules are refused naming the file
// and the tensor.
func TestDenseErrors(t *testing.T) {
	cases := []struct {
		name string
		ts   []rawTensor
		want string
	}{
		{"loha missing w2_b", []rawTensor{m32("m.hada_w1_a", 2, 1, 1, 2), m32("m.hada_w1_b", 1, 3, 1, 0, -1), m32("m.hada_w2_a", 2, 1, 3, 1)}, "no hada_w2_b"},
		{"loha inner", []rawTensor{m32("m.hada_w1_a", 2, 1, 1, 2), m32("m.hada_w1_b", 2, 1, 1, 0), m32("m.hada_w2_a", 2, 1, 3, 1), m32("m.hada_w2_b", 1, 1, 1)}, "does not multiply"},
		{"loha w1 vs w2", []rawTensor{m32("m.hada_w1_a", 2, 1, 1, 2), m32("m.hada_w1_b", 1, 3, 1, 0, -1), m32("m.hada_w2_a", 1, 1, 3), m32("m.hada_w2_b", 1, 3, 2, 1, 1)}, "want equal"},
		{"loha tucker", []rawTensor{m32("m.hada_t1", 2, 2, 1, 2, 0, 1), m32("m.hada_w1_a", 1, 2, 1, 1), m32("m.hada_w1_b", 2, 2, 1, 1, 0, 1),
			m32("m.hada_t2", 1, 1, 1), m32("m.hada_w2_a", 1, 2, 1, 2), m32("m.hada_w2_b", 1, 2, 1, -1)}, "Tucker core"},
		{"lokr no w2", []rawTensor{m32("m.lokr_w1", 1, 1, 2)}, "no lokr_w2_a"},
		{"lokr both w1", []rawTensor{m32("m.lokr_w1", 1, 1, 2), m32("m.lokr_w1_a", 1, 1, 2), m32("m.lokr_w2", 1, 1, 2)}, "lokr_w1 and lokr_w1_a/b"},
		{"lokr 3x3 conv", []rawTensor{m32("m.lokr_w1", 1, 1, 2), {"m.lokr_w2", safetensors.F32, []int64{1, 1, 3, 3}, make([]float32, 9)}}, "1×1 convolution"},
	}
	for _, c := range cases {
		path := writeRaw(t, c.ts)
		f, err := Open(path)
		if err == nil {
			f.Close()
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), `"m.`) {
			t.Errorf("%s: error %q does not name the file, a tensor and %q", c.name, err, c.want)
		}
	}
	// A NaN in a factor fails when ΔW is formed, naming the tensor.
	path := writeRaw(t, []rawTensor{m32("m.lokr_w1", 1, 1, float32(math.NaN())), m32("m.lokr_w2", 1, 1, 1)})
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Modules[0].Dense(); err == nil || !strings.Contains(err.Error(), `"m.lokr_w1"`) {
		t.Errorf("NaN: %v", err)
	}
}

// TestDoRAConventions: DoRA's ΔW = strength·(Wc ⊙ m/‖Wc‖ − W), Wc = W +
// (α/r)·B·A, by hand for W = [[3 0] [0 4]], B·A = [[0 0] [1 0]]: a PEFT
// magnitude [6 1] per output row (‖Wc rows‖ = 3, √17) and a LyCORIS
// dora_scale [[2 8]] per input column (‖Wc columns‖ = √10, 4).
func TestDoRAConventions(t *testing.T) {
	w := []float64{3, 0, 0, 4}
	s17, s10 := math.Sqrt(17), math.Sqrt(10)
	cases := []struct {
		name     string
		ts       []rawTensor
		strength float64
		out      bool
		want     []float64
	}{
		{"peft magnitude", []rawTensor{m32("m.lora_A.weight", 1, 2, 1, 0), m32("m.lora_B.weight", 2, 1, 0, 1),
			{"m.lora_magnitude_vector.weight", safetensors.F32, []int64{2}, []float32{6, 1}}},
			0.5, true, []float64{1.5, 0, 0.5 / s17, 0.5 * (4/s17 - 4)}},
		{"lycoris dora_scale input axis, alpha 2", []rawTensor{m32("m.lora_down.weight", 1, 2, 0.5, 0), m32("m.lora_up.weight", 2, 1, 0, 1),
			alpha32("m.alpha", 2), m32("m.dora_scale", 1, 2, 2, 8)},
			// (α/r)·B·A = 2·[[0 0] [.5 0]] = [[0 0] [1 0]]
			1, false, []float64{6/s10 - 3, 0, 2 / s10, 4}},
		{"loha with dora_scale [N, 1]", []rawTensor{
			m32("m.hada_w1_a", 2, 1, 0, 1), m32("m.hada_w1_b", 1, 2, 1, 0),
			m32("m.hada_w2_a", 2, 1, 1, 1), m32("m.hada_w2_b", 1, 2, 1, 1),
			m32("m.dora_scale", 2, 1, 6, 1)},
			// (w1a·w1b) ⊙ (w2a·w2b) = [[0 0] [1 0]] ⊙ [[1 1] [1 1]]
			1, true, []float64{3, 0, 1 / s17, 4/s17 - 4}},
	}
	for _, c := range cases {
		f, err := Open(writeRaw(t, c.ts))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		m := &f.Modules[0]
		if m.LowRank() || m.Dora == "" || m.DoraOut != c.out {
			t.Fatalf("%s: dora %q out %v", c.name, m.Dora, m.DoraOut)
		}
		d, err := m.DenseDoRA(w)
		if err != nil {
			t.Fatal(err)
		}
		for i, want := range c.want {
			if got := m.Scale(c.strength) * d[i]; math.Abs(got-want) > 1e-6 {
				t.Errorf("%s: ΔW[%d] = %v, want %v", c.name, i, got, want)
			}
		}
		f.Close()
	}
}

// TestFullModule: a LyCORIS full module's diff is ΔW at strength·1
// whatever its α; its diff_b is listed as a bias delta (not fused).
func TestFullModule(t *testing.T) {
	f, err := Open(writeRaw(t, []rawTensor{m32("m.diff", 2, 2, 1, -2, 3, 0.5), alpha32("m.alpha", 8),
		{"m.diff_b", safetensors.F32, []int64{2}, []float32{1, 1}}}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if len(f.Modules) != 1 || len(f.Control) != 1 || f.Control[0] != "m.diff_b" {
		t.Fatalf("modules %+v, control %v", f.Modules, f.Control)
	}
	m := &f.Modules[0]
	d, err := m.Dense()
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{0.5, -1, 1.5, 0.25} {
		if got := m.Scale(0.5) * d[i]; got != want {
			t.Errorf("ΔW[%d] = %v, want %v", i, got, want)
		}
	}
}

// TestXLabsDoRA: a DoRA magnitude on an XLabs processor LoRA is refused.
func TestXLabsDoRA(t *testing.T) {
	path := writeRaw(t, []rawTensor{
		m32("double_blocks.0.processor.qkv_lora1.down.weight", 1, 2, 1, 2),
		m32("double_blocks.0.processor.qkv_lora1.up.weight", 6, 1, 1, 2, 3, 4, 5, 6),
		m32("double_blocks.0.processor.qkv_lora1.dora_scale", 6, 1, 1, 1, 1, 1, 1, 1),
	})
	if f, err := Open(path); err == nil {
		f.Close()
		t.Fatal("no error")
	} else if !strings.Contains(err.Error(), "XLabs") || !strings.Contains(err.Error(), "dora_scale") {
		t.Errorf("error %v", err)
	}
}

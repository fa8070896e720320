package lora

import (
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// blockDiag returns the BFL form of three diffusers q/k/v LoRAs of rank r:
// A = [A_q; A_k; A_v] [3r, K], B = blockdiag(B_q, B_k, B_v) [3D, 3r].
func blockDiag(module string, parts []Factors, alpha float64) Factors {
	r, k := parts[0].Rank, parts[0].K
	n := 0
	for _, p := range parts {
		n += p.N
	}
	R := r * len(parts)
	f := Factors{Module: module, Rank: R, N: n, K: k, A: make([]float32, 0, R*k), B: make([]float32, n*R), Alpha: alpha}
	row := 0
	for i, p := range parts {
		f.A = append(f.A, p.A...)
		for j := 0; j < p.N; j++ {
			copy(f.B[(row+j)*R+i*r:], p.B[j*r:(j+1)*r])
		}
		row += p.N
	}
	return f
}

// TestMapBlocks: separate q/k/v LoRAs give a block-diagonal branch, the
// equivalent single BFL qkv LoRA gives the same values, a qkv LoRA split
// into copies with one A keeps its rank, and every value is scale·B, A.
func TestMapBlocks(t *testing.T) {
	const D = 128
	rng := rand.New(rand.NewPCG(3, 4))
	ix := fluxIndex(t, "diffusers")
	var qkv []Factors
	for _, m := range []string{"to_q", "to_k", "to_v"} {
		qkv = append(qkv, randFactors(rng, "transformer_blocks.0.attn."+m, 4, D, D, 2)) // scale 0.5
	}
	sep := writeOpen(t, "sep.safetensors", qkv, WriteOptions{Style: StylePEFT})
	bfl := writeOpen(t, "bfl.safetensors", []Factors{blockDiag("double_blocks.0.img_attn.qkv", qkv, 6)}, WriteOptions{Style: StyleKohya})
	build := func(f *File, strength float64) *Branch {
		mp, err := Map(f, ix, strength)
		if err != nil {
			t.Fatal(err)
		}
		if len(mp.Layers) != 1 || mp.Layers[0].Info.Name != "transformer_blocks.0.qkv_proj" || len(mp.Unmatched) != 0 {
			t.Fatalf("%s: layers %+v unmatched %v", f.Path, mp.Layers, mp.Unmatched)
		}
		b, err := mp.Layers[0].Build()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	a, b := build(sep, 0.8), build(bfl, 0.8)
	if a.R != 12 || b.R != 12 || !equalBits(a.Down, b.Down) || !equalBits(a.Up, b.Up) {
		t.Fatalf("separate and BFL branches differ (ranks %d, %d)", a.R, b.R)
	}
	for i, p := range qkv {
		for n := 0; n < D; n++ {
			for r := 0; r < 12; r++ {
				want := float32(0)
				if r/4 == i {
					want = float32(0.8 * 0.5 * float64(p.B[n*4+r%4]))
				}
				if got := a.Up[(i*D+n)*12+r]; got != want {
					t.Fatalf("up[%d, %d] = %v, want %v", i*D+n, r, got, want)
				}
			}
		}
		if !equalBits(a.Down[i*4*D:(i+1)*4*D], p.A) {
			t.Fatalf("down block %d is not A", i)
		}
	}

	// One A shared by q, k, v (a BFL qkv LoRA split for diffusers): rank 4.
	shared := randFactors(rng, "double_blocks.0.img_attn.qkv", 4, 3*D, D, 4)
	var split []Factors
	for i, m := range []string{"to_q", "to_k", "to_v"} {
		s := Factors{Module: "transformer_blocks.0.attn." + m, Rank: 4, N: D, K: D, A: shared.A, B: shared.B[i*D*4 : (i+1)*D*4], Alpha: 4}
		split = append(split, s)
	}
	c := build(writeOpen(t, "split.safetensors", split, WriteOptions{Style: StylePEFT}), 1)
	d := build(writeOpen(t, "one.safetensors", []Factors{shared}, WriteOptions{Style: StyleComfyUI}), 1)
	if c.R != 4 || !equalBits(c.Down, d.Down) || !equalBits(c.Up, d.Up) {
		t.Fatalf("split copies with one A: rank %d, equal %v %v", c.R, equalBits(c.Down, d.Down), equalBits(c.Up, d.Up))
	}
}

// TestMapSplitLayers: a BFL single-block linear1 LoRA lands on qkv_proj
// and mlp_fc1 (rows split, same A), linear2 on out_proj and mlp_fc2
// (columns split, same B), the final modulation on the swapped halves.
// Each module has its own scale strength·alpha/rank, hard-coded here
// (0.75·6/3 = 1.5, 0.75·1/2 = 0.375, 0.75·3/2 = 1.125: exact in binary).
func TestMapSplitLayers(t *testing.T) {
	const D, H = 128, 512
	const strength = 0.75
	rng := rand.New(rand.NewPCG(5, 6))
	l1 := randFactors(rng, "single_blocks.1.linear1", 3, 3*D+H, D, 6)
	l2 := randFactors(rng, "single_blocks.1.linear2", 2, D, D+H, 1)
	fl := randFactors(rng, "final_layer.adaLN_modulation.1", 2, 2*D, D, 3)
	f := writeOpen(t, "s.safetensors", []Factors{l1, l2, fl}, WriteOptions{Style: StyleKohya, DType: safetensors.BF16})
	mp, err := Map(f, fluxIndex(t, "diffusers"), strength)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*Branch{}
	for i := range mp.Layers {
		b, err := mp.Layers[i].Build()
		if err != nil {
			t.Fatal(err)
		}
		got[mp.Layers[i].Info.Name] = b
	}
	if len(got) != 5 {
		t.Fatalf("layers %v", got)
	}
	// The sum over target layers must be ΔW of each module.
	check := func(name string, mod Factors, scale float64, parts []struct {
		layer      string
		rows, cols [2]int // module rows / cols landing in the layer
		at         int    // first layer row
	}) {
		m := f.Modules[0]
		for i := range f.Modules {
			if strings.HasSuffix(f.Modules[i].Key, flatten(mod.Module)) {
				m = f.Modules[i]
			}
		}
		a, bb, _ := m.Factors()
		for _, p := range parts {
			br := got[p.layer]
			d := br.Delta()
			for i := p.rows[0]; i < p.rows[1]; i++ {
				for j := p.cols[0]; j < p.cols[1]; j++ {
					var want float64
					for r := 0; r < m.Rank; r++ {
						want += float64(float32(scale*float64(bb[i*m.Rank+r]))) * float64(a[r*m.K+j])
					}
					row := p.at + i - p.rows[0]
					if g := d[row*br.K+j-p.cols[0]]; g != want {
						t.Fatalf("%s: %s [%d, %d] = %v, want %v", name, p.layer, row, j-p.cols[0], g, want)
					}
				}
			}
		}
	}
	type part = struct {
		layer      string
		rows, cols [2]int
		at         int
	}
	check("linear1", l1, 1.5, []part{
		{"single_transformer_blocks.1.qkv_proj", [2]int{0, 3 * D}, [2]int{0, D}, 0},
		{"single_transformer_blocks.1.mlp_fc1", [2]int{3 * D, 3*D + H}, [2]int{0, D}, 0}})
	check("linear2", l2, 0.375, []part{
		{"single_transformer_blocks.1.out_proj", [2]int{0, D}, [2]int{0, D}, 0},
		{"single_transformer_blocks.1.mlp_fc2", [2]int{0, D}, [2]int{D, D + H}, 0}})
	check("final", fl, 1.125, []part{
		{"norm_out.linear.weight", [2]int{0, D}, [2]int{0, D}, D},
		{"norm_out.linear.weight", [2]int{D, 2 * D}, [2]int{0, D}, 0}})
	if b := got["norm_out.linear.weight"]; b.R != 2 {
		t.Errorf("swapped halves share one A: rank %d, want 2", b.R)
	}
}

// TestMapErrors: a shape that does not fit names the module, the layer and
// both shapes; unknown modules are listed.
func TestMapErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	ix := fluxIndex(t, "bfl")
	f := writeOpen(t, "bad.safetensors", []Factors{randFactors(rng, "transformer_blocks.0.attn.to_q", 4, 128, 96, 4)}, WriteOptions{Style: StylePEFT})
	_, err := Map(f, ix, 1)
	if err == nil || !strings.Contains(err.Error(), "transformer_blocks.0.qkv_proj") || !strings.Contains(err.Error(), "[128 96]") ||
		!strings.Contains(err.Error(), "[128 128]") || !strings.Contains(err.Error(), f.Path) {
		t.Errorf("shape error: %v", err)
	}
	g := writeOpen(t, "te.safetensors", []Factors{randFactors(rng, "te1_text_model.encoder.layers.0.mlp.fc1", 4, 128, 128, 4),
		randFactors(rng, "double_blocks.0.img_mlp.0", 4, 512, 128, 4)}, WriteOptions{Style: StyleKohya})
	mp, err := Map(g, ix, 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(mp.Unmatched) != 1 || mp.Unmatched[0] != "lora_unet_te1_text_model_encoder_layers_0_mlp_fc1" || len(mp.Layers) != 1 {
		t.Errorf("unmatched %v, layers %d", mp.Unmatched, len(mp.Layers))
	}
}

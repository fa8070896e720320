package model

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant"
)

// loraBase is a quantized test checkpoint with the files it came from.
type loraBase struct {
	src, calib, q string
}

// loraBases holds the quantized checkpoints the LoRA tests fuse into,
// made once per test binary inside the tiny model's temporary directory
// (removed by TestMain).
var loraBases = struct {
	once sync.Once
	m    map[string]loraBase
	err  error
}{}

// loraCheckpoint returns a quantized checkpoint: "flux" (diffusers names,
// the shared tiny FLUX), "flux-nvfp4" (the same in NVFP4), "flux-f16-cpp"
// (the same in F16 for nunchaku's C++ engine: nunchaku-python, BF16 only,
// does not load it), "flux-bfl" (BFL names), "pixart" (PixArt-Σ, width
// 128, two blocks), "qwen-image" (width 128, one block, Python names) or
// "sdxl" (one block per stage), rank 16, INT4 unless named, for every
// engine that runs the family unless named.
func loraCheckpoint(t testing.TB, which string) loraBase {
	t.Helper()
	model, cal := tinyModel(t)
	loraBases.once.Do(func() {
		loraBases.m = map[string]loraBase{"flux": {src: model, calib: cal}}
		for _, g := range []struct {
			name string
			opt  synth.Options
		}{
			{"flux-bfl", synth.Options{Arch: "flux-dev", Scale: 0.04, Blocks: 1, Samples: 64, Seed: 2, Naming: "bfl"}},
			{"pixart", synth.Options{Arch: "pixart-sigma", Scale: 0.12, Blocks: 2, Samples: 64, Seed: 3}},
			{"qwen-image", synth.Options{Arch: "qwen-image", Scale: 0.05, Blocks: 1, Samples: 32, Seed: 4}},
			{"sdxl", synth.Options{Arch: "sdxl", Scale: 0.1, Blocks: 1, Samples: 32, Seed: 5}},
		} {
			g.opt.Out = filepath.Join(tinyFLUX.dir, "lora-"+g.name)
			if err := os.MkdirAll(g.opt.Out, 0o755); err != nil {
				loraBases.err = err
				return
			}
			if err := synth.Generate(g.opt); err != nil {
				loraBases.err = err
				return
			}
			loraBases.m[g.name] = loraBase{src: filepath.Join(g.opt.Out, synth.ModelFile), calib: filepath.Join(g.opt.Out, synth.CalibFile)}
		}
		loraBases.m["flux-nvfp4"] = loraBases.m["flux"]
		loraBases.m["flux-f16-cpp"] = loraBases.m["flux"]
		for name, b := range loraBases.m {
			b.q = filepath.Join(tinyFLUX.dir, "lora-q-"+name+".safetensors")
			opt := fastOptions(b.src, b.calib, b.q)
			switch name {
			case "flux-nvfp4":
				opt.Precision = quant.NVFP4
			case "flux-f16-cpp":
				opt.Target, opt.DType = engine.CPP, quant.F16
			}
			if _, err := Quantize(opt); err != nil {
				loraBases.err = fmt.Errorf("%s: %v", name, err)
				return
			}
			loraBases.m[name] = b
		}
	})
	if loraBases.err != nil {
		t.Fatal(loraBases.err)
	}
	return loraBases.m[which]
}

// fluxModules is a LoRA over the tiny FLUX (D = 128, H = 512) in diffusers
// names: every kind of target (fused q/k/v, a lone k of the text qkv, the
// shifted MLP input, a column-split single-block proj_out, adaLN W4A16
// layers with 6 and 3 chunks, kept 16-bit tensors incl. the half-swapped
// final modulation). α = r/2: the scale is strength/2.
func fluxModules(rng *rand.Rand, r int) []lora.Factors {
	const D, H = 128, 512
	spec := []struct {
		m    string
		n, k int
	}{
		{"transformer_blocks.0.attn.to_q", D, D},
		{"transformer_blocks.0.attn.to_k", D, D},
		{"transformer_blocks.0.attn.to_v", D, D},
		{"transformer_blocks.0.attn.add_k_proj", D, D},
		{"transformer_blocks.0.ff.net.2", D, H},
		{"transformer_blocks.0.norm1.linear", 6 * D, D},
		{"single_transformer_blocks.1.attn.to_q", D, D},
		{"single_transformer_blocks.1.attn.to_k", D, D},
		{"single_transformer_blocks.1.attn.to_v", D, D},
		{"single_transformer_blocks.1.proj_mlp", H, D},
		{"single_transformer_blocks.1.proj_out", D, D + H},
		{"single_transformer_blocks.1.norm.linear", 3 * D, D},
		{"x_embedder", D, 64},
		{"norm_out.linear", 2 * D, D},
	}
	out := make([]lora.Factors, len(spec))
	for i, s := range spec {
		f := lora.Factors{Module: s.m, Rank: r, N: s.n, K: s.k, A: make([]float32, r*s.k), B: make([]float32, s.n*r), Alpha: float64(r) / 2}
		for j := range f.A {
			f.A[j] = float32(rng.NormFloat64() * 0.2)
		}
		for j := range f.B {
			f.B[j] = float32(rng.NormFloat64() * 0.05)
		}
		out[i] = f
	}
	return out
}

// toBFL rewrites fluxModules in BFL names: q|k|v (and the single block's
// mlp) stacked into one module with A stacked and B block-diagonal (rank
// multiplied, α too, so the scale is unchanged), a lone add_k_proj as the
// k rows of txt_attn.qkv, and norm_out.linear's halves swapped.
func toBFL(mods []lora.Factors) []lora.Factors {
	by := map[string]lora.Factors{}
	for _, m := range mods {
		by[m.Module] = m
	}
	stack := func(name string, parts []lora.Factors, rowsBefore []int) lora.Factors {
		r, k := parts[0].Rank, parts[0].K
		n := 0
		for i, p := range parts {
			n = max(n, rowsBefore[i]+p.N)
		}
		R := r * len(parts)
		f := lora.Factors{Module: name, Rank: R, N: n, K: k, B: make([]float32, n*R), Alpha: parts[0].Alpha * float64(len(parts))}
		for i, p := range parts {
			f.A = append(f.A, p.A...)
			for j := 0; j < p.N; j++ {
				copy(f.B[(rowsBefore[i]+j)*R+i*r:], p.B[j*r:(j+1)*r])
			}
		}
		return f
	}
	const D = 128
	d, s := "transformer_blocks.0.", "single_transformer_blocks.1."
	rename := func(m lora.Factors, name string) lora.Factors { m.Module = name; return m }
	k := by[d+"attn.add_k_proj"]
	txt := lora.Factors{Module: "double_blocks.0.txt_attn.qkv", Rank: k.Rank, N: 3 * D, K: D, A: k.A, B: make([]float32, 3*D*k.Rank), Alpha: k.Alpha}
	copy(txt.B[D*k.Rank:], k.B)
	no := by["norm_out.linear"]
	fin := rename(no, "final_layer.adaLN_modulation.1")
	fin.B = append(append([]float32(nil), no.B[D*no.Rank:]...), no.B[:D*no.Rank]...)
	return []lora.Factors{
		stack("double_blocks.0.img_attn.qkv", []lora.Factors{by[d+"attn.to_q"], by[d+"attn.to_k"], by[d+"attn.to_v"]}, []int{0, D, 2 * D}),
		txt,
		rename(by[d+"ff.net.2"], "double_blocks.0.img_mlp.2"),
		rename(by[d+"norm1.linear"], "double_blocks.0.img_mod.lin"),
		stack("single_blocks.1.linear1", []lora.Factors{by[s+"attn.to_q"], by[s+"attn.to_k"], by[s+"attn.to_v"], by[s+"proj_mlp"]}, []int{0, D, 2 * D, 3 * D}),
		rename(by[s+"proj_out"], "single_blocks.1.linear2"),
		rename(by[s+"norm.linear"], "single_blocks.1.modulation.lin"),
		rename(by["x_embedder"], "img_in"),
		fin,
	}
}

// writeLoRA writes modules in a style into dir and returns the path.
func writeLoRA(t testing.TB, dir, name string, mods []lora.Factors, opt lora.WriteOptions) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := lora.Write(p, mods, opt); err != nil {
		t.Fatal(err)
	}
	return p
}

// fileBytes returns a file's content.
func fileBytes(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// tensorsOf returns every tensor's dtype, shape and bytes of a file.
func tensorsOf(t testing.TB, path string) (map[string]string, map[string]string) {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]string{}
	for _, n := range f.Names() {
		info, _ := f.Info(n)
		b, err := f.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		out[n] = fmt.Sprintf("%s%v:%s", info.DType, info.Shape, b)
	}
	return out, f.Metadata()
}

// rawTensor returns a tensor of f as a nunchaku.Tensor (suffix: its name).
func (f *qfile) rawTensor(t testing.TB, name string) nunchaku.Tensor {
	t.Helper()
	info, ok := f.r.Info(name)
	if !ok {
		t.Fatalf("%s: no tensor %s", f.path, name)
	}
	b, err := f.r.Bytes(name)
	if err != nil {
		t.Fatal(err)
	}
	return nunchaku.Tensor{Suffix: name, DType: string(info.DType), Shape: info.Shape, Data: b}
}

// widen returns a packed branch tensor widened to rank r by
// nunchaku.PadRank, as a comparable string.
func widen(t testing.TB, x nunchaku.Tensor, r int) string {
	t.Helper()
	if int(x.Shape[1]) != r {
		var err error
		if x, err = nunchaku.PadRank(x, r); err != nil {
			t.Fatal(err)
		}
	}
	return tensorString(x)
}

func tensorString(x nunchaku.Tensor) string {
	return fmt.Sprintf("%s%v:%s", x.DType, x.Shape, x.Data)
}

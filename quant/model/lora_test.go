package model

import (
	"bytes"
	"crypto/sha256"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// fuse runs FuseLoRA and fails the test on error. The W4A16 policy
// defaults to branch: the tiny FLUX loads in nunchaku-python, whose loader
// has no branch on W4A16 layers, so auto would refuse the adaLN layers
// these tests fuse into (TestFuseW4A16Auto tests auto).
func fuse(t *testing.T, opt FuseOptions) *FuseReport {
	t.Helper()
	if opt.W4A16 == "" {
		opt.W4A16 = W4A16Branch
	}
	rep, err := FuseLoRA(opt)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// TestFuseFormats: the same LoRA written as PEFT (diffusers names,
// base_model.model. prefix), kohya (BFL names, flattened, q|k|v stacked;
// or diffusers names with lora_transformer_), ComfyUI (BFL names,
// diffusion_model. prefix) and PEFT without alphas at half the strength,
// in F32, BF16, F16 and F8_E4M3, gives bit-identical tensors and svdq
// entries, and the same rank ranges, on a diffusers-named and on a
// BFL-named checkpoint. (The provenance records differ only in the file's
// name, hash, style and strength.)
func TestFuseFormats(t *testing.T) {
	dir := t.TempDir()
	mods := fluxModules(rand.New(rand.NewPCG(1, 1)), 4)
	for _, base := range []string{"flux", "flux-bfl"} {
		q := loraCheckpoint(t, base).q
		for _, dt := range []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F16, safetensors.F8E4M3} {
			var first map[string]string
			var firstRanges map[string][2]int
			var firstSVDQ string
			noAlpha := append([]lora.Factors(nil), mods...)
			for i := range noAlpha {
				noAlpha[i].NoAlpha = true // α = r: scale strength instead of strength/2
			}
			for i, w := range []struct {
				mods     []lora.Factors
				opt      lora.WriteOptions
				strength float64
			}{
				{mods, lora.WriteOptions{Style: lora.StylePEFT, Prefix: "base_model.model.", DType: dt}, 0.75},
				{toBFL(mods), lora.WriteOptions{Style: lora.StyleKohya, DType: dt}, 0.75},
				{toBFL(mods), lora.WriteOptions{Style: lora.StyleComfyUI, DType: dt}, 0.75},
				{mods, lora.WriteOptions{Style: lora.StyleKohya, Prefix: "lora_transformer_", DType: dt}, 0.75},
				{noAlpha, lora.WriteOptions{Style: lora.StylePEFT, DType: dt}, 0.375},
			} {
				lp := writeLoRA(t, dir, w.opt.Style+string(dt)+".safetensors", w.mods, w.opt)
				out := filepath.Join(dir, "out.safetensors")
				rep := fuse(t, FuseOptions{Model: q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: w.strength, Name: "x"}}})
				ts, md := tensorsOf(t, out)
				if i == 0 {
					first, firstRanges, firstSVDQ = ts, rep.Added[0].Ranges, md[nunchaku.MetaSVDQ]
					if len(rep.Layers) != 11 {
						t.Fatalf("%s %s: %d layers touched, want 11: %+v", base, dt, len(rep.Layers), rep.Layers)
					}
					continue
				}
				if !reflect.DeepEqual(ts, first) || md[nunchaku.MetaSVDQ] != firstSVDQ || !reflect.DeepEqual(rep.Added[0].Ranges, firstRanges) {
					for n := range first {
						if ts[n] != first[n] {
							t.Errorf("%s %s: tensor %s differs", base, dt, n)
						}
					}
					t.Fatalf("%s %s: %s/%s LoRA fused differently from the PEFT one (ranges %v vs %v)", base, dt, w.opt.Style, w.opt.Prefix, rep.Added[0].Ranges, firstRanges)
				}
			}
		}
	}
}

// TestFuseExact checks a fused file against values computed here from
// the LoRA factors alone: every untouched tensor is byte-identical; W4A4
// layers keep their 4-bit part and base branch and gain exactly
// round16(A) and round16(s·B) columns, so their emulated output is the
// base output plus x·ΔW16ᵀ (ForwardFast: float32 arithmetic; the bound is
// 1e-5 of the outputs' norm, far above float32 rounding, far below any
// real discrepancy); W4A16 layers gain the same branch; kept tensors are
// round16(W + ΔW) with ΔW summed in float64.
func TestFuseExact(t *testing.T) {
	for _, which := range []string{"flux", "flux-nvfp4"} {
		t.Run(which, func(t *testing.T) { fuseExact(t, which) })
	}
}

func fuseExact(t *testing.T, which string) {
	const D, H, r = 128, 512, 4
	dir := t.TempDir()
	b := loraCheckpoint(t, which)
	mods := fluxModules(rand.New(rand.NewPCG(2, 2)), r)
	const strength = 0.6
	lp := writeLoRA(t, dir, "l.safetensors", mods, lora.WriteOptions{Style: lora.StylePEFT})
	out := filepath.Join(dir, "fused.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: strength}}})
	s := strength * 0.5 // α/r = 1/2

	base, err := openQuantized(b.q)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	fused, err := openQuantized(out)
	if err != nil {
		t.Fatal(err)
	}
	defer fused.Close()
	prov, err := lora.ParseProvenance(fused.r.Metadata()[lora.MetaKey])
	if err != nil {
		t.Fatal(err)
	}

	// Where each module lands: layer, first layer row, its columns.
	type land struct {
		layer      string
		row        int
		rows, cols [2]int // module rows and columns taken
	}
	d, sg := "transformer_blocks.0.", "single_transformer_blocks.1."
	lands := map[string][]land{
		d + "attn.to_q":       {{d + "qkv_proj", 0, [2]int{0, D}, [2]int{0, D}}},
		d + "attn.to_k":       {{d + "qkv_proj", D, [2]int{0, D}, [2]int{0, D}}},
		d + "attn.to_v":       {{d + "qkv_proj", 2 * D, [2]int{0, D}, [2]int{0, D}}},
		d + "attn.add_k_proj": {{d + "qkv_proj_context", D, [2]int{0, D}, [2]int{0, D}}},
		d + "ff.net.2":        {{d + "mlp_fc2", 0, [2]int{0, D}, [2]int{0, H}}},
		d + "norm1.linear":    {{d + "norm1.linear", 0, [2]int{0, 6 * D}, [2]int{0, D}}},
		sg + "attn.to_q":      {{sg + "qkv_proj", 0, [2]int{0, D}, [2]int{0, D}}},
		sg + "attn.to_k":      {{sg + "qkv_proj", D, [2]int{0, D}, [2]int{0, D}}},
		sg + "attn.to_v":      {{sg + "qkv_proj", 2 * D, [2]int{0, D}, [2]int{0, D}}},
		sg + "proj_mlp":       {{sg + "mlp_fc1", 0, [2]int{0, H}, [2]int{0, D}}},
		sg + "proj_out":       {{sg + "out_proj", 0, [2]int{0, D}, [2]int{0, D}}, {sg + "mlp_fc2", 0, [2]int{0, D}, [2]int{D, D + H}}},
		sg + "norm.linear":    {{sg + "norm.linear", 0, [2]int{0, 3 * D}, [2]int{0, D}}},
		"x_embedder":          {{"x_embedder.weight", 0, [2]int{0, D}, [2]int{0, 64}}},
		"norm_out.linear":     {{"norm_out.linear.weight", 0, [2]int{0, 2 * D}, [2]int{0, D}}},
	}
	// Expected ΔW per layer from the factors: exact (float32(s·B), A) and
	// 16-bit (round16 of both), in float64.
	type delta struct {
		n, k       int
		exact, d16 []float64
	}
	deltas := map[string]*delta{}
	for _, m := range mods {
		for _, l := range lands[m.Module] {
			dl := deltas[l.layer]
			if dl == nil {
				li := fused.metaLayerShape(t, l.layer)
				dl = &delta{n: li[0], k: li[1], exact: make([]float64, li[0]*li[1]), d16: make([]float64, li[0]*li[1])}
				deltas[l.layer] = dl
			}
			for i := l.rows[0]; i < l.rows[1]; i++ {
				for j := l.cols[0]; j < l.cols[1]; j++ {
					var e, e16 float64
					for q := 0; q < r; q++ {
						up := float32(s * float64(m.B[i*r+q]))
						e += float64(up) * float64(m.A[q*m.K+j])
						e16 += float64(quant.RoundBF16(up)) * float64(quant.RoundBF16(m.A[q*m.K+j]))
					}
					at := (l.row+i-l.rows[0])*dl.k + j - l.cols[0]
					dl.exact[at] += e
					dl.d16[at] += e16
				}
			}
		}
	}

	changed := map[string]bool{}
	for name := range deltas {
		switch {
		case strings.HasSuffix(name, ".weight"):
			changed[name], changed[lora.ReservedBase(name)], changed[lora.ReservedDown(name)], changed[lora.ReservedUp(name)] = true, true, true, true
		default:
			changed[name+".lora_down"], changed[name+".lora_up"] = true, true
		}
	}
	bt, _ := tensorsOf(t, b.q)
	ft, _ := tensorsOf(t, out)
	st, _ := tensorsOf(t, out+lora.SidecarSuffix)
	// The untouched W4A4 branches are the base's widened with zero
	// columns to the file's one rank, quantization_config's.
	_, one, err := nunchaku.ParseQuantizationConfig(fused.r.Metadata()[nunchaku.MetaQuantizationConfig])
	if err != nil || one != 32 {
		t.Fatalf("quantization_config rank %d (%v), want 32", one, err)
	}
	for _, lm := range base.meta.Layers {
		for _, suf := range []string{".lora_down", ".lora_up"} {
			if n := lm.Name + suf; lm.Kind == nunchaku.KindW4A4 && !changed[n] {
				if got, want := tensorString(fused.rawTensor(t, n)), widen(t, base.rawTensor(t, n), one); got != want {
					t.Errorf("untouched branch %s is not the base's widened to rank %d", n, one)
				}
				changed[n] = true
			}
		}
	}
	for n, v := range bt {
		if !changed[n] && ft[n] != v {
			t.Errorf("untouched tensor %s changed", n)
		}
	}
	for n := range ft {
		if _, ok := bt[n]; !ok && !changed[n] || strings.HasPrefix(n, lora.ReservedPrefix) {
			t.Errorf("unexpected new tensor %s", n)
		}
	}
	for n := range st {
		if !changed[n] || !strings.HasPrefix(n, lora.ReservedPrefix) {
			t.Errorf("unexpected sidecar tensor %s", n)
		}
	}
	side, err := safetensors.Open(out + lora.SidecarSuffix)
	if err != nil {
		t.Fatal(err)
	}
	defer side.Close()

	rng := rand.New(rand.NewPCG(3, 3))
	const m = 16
	for name, dl := range deltas {
		rg := prov.LoRAs[0].Ranges[name]
		switch {
		case strings.HasSuffix(name, ".weight"): // kept
			w0 := readFloats(t, base.r, name)
			w1 := readFloats(t, fused.r, name)
			for i := range w0 {
				if want := quant.RoundBF16(float32(float64(w0[i]) + dl.exact[i])); w1[i] != want {
					t.Fatalf("%s[%d] = %v, want round16(%v + %v) = %v", name, i, w1[i], w0[i], dl.exact[i], want)
				}
			}
			if !bytes.Equal(rawOf(t, side, lora.ReservedBase(name)), rawOf(t, base.r, name)) {
				t.Errorf("%s: reserved base is not the base bytes", name)
			}
		default:
			lm, _ := fused.meta.Layer(name)
			var got []float64 // Up_new·Down_new
			var bl, fl *quant.Layer
			if lm.Kind == nunchaku.KindW4A4 {
				blm, _ := base.meta.Layer(name)
				if bl, err = base.unpackW4A4(blm); err != nil {
					t.Fatal(err)
				}
				if fl, err = fused.unpackW4A4(lm); err != nil {
					t.Fatal(err)
				}
				if rg[0] != bl.R || rg[1] != fl.R || !sameLayer4(bl, fl) {
					t.Fatalf("%s: range %v, ranks %d→%d, 4-bit part changed: %v", name, rg, bl.R, fl.R, !sameLayer4(bl, fl))
				}
				nb := lora.LayerBranch(fl)
				nb = nb.Slice(rg[0], rg[1])
				got = nb.Delta()
			} else {
				get, _ := fused.getter(name)
				br, err := lora.UnpackW4A16Branch(get, name, lm.N, lm.K, lm.Chunks, rg[1])
				if err != nil {
					t.Fatal(err)
				}
				got = br.Delta()
			}
			var num, den float64
			for i := range got {
				num += (got[i] - dl.d16[i]) * (got[i] - dl.d16[i])
				den += dl.d16[i] * dl.d16[i]
			}
			if math.Sqrt(num) > 1e-12*math.Sqrt(den) {
				t.Fatalf("%s: fused branch Δ differs from round16(s·B)·round16(A): %g of %g", name, math.Sqrt(num), math.Sqrt(den))
			}
			if bl == nil {
				continue
			}
			// Emulated output: fused = base + x16·ΔW16ᵀ.
			x := make([]float32, m*dl.k)
			for i := range x {
				x[i] = float32(rng.NormFloat64())
			}
			yb, yf := make([]float32, m*dl.n), make([]float32, m*dl.n)
			bl.ForwardFast(yb, x, m)
			fl.ForwardFast(yf, x, m)
			var e2, y2, x2, ex2 float64
			for i := 0; i < m; i++ {
				for n := 0; n < dl.n; n++ {
					var dx, dxe float64
					for k := 0; k < dl.k; k++ {
						x16 := float64(quant.RoundBF16(x[i*dl.k+k]))
						dx += x16 * dl.d16[n*dl.k+k]
						dxe += x16 * dl.exact[n*dl.k+k]
					}
					e := float64(yf[i*dl.n+n]) - float64(yb[i*dl.n+n]) - dx
					e2 += e * e
					y2 += float64(yb[i*dl.n+n]) * float64(yb[i*dl.n+n])
					x2 += dx * dx
					ex2 += (dx - dxe) * (dx - dxe)
				}
			}
			if math.Sqrt(e2) > 1e-5*(math.Sqrt(y2)+math.Sqrt(x2)) {
				t.Errorf("%s: ‖y_fused − y_base − x·ΔW16ᵀ‖ = %g, outputs %g, delta %g", name, math.Sqrt(e2), math.Sqrt(y2), math.Sqrt(x2))
			}
			t.Logf("%-40s emulation residual %.2e of ‖y‖; 16-bit branch vs exact ΔW: %.2e relative", name,
				math.Sqrt(e2)/math.Sqrt(y2), math.Sqrt(ex2)/math.Sqrt(x2))
		}
	}
}

// metaLayerShape returns [N, K] of a quantized layer or kept tensor.
func (f *qfile) metaLayerShape(t *testing.T, name string) [2]int {
	if lm, ok := f.meta.Layer(name); ok {
		return [2]int{lm.N, lm.K}
	}
	info, ok := f.r.Info(name)
	if !ok {
		t.Fatalf("no layer or tensor %s", name)
	}
	return [2]int{int(info.Shape[0]), int(info.Shape[1])}
}

// sameLayer4 reports whether two layers have the same 4-bit part, smoothing
// and bias.
func sameLayer4(a, b *quant.Layer) bool {
	if a.N != b.N || a.K != b.K || a.TensorScale != b.TensorScale || !reflect.DeepEqual(a.Codes, b.Codes) {
		return false
	}
	for _, p := range [][2][]float32{{a.Scales, b.Scales}, {a.Smooth, b.Smooth}, {a.Bias, b.Bias}} {
		for i := range p[0] {
			if math.Float32bits(p[0][i]) != math.Float32bits(p[1][i]) {
				return false
			}
		}
	}
	return true
}

func rawOf(t *testing.T, r safetensors.Reader, name string) []byte {
	t.Helper()
	b, err := r.Bytes(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readFloats(t *testing.T, r safetensors.Reader, name string) []float32 {
	t.Helper()
	info, _ := r.Info(name)
	v := make([]float32, info.Elems())
	if err := quant.Decode(v, string(info.DType), rawOf(t, r, name)); err != nil {
		t.Fatal(err)
	}
	return v
}

// TestFuseSequentialAndRemove: three LoRAs fused at once give the same
// bytes as fused one after another; removing the middle one gives the
// bytes of fusing the other two; removing all gives the base file back,
// byte for byte — on FLUX and on PixArt-Σ (kept cross-attention K/V).
func TestFuseSequentialAndRemove(t *testing.T) {
	dir := t.TempDir()
	for _, fam := range []string{"flux", "pixart"} {
		b := loraCheckpoint(t, fam)
		var specs []LoRASpec
		for i, style := range []string{lora.StylePEFT, lora.StyleKohya, lora.StyleComfyUI} {
			rng := rand.New(rand.NewPCG(uint64(10+i), 5))
			var mods []lora.Factors
			if fam == "flux" {
				mods = fluxModules(rng, 2+i)
				mods = mods[i : len(mods)-i] // overlapping, different subsets
			} else {
				mods = pixartModules(rng, 3+i, i)
			}
			p := writeLoRA(t, dir, fam+style+".safetensors", mods, lora.WriteOptions{Style: style, DType: safetensors.BF16})
			specs = append(specs, LoRASpec{Path: p, Strength: []float64{1, -0.5, 0.8}[i]})
		}
		// One name in a folder per state: a fused file records its
		// sidecar's name, so files compared byte for byte share a name.
		at := func(name string) string {
			d := filepath.Join(dir, fam+"-"+name)
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			return filepath.Join(d, "fused.safetensors")
		}
		fuse(t, FuseOptions{Model: b.q, Out: at("abc"), LoRAs: specs})
		fuse(t, FuseOptions{Model: b.q, Out: at("a"), LoRAs: specs[:1]})
		fuse(t, FuseOptions{Model: at("a"), Out: at("ab"), LoRAs: specs[1:2]})
		fuse(t, FuseOptions{Model: at("ab"), Out: at("a_b_c"), LoRAs: specs[2:]})
		if !bytes.Equal(fileBytes(t, at("abc")), fileBytes(t, at("a_b_c"))) {
			t.Fatalf("%s: three at once differ from one after another", fam)
		}
		fuse(t, FuseOptions{Model: b.q, Out: at("ac"), LoRAs: []LoRASpec{specs[0], specs[2]}})
		mid := strings.TrimSuffix(filepath.Base(specs[1].Path), ".safetensors")
		rep := fuse(t, FuseOptions{Model: at("abc"), Out: at("abc-b"), Remove: []string{mid}})
		if !bytes.Equal(fileBytes(t, at("ac")), fileBytes(t, at("abc-b"))) || len(rep.Fused) != 2 || rep.Restored {
			t.Fatalf("%s: removing %s differs from fusing the other two (fused %v)", fam, mid, rep.Fused)
		}
		rep = fuse(t, FuseOptions{Model: at("abc"), Out: at("none"), RemoveAll: true})
		if !bytes.Equal(fileBytes(t, b.q), fileBytes(t, at("none"))) || !rep.Restored {
			t.Fatalf("%s: --remove-all does not restore the base bytes (restored %v)", fam, rep.Restored)
		}
		// Remove and add in one call.
		rep = fuse(t, FuseOptions{Model: at("ab"), Out: at("ab-a+c"), Remove: []string{strings.TrimSuffix(filepath.Base(specs[0].Path), ".safetensors")}, LoRAs: specs[2:]})
		if !reflect.DeepEqual(rep.Fused, []string{mid, strings.TrimSuffix(filepath.Base(specs[2].Path), ".safetensors")}) {
			t.Errorf("%s: fused %v after remove+add", fam, rep.Fused)
		}
	}
}

// pixartModules is a LoRA over the tiny PixArt-Σ (D = 128): self-attention
// q (W4A4), cross-attention k and v (kept 16-bit), MLP down (shifted).
func pixartModules(rng *rand.Rand, r, block int) []lora.Factors {
	const D = 128
	b := "transformer_blocks." + string(rune('0'+block%2)) + "."
	var out []lora.Factors
	for _, s := range []struct {
		m    string
		n, k int
	}{{b + "attn1.to_q", D, D}, {b + "attn2.to_k", D, D}, {b + "attn2.to_v", D, D}, {b + "ff.net.2", D, 4 * D}} {
		f := lora.Factors{Module: s.m, Rank: r, N: s.n, K: s.k, A: make([]float32, r*s.k), B: make([]float32, s.n*r), Alpha: float64(r)}
		for j := range f.A {
			f.A[j] = float32(rng.NormFloat64() * 0.2)
		}
		for j := range f.B {
			f.B[j] = float32(rng.NormFloat64() * 0.05)
		}
		out = append(out, f)
	}
	return out
}

// TestFuseErrors: refused inputs name the problem and write nothing.
func TestFuseErrors(t *testing.T) {
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux")
	rng := rand.New(rand.NewPCG(4, 4))
	good := fluxModules(rng, 2)
	out := filepath.Join(dir, "out.safetensors")
	te := append(append([]lora.Factors(nil), good[:2]...), lora.Factors{Module: "te1.text_model.encoder.layers.0.mlp.fc1", Rank: 2, N: 8, K: 8,
		A: make([]float32, 16), B: make([]float32, 16), Alpha: 2})
	bad := append([]lora.Factors(nil), good[:2]...)
	bad[1].K, bad[1].A = 96, make([]float32, 2*96)
	unmatched := writeLoRA(t, dir, "te.safetensors", te, lora.WriteOptions{Style: lora.StyleKohya})
	misfit := writeLoRA(t, dir, "bad.safetensors", bad, lora.WriteOptions{Style: lora.StylePEFT})
	plain := writeLoRA(t, dir, "plain.safetensors", good, lora.WriteOptions{Style: lora.StylePEFT})
	cases := []struct {
		name string
		opt  FuseOptions
		want []string
	}{
		{"unmatched", FuseOptions{LoRAs: []LoRASpec{{Path: unmatched, Strength: 1}}}, []string{"lora_unet_te1_text_model_encoder_layers_0_mlp_fc1", "--allow-unmatched"}},
		{"shape", FuseOptions{LoRAs: []LoRASpec{{Path: misfit, Strength: 1}}}, []string{"transformer_blocks.0.qkv_proj", "[128 96]", "[128 128]"}},
		{"remove unknown", FuseOptions{Remove: []string{"nope"}}, []string{"no LoRA is fused"}},
		{"twice", FuseOptions{LoRAs: []LoRASpec{{Path: plain, Strength: 1}, {Path: plain, Strength: 2}}}, []string{`"plain" is already fused or given twice`}},
		{"policy", FuseOptions{LoRAs: []LoRASpec{{Path: plain, Strength: 1}}, W4A16: "requant"}, []string{"w4a16 policy"}},
		{"nothing", FuseOptions{}, []string{"nothing to do"}},
		{"strength 0", FuseOptions{LoRAs: []LoRASpec{{Path: plain, Strength: 0}}}, []string{"adds nothing"}},
		{"in place", FuseOptions{LoRAs: []LoRASpec{{Path: plain, Strength: 1}}, Out: b.q}, []string{"overwrite the input"}},
	}
	for _, c := range cases {
		c.opt.Model = b.q
		if c.opt.Out == "" {
			c.opt.Out = out
		}
		if c.opt.W4A16 == "" {
			c.opt.W4A16 = W4A16Branch
		}
		_, err := FuseLoRA(c.opt)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q does not mention %q", c.name, err, w)
			}
		}
		if _, err := os.Stat(out); err == nil {
			t.Fatalf("%s: output written", c.name)
		}
	}

	// --allow-unmatched fuses the rest with a warning.
	var warned []string
	rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: unmatched, Strength: 1}}, AllowUnmatched: true,
		OnWarn: func(s string) { warned = append(warned, s) }})
	if len(warned) != 1 || !strings.Contains(warned[0], "te1_text_model") || len(rep.Layers) != 1 {
		t.Errorf("warnings %q, layers %+v", warned, rep.Layers)
	}
	// Removing a name that is not fused lists those that are.
	_, err := FuseLoRA(FuseOptions{Model: out, Out: filepath.Join(dir, "x.safetensors"), Remove: []string{"nope"}})
	if err == nil || !strings.Contains(err.Error(), "fused: te") {
		t.Errorf("remove unknown name: %v", err)
	}
	// --w4a16 skip and --kept skip leave those layers alone, with warnings.
	warned = nil
	rep = fuse(t, FuseOptions{Model: b.q, Out: filepath.Join(dir, "skip.safetensors"), LoRAs: []LoRASpec{{Path: plain, Strength: 1}},
		W4A16: W4A16Skip, Kept: KeptSkip, OnWarn: func(s string) { warned = append(warned, s) }})
	for _, l := range rep.Layers {
		if l.Kind != "w4a4" {
			t.Errorf("layer %s (%s) touched under skip policies", l.Name, l.Kind)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "4 layers") {
		t.Errorf("skip warnings %q", warned)
	}
}

// TestFuseProvenance: the record names the LoRA's file, hash, strength,
// style, and per layer the rank range.
func TestFuseProvenance(t *testing.T) {
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux-bfl")
	mods := fluxModules(rand.New(rand.NewPCG(6, 6)), 3)
	lp := writeLoRA(t, dir, "style.safetensors", toBFL(mods), lora.WriteOptions{Style: lora.StyleKohya})
	out := filepath.Join(dir, "out.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 0.8}}})
	_, md := tensorsOf(t, out)
	p, err := lora.ParseProvenance(md[lora.MetaKey])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(fileBytes(t, lp))
	a := p.LoRAs[0]
	if a.Name != "style" || a.File != "style.safetensors" || a.Strength != 0.8 || a.Format != "kohya" || a.SHA256 != hexOf(sum[:]) {
		t.Errorf("record %+v", a)
	}
	base := sha256.Sum256(fileBytes(t, b.q))
	if p.Base.SHA256 != hexOf(base[:]) {
		t.Errorf("base hash %s", p.Base.SHA256)
	}
	if rg := a.Ranges["transformer_blocks.0.qkv_proj"]; rg != [2]int{16, 25} {
		t.Errorf("qkv_proj range %v, want [16 25] (base rank 16, q|k|v rank 3 each)", rg)
	}
	if rg := a.Ranges["transformer_blocks.0.norm1.linear"]; rg != [2]int{0, 3} {
		t.Errorf("norm1.linear range %v", rg)
	}
	meta, _ := nunchaku.ParseMeta(md[nunchaku.MetaSVDQ])
	if lm, _ := meta.Layer("transformer_blocks.0.qkv_proj"); lm.R != 25 {
		t.Errorf("svdq rank of qkv_proj %d, want 25", lm.R)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, c := range b {
		out[2*i], out[2*i+1] = digits[c>>4], digits[c&15]
	}
	return string(out)
}

// TestCheckLoRA: `check --lora` measures the fused file against the
// reference with the LoRA merged in full precision: the absolute error is
// the base quantization's (the branch is exact up to 16-bit rounding), so
// with this strong random LoRA (strength 4: ‖Y + x·ΔWᵀ‖ > ‖Y‖ on every
// touched layer) the relative error must not grow. Checking the same file against the
// plain reference shows ΔW itself as error on every touched layer. A LoRA
// that is not the fused one (other strength) is refused.
func TestCheckLoRA(t *testing.T) {
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux")
	mods := fluxModules(rand.New(rand.NewPCG(8, 8)), 4)
	lp := writeLoRA(t, dir, "l.safetensors", mods, lora.WriteOptions{Style: lora.StylePEFT, DType: safetensors.BF16})
	out := filepath.Join(dir, "fused.safetensors")
	rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 4}}})
	touched := map[string]bool{}
	for _, l := range rep.Layers {
		touched[l.Name] = true
	}
	run := func(model string, loras []LoRASpec) map[string]float64 {
		r, _, err := Check(CheckOptions{Model: model, Reference: b.src, Calib: b.calib, Search: quant.SearchOff, Workers: 2, LoRAs: loras})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, l := range r.Layers {
			out[l.Name] = l.RelError[MethodSVDQuant]
		}
		return out
	}
	base := run(b.q, nil)
	with := run(out, []LoRASpec{{Path: lp, Strength: 4}})
	without := run(out, nil)
	for name, e := range base {
		t.Logf("%-42s base %.4f  fused vs ref+ΔW %.4f  fused vs ref %.4f", name, e, with[name], without[name])
		switch {
		case !touched[name] && (with[name] != e || without[name] != e):
			t.Errorf("%s: untouched layer's error changed: %v, %v, base %v", name, with[name], without[name], e)
		case touched[name] && !(with[name] > 0 && with[name] <= e*1.01):
			t.Errorf("%s: fused error %v against ref+ΔW, base error %v", name, with[name], e)
		case touched[name] && !(without[name] > 1.5*with[name]):
			t.Errorf("%s: against the plain reference the error %v is not clearly above %v", name, without[name], with[name])
		}
	}
	_, _, err := Check(CheckOptions{Model: out, Reference: b.src, Calib: b.calib, LoRAs: []LoRASpec{{Path: lp, Strength: 1}}})
	if err == nil || !strings.Contains(err.Error(), "is not fused") {
		t.Errorf("wrong strength: %v", err)
	}
	_, _, err = Check(CheckOptions{Model: b.q, Reference: b.src, Calib: b.calib, LoRAs: []LoRASpec{{Path: lp, Strength: 4}}})
	if err == nil || !strings.Contains(err.Error(), "no LoRA is fused") {
		t.Errorf("base file: %v", err)
	}
}

package model

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// f32Tensor is a float32 safetensors tensor.
func f32Tensor(name string, shape []int64, v []float64) safetensors.Tensor {
	data := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(float32(x)))
	}
	return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: safetensors.F32, Shape: shape}, Data: data}
}

// gauss returns n values N(0, s²) rounded to float32.
func gauss(rng *rand.Rand, n int, s float64) []float64 {
	v := make([]float64, n)
	for i := range v {
		v[i] = float64(float32(rng.NormFloat64() * s))
	}
	return v
}

// mm is the test's own [m, r]·[r, n] product.
func mm(a, b []float64, m, r, n int) []float64 {
	c := make([]float64, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			for q := 0; q < r; q++ {
				c[i*n+j] += a[i*r+q] * b[q*n+j]
			}
		}
	}
	return c
}

// denseModule is one module of a dense-format test LoRA: its tensors and
// its ΔW (before the strength) as this test computes it.
type denseModule struct {
	module  string
	n, k    int
	tensors []safetensors.Tensor
	delta   []float64
}

// lohaModule writes a rank-4 LoHa in kohya naming, α = 2 (scale 1/2):
// ΔW = ½·(w1a·w1b) ⊙ (w2a·w2b), of rank up to 16.
func lohaModule(rng *rand.Rand, module string, n, k int) denseModule {
	const r = 4
	key := "lora_unet_" + strings.ReplaceAll(module, ".", "_")
	w1a, w1b, w2a, w2b := gauss(rng, n*r, 0.3), gauss(rng, r*k, 0.3), gauss(rng, n*r, 0.3), gauss(rng, r*k, 0.3)
	p1, p2 := mm(w1a, w1b, n, r, k), mm(w2a, w2b, n, r, k)
	d := make([]float64, n*k)
	for i := range d {
		d[i] = 0.5 * p1[i] * p2[i]
	}
	return denseModule{module, n, k, []safetensors.Tensor{
		f32Tensor(key+".hada_w1_a", []int64{int64(n), r}, w1a), f32Tensor(key+".hada_w1_b", []int64{r, int64(k)}, w1b),
		f32Tensor(key+".hada_w2_a", []int64{int64(n), r}, w2a), f32Tensor(key+".hada_w2_b", []int64{r, int64(k)}, w2b),
		f32Tensor(key+".alpha", []int64{}, []float64{2}),
	}, d}
}

// lokrModule writes a LoKr in ComfyUI naming: w1 [4, 4] full ⊗ w2 =
// w2_a [n/4, 2]·w2_b [2, k/4], α = 4 (scale 4/2):
// ΔW[i·p+a, j·q+b] = 2·w1[i, j]·w2[a, b].
func lokrModule(rng *rand.Rand, module string, n, k int) denseModule {
	key := "diffusion_model." + module
	p, q := n/4, k/4
	w1, w2a, w2b := gauss(rng, 16, 0.5), gauss(rng, p*2, 0.3), gauss(rng, 2*q, 0.3)
	w2 := mm(w2a, w2b, p, 2, q)
	d := make([]float64, n*k)
	for i := 0; i < 4; i++ {
		for j := 0; j < 4; j++ {
			for a := 0; a < p; a++ {
				for b := 0; b < q; b++ {
					d[(i*p+a)*k+j*q+b] = 2 * w1[i*4+j] * w2[a*q+b]
				}
			}
		}
	}
	return denseModule{module, n, k, []safetensors.Tensor{
		f32Tensor(key+".lokr_w1", []int64{4, 4}, w1),
		f32Tensor(key+".lokr_w2_a", []int64{int64(p), 2}, w2a), f32Tensor(key+".lokr_w2_b", []int64{2, int64(q)}, w2b),
		f32Tensor(key+".alpha", []int64{}, []float64{4}),
	}, d}
}

// doraModule writes a rank-4 LoRA with a DoRA magnitude, α = 2 (scale
// 1/2): on an attention or MLP module PEFT's lora_magnitude_vector [N] per
// output row (diffusers names, transformer. prefix), on the embedder a
// LyCORIS dora_scale [1, K] per input column (kohya names). The magnitude
// is the norm of W·(1 + 0.1·noise) along that axis. ΔW = Wc ⊙ m/‖Wc‖ − W
// with Wc = W + ½·B·A, as this test computes it from the base weight w.
func doraModule(rng *rand.Rand, module string, n, k int, w []float64, kohya bool) denseModule {
	const r = 4
	a, b := gauss(rng, r*k, 0.3), gauss(rng, n*r, 0.1)
	ba := mm(b, a, n, r, k)
	wc := make([]float64, n*k)
	for i := range wc {
		wc[i] = w[i] + 0.5*ba[i]
	}
	size := n
	if kohya {
		size = k
	}
	mag, norm := make([]float64, size), make([]float64, size)
	for i := 0; i < n; i++ {
		for j := 0; j < k; j++ {
			at := i
			if kohya {
				at = j
			}
			mag[at] += w[i*k+j] * w[i*k+j] * (1 + 0.1*rng.NormFloat64())
			norm[at] += wc[i*k+j] * wc[i*k+j]
		}
	}
	for i := range mag {
		mag[i] = float64(float32(math.Sqrt(math.Abs(mag[i]))))
		norm[i] = math.Sqrt(norm[i])
	}
	d := make([]float64, n*k)
	for i := 0; i < n; i++ {
		for j := 0; j < k; j++ {
			at := i
			if kohya {
				at = j
			}
			d[i*k+j] = wc[i*k+j]*mag[at]/norm[at] - w[i*k+j]
		}
	}
	if kohya {
		key := "lora_unet_" + strings.ReplaceAll(module, ".", "_")
		return denseModule{module, n, k, []safetensors.Tensor{
			f32Tensor(key+".lora_down.weight", []int64{r, int64(k)}, a), f32Tensor(key+".lora_up.weight", []int64{int64(n), r}, b),
			f32Tensor(key+".alpha", []int64{}, []float64{2}), f32Tensor(key+".dora_scale", []int64{1, int64(k)}, mag),
		}, d}
	}
	key := "transformer." + module
	return denseModule{module, n, k, []safetensors.Tensor{
		f32Tensor(key+".lora_A.weight", []int64{r, int64(k)}, a), f32Tensor(key+".lora_B.weight", []int64{int64(n), r}, b),
		f32Tensor(key+".alpha", []int64{}, []float64{2}), f32Tensor(key+".lora_magnitude_vector.weight", []int64{int64(n)}, mag),
	}, d}
}

// denseTargets are, per test checkpoint, a W4A4 attention module (rows of
// a fused qkv layer), a W4A4 MLP-down module (shifted input) and a kept
// 16-bit embedder.
var denseTargets = map[string][]string{
	"flux":       {"transformer_blocks.0.attn.to_k", "transformer_blocks.0.ff.net.2", "x_embedder"},
	"qwen-image": {"transformer_blocks.0.attn.to_k", "transformer_blocks.0.img_mlp.net.2", "img_in"},
	"pixart":     {"transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2", "transformer_blocks.0.attn2.to_k"},
}

// TestFuseDense: a LoHa and a LoKr built from LyCORIS's key scheme fuse
// into synthetic FLUX.1, Qwen-Image and PixArt-Σ checkpoints: on W4A4 layers the
// stored branch is the truncated SVD of the ΔW this test computes, within
// the error fuse-lora reports (relative Frobenius error, 16-bit rounding
// aside), at the rank the energy rule gives; the kept embedder takes the
// full ΔW; check --lora measures the file against ref + the full ΔW; and
// --remove-all restores the base byte for byte.
func TestFuseDense(t *testing.T) {
	for _, which := range []string{"flux", "qwen-image", "pixart"} {
		for _, format := range []string{"loha", "lokr", "dora"} {
			t.Run(which+"/"+format, func(t *testing.T) { fuseDense(t, which, format) })
		}
	}
}

func fuseDense(t *testing.T, which, format string) {
	const strength = 0.8
	dir := t.TempDir()
	b := loraCheckpoint(t, which)
	src, err := safetensors.Open(b.src)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	rng := rand.New(rand.NewPCG(21, uint64(len(which)+len(format))))
	var mods []denseModule
	var ts []safetensors.Tensor
	for _, m := range denseTargets[which] {
		info, ok := src.Info(m + ".weight")
		if !ok {
			t.Fatalf("%s: no %s.weight", b.src, m)
		}
		n, k := int(info.Shape[0]), int(info.Shape[1])
		var dm denseModule
		switch format {
		case "loha":
			dm = lohaModule(rng, m, n, k)
		case "lokr":
			dm = lokrModule(rng, m, n, k)
		case "dora":
			w32 := make([]float32, n*k)
			raw, _ := src.Bytes(m + ".weight")
			if err := quant.Decode(w32, string(info.DType), raw); err != nil {
				t.Fatal(err)
			}
			w := make([]float64, n*k)
			for i, v := range w32 {
				w[i] = float64(v)
			}
			dm = doraModule(rng, m, n, k, w, m == denseTargets[which][2])
		}
		mods = append(mods, dm)
		ts = append(ts, dm.tensors...)
	}
	lp := filepath.Join(dir, format+".safetensors")
	if err := safetensors.WriteFile(lp, ts, nil); err != nil {
		t.Fatal(err)
	}
	spec := []LoRASpec{{Path: lp, Strength: strength}}
	if format == "dora" { // DoRA normalises the 16-bit weight: without it, refused
		_, err := FuseLoRA(FuseOptions{Model: b.q, Out: filepath.Join(dir, "x.safetensors"), LoRAs: spec, W4A16: W4A16Skip, Trunc: lora.TruncOptions{Rank: 4}})
		if err == nil || !strings.Contains(err.Error(), "--reference") {
			t.Errorf("DoRA without --reference: %v", err)
		}
	}

	// Without a rank rule a dense ΔW on a W4A4 layer is refused.
	if _, err := FuseLoRA(FuseOptions{Model: b.q, Out: filepath.Join(dir, "x.safetensors"), LoRAs: spec, W4A16: W4A16Skip, Reference: b.src}); err == nil ||
		!strings.Contains(err.Error(), "--delta-energy") || !strings.Contains(err.Error(), lp) {
		t.Errorf("no rank rule: %v", err)
	}

	out := filepath.Join(dir, "fused.safetensors")
	const energy = 0.9
	rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: spec, Trunc: lora.TruncOptions{Energy: energy}, Calib: b.calib, Reference: b.src})
	fused, err := openQuantized(out)
	if err != nil {
		t.Fatal(err)
	}
	defer fused.Close()
	// The same at energy 1: the branch holds all of ΔW.
	full := filepath.Join(dir, "full.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: full, LoRAs: spec, Trunc: lora.TruncOptions{Energy: 1}, Reference: b.src})
	fullF, err := openQuantized(full)
	if err != nil {
		t.Fatal(err)
	}
	defer fullF.Close()
	ratio := map[string]float64{} // ‖x·ΔWᵀ‖ / ‖y‖ on the calibration rows
	base, err := openQuantized(b.q)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	prov, err := lora.ParseProvenance(fused.r.Metadata()[lora.MetaKey])
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"loha": "lycoris", "lokr": "lycoris", "dora": "kohya+peft"}[format]; prov.LoRAs[0].Format != want {
		t.Errorf("format %q", prov.LoRAs[0].Format)
	}
	ix := fusedIndex(t, fused)
	trunc := map[string]lora.Truncation{}
	for _, tr := range rep.Truncated {
		trunc[tr.Layer] = tr
	}
	for _, dm := range mods {
		targets, ok := ix.Resolve(dm.module)
		if !ok || len(targets) != 1 {
			t.Fatalf("%s: targets %v", dm.module, targets)
		}
		tg := targets[0]
		li := ix.Layers[tg.Layer]
		want := make([]float64, li.N*li.K) // the layer's ΔW: this module's rows
		for i := tg.Rows.Lo; i < tg.Rows.Hi; i++ {
			for j := 0; j < li.K; j++ {
				want[i*li.K+j] = strength * dm.delta[(tg.SrcRows.Lo+i-tg.Rows.Lo)*dm.k+tg.Cols.Lo+j]
			}
		}
		rg := prov.LoRAs[0].Ranges[tg.Layer]
		if li.Kind == lora.Kept {
			w0, w1 := readFloats(t, base.r, tg.Layer), readFloats(t, fused.r, tg.Layer)
			for i := range w0 {
				x := float64(w0[i]) + want[i]
				if got := float64(w1[i]); math.Abs(got-x) > math.Abs(x)/256+1e-30 {
					t.Fatalf("%s[%d] = %v, want round16(%v + %v)", tg.Layer, i, got, w0[i], want[i])
				}
			}
			if _, ok := trunc[tg.Layer]; ok || rg[1]-rg[0] != min(li.N, li.K) {
				t.Errorf("%s: kept layer truncated (%v) or range %v", tg.Layer, trunc[tg.Layer], rg)
			}
			continue
		}
		tr, ok := trunc[tg.Layer]
		if !ok || tr.Rows == 0 || tr.LoRA != format {
			t.Fatalf("%s: no truncation reported: %+v", tg.Layer, rep.Truncated)
		}
		lm, _ := fused.meta.Layer(tg.Layer)
		fl, err := fused.unpackW4A4(lm)
		if err != nil {
			t.Fatal(err)
		}
		got := lora.LayerBranch(fl).Slice(rg[0], rg[1]).Delta()
		var num, den float64
		for i := range got {
			num += (got[i] - want[i]) * (got[i] - want[i])
			den += want[i] * want[i]
		}
		rel := math.Sqrt(num / den) // in weight space: √(1 − energy), 16-bit rounding aside
		x, m := testCalibRows(t, fused, b.calib, tg.Layer, li.K)
		onRows := rowsError(x, m, li.N, li.K, got, want)
		if rg[1]-rg[0] != tr.Rank || tr.Energy < energy || tr.Rank >= tr.Full || math.Abs(rel-math.Sqrt(1-tr.Energy)) > 0.01 ||
			tr.Rows != m || math.Abs(tr.Error-onRows) > 1e-4*onRows {
			t.Errorf("%s: rank %d (range %v), energy %.4f, reported error %.4f on %d rows, measured here %.4f on %d; weight error %.4f, √(1−energy) %.4f",
				tg.Layer, tr.Rank, rg, tr.Energy, tr.Error, tr.Rows, onRows, m, rel, math.Sqrt(1-tr.Energy))
		}
		t.Logf("%-36s %s rank %d of %d, energy %.4f, error on %d rows reported %.4f, measured %.4f; in weight space %.4f",
			tg.Layer, format, tr.Rank, tr.Full, tr.Energy, tr.Rows, tr.Error, onRows, rel)
		flm, _ := fullF.meta.Layer(tg.Layer)
		ful, err := fullF.unpackW4A4(flm)
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, m*li.N)
		ful.ForwardFast(y, x, m)
		ratio[tg.Layer] = rowsError(x, m, li.N, li.K, make([]float64, len(want)), want) * math.Sqrt(sumSq(want, x, m, li.N, li.K)) / norm32(y)
	}

	// check --lora: the file against ref + the full ΔW (energy 1: the
	// branch holds all of it, so the error is the base's; energy 0.9: the
	// truncation shows).
	var touched []string
	for l := range trunc {
		touched = append(touched, regexp.QuoteMeta(l))
	}
	only := regexp.MustCompile("^(" + strings.Join(touched, "|") + ")$")
	runCheck := func(model string, loras []LoRASpec) map[string]float64 {
		r, _, err := Check(CheckOptions{Model: model, Reference: b.src, Calib: b.calib, Search: quant.SearchOff, Workers: 2, LoRAs: loras, Layers: only})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]float64{}
		for _, l := range r.Layers {
			m[l.Name] = l.RelError[MethodSVDQuant]
		}
		return m
	}
	e0 := runCheck(b.q, nil)
	e1 := runCheck(full, spec)
	e9 := runCheck(out, spec)
	for layer, tr := range trunc {
		t.Logf("%-36s check: base %.4f, energy 1 %.4f, energy 0.9 %.4f", layer, e0[layer], e1[layer], e9[layer])
		// ‖y_q − y'‖ ≤ ‖y_full − y'‖ + ‖x·(ΔW − ΔW_r)ᵀ‖, relative to ‖y'‖ ≈ ‖y_full‖ (1 ± e1).
		bound := e1[layer] + tr.Error*ratio[layer]/(1-e1[layer])
		t.Logf("%-36s check bound e1 + error·‖xΔWᵀ‖/‖y‖ = %.4f", layer, bound)
		if !(e1[layer] <= e0[layer]*1.05+1e-3) || !(e9[layer] > e1[layer]) || !(e9[layer] <= bound*1.02) {
			t.Errorf("%s: check errors base %v, full rank %v, truncated %v, bound %v (reported %v)", layer, e0[layer], e1[layer], e9[layer], bound, tr.Error)
		}
	}

	// Removal restores the base byte for byte.
	back := filepath.Join(dir, "back.safetensors")
	if r := fuse(t, FuseOptions{Model: out, Out: back, RemoveAll: true}); !r.Restored || !bytes.Equal(fileBytes(t, back), fileBytes(t, b.q)) {
		t.Errorf("remove-all did not restore the base")
	}
}

// testCalibRows returns the rows check measures a layer on (its
// svdq_calib key).
func testCalibRows(t *testing.T, f *qfile, calibPath, layer string, k int) ([]float32, int) {
	cf, err := calib.Open(calibPath)
	if err != nil {
		t.Fatal(err)
	}
	defer cf.Close()
	cal, err := loadCalib(cf, f.calib[layer])
	if err != nil {
		t.Fatal(err)
	}
	x, m := sampleRows(cal, k, 0)
	return append([]float32(nil), x...), m
}

// rowsError returns ‖x·(got − want)ᵀ‖ / ‖x·wantᵀ‖ for x [m, k], got and
// want [n, k].
func rowsError(x []float32, m, n, k int, got, want []float64) float64 {
	var num, den float64
	for r := 0; r < m; r++ {
		for i := 0; i < n; i++ {
			var e, y float64
			for j := 0; j < k; j++ {
				e += float64(x[r*k+j]) * (got[i*k+j] - want[i*k+j])
				y += float64(x[r*k+j]) * want[i*k+j]
			}
			num += e * e
			den += y * y
		}
	}
	return math.Sqrt(num / den)
}

// sumSq returns ‖x·wᵀ‖².
func sumSq(w []float64, x []float32, m, n, k int) float64 {
	s := 0.0
	for r := 0; r < m; r++ {
		for i := 0; i < n; i++ {
			var y float64
			for j := 0; j < k; j++ {
				y += float64(x[r*k+j]) * w[i*k+j]
			}
			s += y * y
		}
	}
	return s
}

func norm32(v []float32) float64 {
	s := 0.0
	for _, x := range v {
		s += float64(x) * float64(x)
	}
	return math.Sqrt(s)
}

// fusedIndex indexes a quantized file's modules.
func fusedIndex(t *testing.T, f *qfile) *lora.Index {
	var infos []safetensors.Info
	for _, n := range f.r.Names() {
		i, _ := f.r.Info(n)
		infos = append(infos, i)
	}
	ix, err := lora.NewIndex(f.meta, infos)
	if err != nil {
		t.Fatal(err)
	}
	return ix
}

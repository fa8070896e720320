package model

import (
	"bytes"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// controlLoRA is a BFL control LoRA over the tiny FLUX (D = 128, H = 512,
// head dim 128), BFL names, no alpha: factors, a bias delta on every
// module (a double block's qkv, the 6-chunk adaLN img_mod, a single
// block's linear1 over qkv_proj and mlp_fc1 and its linear2 over out_proj
// and mlp_fc2, the half-swapped final modulation) and two norm scales.
// The bias deltas are N(0, 0.25²), large enough to show in check.
type controlLoRA struct {
	namedLoRA
	bias map[string][]float64 // module → its lora_B.bias
	norm map[string][]float64 // scale key → values
}

func newControlLoRA(rng *rand.Rand) controlLoRA {
	const D, H, r = 128, 512, 2
	c := controlLoRA{namedLoRA: namedLoRA{}, bias: map[string][]float64{}, norm: map[string][]float64{}}
	for _, m := range []struct {
		name string
		n, k int
	}{
		{"double_blocks.0.img_attn.qkv", 3 * D, D},
		{"double_blocks.0.img_mod.lin", 6 * D, D},
		{"single_blocks.0.linear1", 3*D + H, D},
		{"single_blocks.0.linear2", D, D + H},
		{"final_layer.adaLN_modulation.1", 2 * D, D},
	} {
		c.add(m.name+".lora_A.weight", gauss(rng, r*m.k, 0.1), r, int64(m.k))
		c.add(m.name+".lora_B.weight", gauss(rng, m.n*r, 0.05), int64(m.n), r)
		c.bias[m.name] = gauss(rng, m.n, 0.25)
		c.add(m.name+".lora_B.bias", c.bias[m.name], int64(m.n))
	}
	for _, k := range []string{"double_blocks.0.img_attn.norm.query_norm.scale", "single_blocks.0.norm.key_norm.scale"} {
		c.norm[k] = gauss(rng, D, 1)
		c.add(k, c.norm[k], D)
	}
	return c
}

// vecValues decodes a 1-D 16-bit tensor of a file.
func vecValues(t *testing.T, path, name string) ([]float32, []byte) {
	t.Helper()
	v, raw, _ := tensorData(t, path, name)
	return v, raw
}

// tensorData decodes a 16-bit tensor of a file: values, a copy of its
// bytes, its shape.
func tensorData(t *testing.T, path, name string) ([]float32, []byte, []int64) {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	info, ok := f.Info(name)
	if !ok {
		t.Fatalf("%s: no tensor %s", path, name)
	}
	return readFloats(t, f, name), append([]byte(nil), rawOf(t, f, name)...), info.Shape
}

// layerBias returns a quantized layer's logical bias, unpacked.
func layerBias(t *testing.T, path, layer string) []float32 {
	t.Helper()
	f, err := openQuantized(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lm, ok := f.meta.Layer(layer)
	if !ok {
		t.Fatalf("%s: no layer %s", path, layer)
	}
	if lm.Kind == nunchaku.KindW4A16 {
		wo, err := f.unpackW4A16(lm)
		if err != nil {
			t.Fatal(err)
		}
		return wo.Bias
	}
	ql, err := f.unpackW4A4(lm)
	if err != nil {
		t.Fatal(err)
	}
	return ql.Bias
}

// TestFuseControl: a BFL control LoRA's bias deltas and norm scales,
// fused into the tiny FLUX quantized from diffusers and from BFL names,
// in NVFP4 and in F16 for the C++ engine:
// biases become round16(b + s·Δb) in the rows the module's B feeds
// (W4A4 q|k|v, a single block's linear1 split over qkv_proj and mlp_fc1,
// linear2's bias on mlp_fc2 only, the W4A16 adaLN's interleaved rows, the
// kept final modulation's swapped halves), norms take the scale itself
// whatever the strength, every layer's hash verifies, --remove-all gives
// the base bytes back, fusing at once or one after another agree, a
// second control LoRA's norm wins and removing it brings the first's
// back, and check --lora measures against the reference with the bias
// deltas (within 5% of the base file's error; without them far worse).
func TestFuseControl(t *testing.T) {
	for _, c := range []struct {
		which string
		dt    quant.Float16
	}{{"flux", quant.BF16}, {"flux-bfl", quant.BF16}, {"flux-nvfp4", quant.BF16}, {"flux-f16-cpp", quant.F16}} {
		t.Run(c.which, func(t *testing.T) { fuseControl(t, c.which, c.dt) })
	}
}

func fuseControl(t *testing.T, which string, dt quant.Float16) {
	const D, H, s = 128, 512, 0.5
	dir := t.TempDir()
	b := loraCheckpoint(t, which)
	rng := rand.New(rand.NewPCG(61, 62))
	c1 := newControlLoRA(rng)
	p1 := c1.write(t, filepath.Join(dir, "canny.safetensors"))
	out := filepath.Join(dir, "o.safetensors")
	rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: p1, Strength: s}}})
	if len(rep.Vectors) != 8 {
		t.Errorf("rewrote %d vectors, want 8 (6 biases: linear1 feeds two layers; 2 norms): %+v", len(rep.Vectors), rep.Vectors)
	}
	// want is round16(b + float32(s·Δ)), the test's own arithmetic.
	want := func(base float32, d float64) float32 {
		return dt.Round(float32(float64(base) + float64(float32(s*d))))
	}
	expect := func(what string, got, base []float32, rows []int, delta func(int) float64) {
		t.Helper()
		for _, n := range rows {
			if w := want(base[n], delta(n)); got[n] != w {
				t.Errorf("%s row %d: %v, want %v (base %v, Δ %v)", what, n, got[n], w, base[n], delta(n))
			}
		}
	}
	bq := c1.bias["double_blocks.0.img_attn.qkv"]
	expect("qkv_proj", layerBias(t, out, "transformer_blocks.0.qkv_proj"), layerBias(t, b.q, "transformer_blocks.0.qkv_proj"),
		[]int{3, D + 5, 2*D + 7}, func(n int) float64 { return bq[n] })
	b1 := c1.bias["single_blocks.0.linear1"]
	expect("single qkv_proj", layerBias(t, out, "single_transformer_blocks.0.qkv_proj"), layerBias(t, b.q, "single_transformer_blocks.0.qkv_proj"),
		[]int{1, 2*D + 1}, func(n int) float64 { return b1[n] })
	expect("single mlp_fc1", layerBias(t, out, "single_transformer_blocks.0.mlp_fc1"), layerBias(t, b.q, "single_transformer_blocks.0.mlp_fc1"),
		[]int{0, H - 1}, func(n int) float64 { return b1[3*D+n] })
	b2 := c1.bias["single_blocks.0.linear2"]
	expect("single mlp_fc2", layerBias(t, out, "single_transformer_blocks.0.mlp_fc2"), layerBias(t, b.q, "single_transformer_blocks.0.mlp_fc2"),
		[]int{0, D - 1}, func(n int) float64 { return b2[n] })
	if _, o := vecValues(t, out, "single_transformer_blocks.0.out_proj.bias"); !bytes.Equal(o, func() []byte { _, x := vecValues(t, b.q, "single_transformer_blocks.0.out_proj.bias"); return x }()) {
		t.Errorf("out_proj's bias changed: linear2's bias is mlp_fc2's")
	}
	bf := c1.bias["final_layer.adaLN_modulation.1"] // BFL (shift, scale), diffusers (scale, shift)
	nb, _ := vecValues(t, b.q, "norm_out.linear.bias")
	no, _ := vecValues(t, out, "norm_out.linear.bias")
	expect("norm_out.linear.bias", no, nb, []int{0, D + 1}, func(n int) float64 { return bf[(n+D)%(2*D)] })
	// W4A16: stored round16(round16(b + 1) + Δ) on the chunks with the +1,
	// so the unpacked bias is b + Δ within a BF16 step of b + 1; chunk 0
	// (rows [0, D)) has no +1 and is exact.
	bm := c1.bias["double_blocks.0.img_mod.lin"]
	mo, mb := layerBias(t, out, "transformer_blocks.0.norm1.linear"), layerBias(t, b.q, "transformer_blocks.0.norm1.linear")
	expect("norm1.linear", mo, mb, []int{0, D - 1}, func(n int) float64 { return bm[n] })
	for n := range mo {
		w := float64(mb[n]) + s*bm[n]
		if math.Abs(float64(mo[n])-w) > (math.Abs(w)+1)/64 {
			t.Errorf("norm1.linear row %d: %v, want %v", n, mo[n], w)
			break
		}
	}
	for key, name := range map[string]string{"double_blocks.0.img_attn.norm.query_norm.scale": "transformer_blocks.0.norm_q.weight",
		"single_blocks.0.norm.key_norm.scale": "single_transformer_blocks.0.norm_k.weight"} {
		got, _ := vecValues(t, out, name)
		for i, v := range c1.norm[key] {
			if w := dt.Round(float32(v)); got[i] != w {
				t.Errorf("%s[%d] = %v, want the scale %v (replaced, not scaled by the strength)", name, i, got[i], w)
				break
			}
		}
	}
	if _, o := vecValues(t, out, "transformer_blocks.0.norm_k.weight"); !bytes.Equal(o, func() []byte { _, x := vecValues(t, b.q, "transformer_blocks.0.norm_k.weight"); return x }()) {
		t.Errorf("norm_k changed")
	}
	f, err := openQuantized(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.verifyFile(); err != nil {
		t.Errorf("fused file: %v", err)
	}
	f.Close()

	// Removal restores the base byte for byte.
	back := filepath.Join(dir, "back.safetensors")
	if r := fuse(t, FuseOptions{Model: out, Out: back, RemoveAll: true}); !r.Restored {
		t.Errorf("--remove-all: not restored")
	}
	if !bytes.Equal(fileBytes(t, back), fileBytes(t, b.q)) {
		t.Errorf("--remove-all: bytes differ from the base")
	}
	if _, err := os.Stat(back + lora.SidecarSuffix); !os.IsNotExist(err) {
		t.Errorf("sidecar left after --remove-all: %v", err)
	}

	// A plain LoRA then the control LoRA, one after another and at once;
	// a second control LoRA's norm scale wins, and removing it gives the
	// file with the first only.
	plain := namedLoRA{}
	plain.add("double_blocks.0.img_attn.qkv.lora_A.weight", gauss(rng, 2*D, 0.1), 2, D)
	plain.add("double_blocks.0.img_attn.qkv.lora_B.weight", gauss(rng, 3*D*2, 0.05), 3*D, 2)
	pp := plain.write(t, filepath.Join(dir, "plain.safetensors"))
	c2 := newControlLoRA(rng)
	p2 := c2.write(t, filepath.Join(dir, "depth.safetensors"))
	d1, d2, d3 := filepath.Join(dir, "1"), filepath.Join(dir, "2"), filepath.Join(dir, "3")
	for _, d := range []string{d1, d2, d3} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	specs := []LoRASpec{{Path: pp, Strength: 1}, {Path: p1, Strength: s}}
	fuse(t, FuseOptions{Model: b.q, Out: filepath.Join(d1, "x.safetensors"), LoRAs: specs})
	fuse(t, FuseOptions{Model: b.q, Out: filepath.Join(d2, "tmp.safetensors"), LoRAs: specs[:1]})
	fuse(t, FuseOptions{Model: filepath.Join(d2, "tmp.safetensors"), Out: filepath.Join(d2, "x.safetensors"), LoRAs: specs[1:]})
	for _, suffix := range []string{"", lora.SidecarSuffix} {
		if !bytes.Equal(fileBytes(t, filepath.Join(d1, "x.safetensors"+suffix)), fileBytes(t, filepath.Join(d2, "x.safetensors"+suffix))) {
			t.Errorf("at once and one after another differ (x.safetensors%s)", suffix)
		}
	}
	two := filepath.Join(d3, "two.safetensors")
	fuse(t, FuseOptions{Model: filepath.Join(d1, "x.safetensors"), Out: two, LoRAs: []LoRASpec{{Path: p2, Strength: 1}}})
	got, _ := vecValues(t, two, "transformer_blocks.0.norm_q.weight")
	if w := dt.Round(float32(c2.norm["double_blocks.0.img_attn.norm.query_norm.scale"][5])); got[5] != w {
		t.Errorf("second control LoRA: norm_q[5] = %v, want its scale %v", got[5], w)
	}
	fuse(t, FuseOptions{Model: two, Out: filepath.Join(d3, "x.safetensors"), Remove: []string{"depth"}})
	if !bytes.Equal(fileBytes(t, filepath.Join(d3, "x.safetensors")), fileBytes(t, filepath.Join(d1, "x.safetensors"))) {
		t.Errorf("removing the second control LoRA does not give the file with the first")
	}

	// check --lora: the reference gets the same bias deltas.
	only := regexp.MustCompile(`^(transformer_blocks\.0\.qkv_proj|single_transformer_blocks\.0\.(qkv_proj|mlp_fc1|mlp_fc2))$`)
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
	e1 := runCheck(out, []LoRASpec{{Path: p1, Strength: s}})
	if len(e1) != 4 {
		t.Fatalf("check --lora measured %v", e1)
	}
	for l, e := range e1 {
		t.Logf("%-40s check: base %.4f, control LoRA fused %.4f", l, e0[l], e)
		if e > 1.05*e0[l]+1e-3 {
			t.Errorf("%s: check --lora error %.4f, base %.4f", l, e, e0[l])
		}
	}
}

// TestFuseControlHostile: a bias delta of the wrong length, a NaN norm
// scale, a norm scale of no norm in the model: errors that name the file
// and the tensor (the last a warning with AllowUnmatched), nothing
// written.
func TestFuseControlHostile(t *testing.T) {
	b := loraCheckpoint(t, "flux")
	rng := rand.New(rand.NewPCG(63, 64))
	nan := make([]float64, 128)
	nan[5] = math.NaN()
	for _, c := range []struct {
		name, key string
		v         []float64
		want      string
	}{
		{"short bias", "double_blocks.0.img_attn.qkv.lora_B.bias", make([]float64, 383), "shape [383]"},
		{"NaN scale", "double_blocks.0.img_attn.norm.query_norm.scale", nan, "NaN"},
		{"missing norm", "double_blocks.7.img_attn.norm.query_norm.scale", make([]float64, 128), "matching no norm weight"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := newControlLoRA(rng)
			l.add(c.key, c.v, int64(len(c.v)))
			p := l.write(t, filepath.Join(dir, "bad.safetensors"))
			out := filepath.Join(dir, "o.safetensors")
			_, err := FuseLoRA(FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: p, Strength: 1}}, W4A16: W4A16Branch})
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.key) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one naming %s, %s and %q", err, p, c.key, c.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output written: %v", err)
			}
			if c.name == "missing norm" {
				rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: p, Strength: 1}}, AllowUnmatched: true})
				if len(rep.Warnings) == 0 || !strings.Contains(strings.Join(rep.Warnings, "\n"), c.key) {
					t.Errorf("--allow-unmatched: warnings %v", rep.Warnings)
				}
			}
		})
	}
}

// TestFuseControlDiffusers: the same control LoRA in BFL names and
// converted to diffusers names (PEFT to_q/to_k/to_v sharing A, each with
// its rows of the bias; attn.norm_q.weight for query_norm.scale, as
// _convert_bfl_flux_control_lora_to_diffusers writes them) fuses into the
// same tensors, into a checkpoint quantized from BFL names.
func TestFuseControlDiffusers(t *testing.T) {
	const D, r = 128, 2
	dir := t.TempDir()
	b := loraCheckpoint(t, "flux-bfl")
	rng := rand.New(rand.NewPCG(65, 66))
	a, bw, bias, scale := gauss(rng, r*D, 0.1), gauss(rng, 3*D*r, 0.05), gauss(rng, 3*D, 0.25), gauss(rng, D, 1)
	bfl := namedLoRA{}
	bfl.add("double_blocks.0.img_attn.qkv.lora_A.weight", a, r, D)
	bfl.add("double_blocks.0.img_attn.qkv.lora_B.weight", bw, 3*D, r)
	bfl.add("double_blocks.0.img_attn.qkv.lora_B.bias", bias, 3*D)
	bfl.add("double_blocks.0.img_attn.norm.query_norm.scale", scale, D)
	dif := namedLoRA{}
	for i, m := range []string{"to_q", "to_k", "to_v"} {
		p := "transformer.transformer_blocks.0.attn." + m
		dif.add(p+".lora_A.weight", a, r, D)
		dif.add(p+".lora_B.weight", rows(bw, r, i*D, (i+1)*D), D, r)
		dif.add(p+".lora_B.bias", bias[i*D:(i+1)*D], D)
	}
	dif.add("transformer.transformer_blocks.0.attn.norm_q.weight", scale, D)
	var got [2][2]map[string]string
	for i, l := range []namedLoRA{bfl, dif} {
		d := filepath.Join(dir, []string{"bfl", "diffusers"}[i])
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(d, "o.safetensors")
		fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: l.write(t, filepath.Join(d, "c.safetensors")), Strength: 0.8, Name: "c"}}})
		got[i][0], _ = tensorsOf(t, out)
		got[i][1], _ = tensorsOf(t, out+lora.SidecarSuffix)
	}
	for j, what := range []string{"fused file", "sidecar"} {
		if len(got[0][j]) == 0 || !maps.Equal(got[0][j], got[1][j]) {
			t.Errorf("%s: BFL and diffusers names fuse differently", what)
		}
	}
	base, _ := tensorsOf(t, b.q)
	for _, n := range []string{"transformer_blocks.0.qkv_proj.bias", "transformer_blocks.0.norm_q.weight"} {
		if got[1][0][n] == base[n] {
			t.Errorf("%s unchanged", n)
		}
	}
}

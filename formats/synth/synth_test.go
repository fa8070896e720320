package synth

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"testing"

	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

func gen(t *testing.T, opt Options) string {
	t.Helper()
	if opt.Out == "" {
		opt.Out = t.TempDir()
	}
	if opt.Samples == 0 {
		opt.Samples = 32
	}
	if err := Generate(opt); err != nil {
		t.Fatal(err)
	}
	return opt.Out
}

func open(t *testing.T, path string) safetensors.Reader {
	t.Helper()
	r, err := safetensors.OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// floats decodes a tensor of r to float32.
func floats(t *testing.T, r safetensors.Reader, name string) ([]float32, []int64) {
	t.Helper()
	info, ok := r.Info(name)
	if !ok {
		t.Fatalf("no tensor %s", name)
	}
	raw, err := r.Bytes(name)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float32, info.Elems())
	if err := quant.Decode(out, string(info.DType), raw); err != nil {
		t.Fatal(err)
	}
	return out, info.Shape
}

func TestDeterministic(t *testing.T) {
	base := Options{Arch: "flux-dev", Scale: 0.125, Blocks: 1, Seed: 7}
	a := base
	a.Workers = 1
	b := base
	b.Workers = 3
	da, db := gen(t, a), gen(t, b)
	for _, f := range []string{ModelFile, CalibFile} {
		x, err := os.ReadFile(filepath.Join(da, f))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(db, f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			t.Errorf("%s differs between 1 and 3 workers", f)
		}
	}
	c := base
	c.Seed = 8
	dc := gen(t, c)
	x, _ := os.ReadFile(filepath.Join(da, ModelFile))
	y, _ := os.ReadFile(filepath.Join(dc, ModelFile))
	if bytes.Equal(x, y) {
		t.Error("seeds 7 and 8 gave the same model")
	}
}

// TestNamesAndShapes: the model holds exactly the skeleton, in bf16; the
// calibration file holds one entry per source module of the plan, in the
// file's naming.
func TestNamesAndShapes(t *testing.T) {
	for _, tc := range []struct {
		arch, naming string
		wantCalib    []string // a few keys that must be there
	}{
		{"flux-schnell", "bfl", []string{"double_blocks.0.img_attn.qkv", "single_blocks.1.linear2", "single_blocks.0.modulation.lin"}},
		{"flux-dev", "comfyui", []string{"double_blocks.0.txt_mlp.2", "single_blocks.0.linear1"}},
		{"sana", "", []string{"transformer_blocks.0.ff.conv_inverted", "transformer_blocks.1.attn1.to_v"}},
		{"sdxl", "", []string{"mid_block.attentions.0.transformer_blocks.0.attn2.to_q"}},
	} {
		dir := gen(t, Options{Arch: tc.arch, Naming: tc.naming, Scale: 0.125, Blocks: 2, Seed: 1, Samples: 8})
		specs, err := preset.Skeleton(tc.arch, preset.SkeletonOptions{Scale: 0.125, Blocks: 2, Naming: tc.naming})
		if err != nil {
			t.Fatal(err)
		}
		r := open(t, dir)
		names := r.Names()
		if len(names) != len(specs) {
			t.Fatalf("%s: %d tensors, skeleton %d", tc.arch, len(names), len(specs))
		}
		for _, s := range specs {
			info, ok := r.Info(s.Name)
			if !ok || info.DType != safetensors.BF16 || !reflect.DeepEqual(info.Shape, s.Shape) {
				t.Errorf("%s: %s: %+v, want %v bf16", tc.arch, s.Name, info, s.Shape)
			}
		}
		fam, _ := preset.Lookup(tc.arch)
		plan, err := fam.Plan(preset.SkeletonTable(specs), preset.Options{})
		if err != nil {
			t.Fatal(err)
		}
		c := open(t, filepath.Join(dir, CalibFile))
		if c.Metadata()["format"] != CalibFormat {
			t.Errorf("%s: calib metadata %v", tc.arch, c.Metadata())
		}
		want := map[string]bool{}
		for _, l := range plan.Layers {
			for _, s := range l.Sources {
				want[s.Module] = true
			}
		}
		if len(c.Names()) != 3*len(want) {
			t.Errorf("%s: %d calib tensors, want %d", tc.arch, len(c.Names()), 3*len(want))
		}
		for m := range want {
			info, ok := c.Info(m + ".input_samples")
			wi, _ := r.Info(plan.Prefix + m + ".weight")
			if !ok || info.Shape[0] != 8 || info.Shape[1] != wi.Shape[1] {
				t.Errorf("%s: %s.input_samples %+v (weight %v)", tc.arch, m, info, wi.Shape)
			}
			if cnt, _ := c.Bytes(m + ".input_count"); binary.LittleEndian.Uint64(cnt) != tokenCount {
				t.Errorf("%s: %s.input_count %v", tc.arch, m, cnt)
			}
		}
		for _, k := range tc.wantCalib {
			if !want[k] {
				t.Errorf("%s: no calibration for %s", tc.arch, k)
			}
		}
	}
}

// TestOutliersAligned: channels with large activations have small weight
// columns; q, k and v see identical statistics; absmax bounds the samples.
func TestOutliersAligned(t *testing.T) {
	dir := gen(t, Options{Arch: "flux-dev", Scale: 0.125, Blocks: 1, Seed: 3, Samples: 64})
	r := open(t, dir)
	c := open(t, filepath.Join(dir, CalibFile))
	const blk = "transformer_blocks.0."
	amax, _ := floats(t, c, blk+"attn.to_q.input_absmax")
	for _, m := range []string{"attn.to_k", "attn.to_v"} {
		other, _ := floats(t, c, blk+m+".input_absmax")
		if !reflect.DeepEqual(amax, other) {
			t.Errorf("%s absmax differs from to_q's", m)
		}
	}
	samples, sh := floats(t, c, blk+"attn.to_q.input_samples")
	K := int(sh[1])
	for k := range K {
		for s := range int(sh[0]) {
			if math.Abs(float64(samples[s*K+k])) > float64(amax[k]) {
				t.Fatalf("sample %d channel %d = %g above absmax %g", s, k, samples[s*K+k], amax[k])
			}
		}
	}
	w, wsh := floats(t, r, blk+"attn.to_q.weight")
	colMax := make([]float64, K)
	for n := range int(wsh[0]) {
		for k := range K {
			colMax[k] = max(colMax[k], math.Abs(float64(w[n*K+k])))
		}
	}
	medA, medW := median32(amax), median64(colMax)
	outliers := 0
	for k := range K {
		if float64(amax[k]) > 10*float64(medA) {
			outliers++
			if colMax[k] > medW {
				t.Errorf("activation outlier channel %d (absmax %.3g, median %.3g) has weight column max %.3g above the median %.3g",
					k, amax[k], medA, colMax[k], medW)
			}
		}
	}
	if outliers < 2 {
		t.Errorf("%d activation outlier channels, want ≥ 2", outliers)
	}
	maxW := 0.0
	for _, v := range colMax {
		maxW = max(maxW, v)
	}
	if maxW < 3*medW {
		t.Errorf("no weight outlier column: max %.3g, median %.3g", maxW, medW)
	}
}

// TestShiftedInputs: GELU inputs are ≥ −0.17; FLUX's single-block proj_out
// input is attention output (signed) then GELU output.
func TestShiftedInputs(t *testing.T) {
	dir := gen(t, Options{Arch: "flux-schnell", Scale: 0.125, Blocks: 1, Seed: 5, Samples: 64})
	c := open(t, filepath.Join(dir, CalibFile))
	x, sh := floats(t, c, "transformer_blocks.0.ff.net.2.input_samples")
	if m := minOf(x); m < -0.17 {
		t.Errorf("ff.net.2 input min %g < -0.17", m)
	}
	x, sh = floats(t, c, "single_transformer_blocks.0.proj_out.input_samples")
	const D = 384
	K := int(sh[1])
	attnMin, mlpMin := 0.0, 0.0
	for s := range int(sh[0]) {
		for k := range K {
			v := float64(x[s*K+k])
			if k < D {
				attnMin = min(attnMin, v)
			} else {
				mlpMin = min(mlpMin, v)
			}
		}
	}
	if mlpMin < -0.17 || attnMin > -1 {
		t.Errorf("proj_out input min: attention part %g (want < -1), MLP part %g (want ≥ -0.17)", attnMin, mlpMin)
	}
}

// TestSharded: a sharded checkpoint opens through its index and holds the
// same bytes as the single file.
func TestSharded(t *testing.T) {
	one := gen(t, Options{Arch: "qwen-image", Scale: 0.125, Blocks: 2, Seed: 9, Samples: 4})
	three := gen(t, Options{Arch: "qwen-image", Scale: 0.125, Blocks: 2, Seed: 9, Samples: 4, Shards: 3})
	for i := 1; i <= 3; i++ {
		if _, err := os.Stat(filepath.Join(three, "model-0000"+string(rune('0'+i))+"-of-00003.safetensors")); err != nil {
			t.Error(err)
		}
	}
	a, b := open(t, one), open(t, three)
	if !reflect.DeepEqual(a.Names(), b.Names()) {
		t.Fatal("names differ")
	}
	for _, n := range a.Names() {
		x, _ := a.Bytes(n)
		y, err := b.Bytes(n)
		if err != nil || !bytes.Equal(x, y) {
			t.Fatalf("%s differs in the sharded checkpoint (%v)", n, err)
		}
	}
}

func TestBadOptions(t *testing.T) {
	for _, o := range []Options{
		{Arch: "nope"},
		{Arch: "sana", Naming: "bfl"},
		{Arch: "flux-dev", Scale: 2},
		{Arch: "generic"},
		{Arch: "llama", Scale: 0.125, Blocks: 1, Samples: 5000},
	} {
		o.Out = t.TempDir()
		if err := Generate(o); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
}

func median32(v []float32) float32 {
	c := append([]float32(nil), v...)
	sort.Slice(c, func(i, j int) bool { return c[i] < c[j] })
	return c[len(c)/2]
}

func median64(v []float64) float64 {
	c := append([]float64(nil), v...)
	sort.Float64s(c)
	return c[len(c)/2]
}

func minOf(v []float32) float64 {
	m := math.Inf(1)
	for _, x := range v {
		m = min(m, float64(x))
	}
	return m
}

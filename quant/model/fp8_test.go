package model

import (
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant"
)

// TestKeptFP8Widened: a kept tensor stored as FP8 (E4M3 or E5M2) in the
// checkpoint is written in the model's 16-bit type, every value widened
// exactly, and the plan reports the conversion — for a family whose
// loaders cast dtypes (SANA), where nothing else would convert it.
func TestKeptFP8Widened(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "sana", Out: dir, Scale: 0.2, Blocks: 1, Samples: 32, Seed: 11}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, synth.ModelFile)
	for _, dt := range []safetensors.DType{safetensors.F8E4M3, safetensors.F8E5M2} {
		model := filepath.Join(dir, string(dt)+".safetensors")
		const target = "caption_projection.linear_1.weight"
		// Rewrite the checkpoint with target as FP8 codes 0..255 cycled
		// (NaN codes replaced by 0).
		r, err := safetensors.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		var ts []stTensor
		var codes []byte
		for _, n := range r.Names() {
			info, _ := r.Info(n)
			b, _ := r.Bytes(n)
			if n == target {
				info.DType = dt
				b = make([]byte, info.Elems())
				for i := range b {
					c := byte(i % 256)
					v := []float32{0}
					_ = quant.Decode(v, string(dt), []byte{c})
					if v[0] != v[0] || v[0] > 1e30 || v[0] < -1e30 {
						c = 0
					}
					b[i] = c
				}
				codes = b
			}
			ts = append(ts, stTensor{n, info.DType, info.Shape, append([]byte(nil), b...)})
		}
		r.Close()
		writeTensors(t, model, nil, ts)
		opt := fastOptions(model, filepath.Join(dir, synth.CalibFile), filepath.Join(dir, string(dt)+"-q.safetensors"))
		opt.Iters, opt.Search = -1, quant.SearchOff
		rep, err := Quantize(opt)
		if err != nil {
			t.Fatalf("%s: %v", dt, err)
		}
		if c := rep.Plan.Conversions(); c[string(dt)+" → BF16"] != 1 {
			t.Errorf("%s: conversions %v", dt, c)
		}
		out, err := safetensors.Open(opt.Out)
		if err != nil {
			t.Fatal(err)
		}
		info, _ := out.Info(target)
		got, _ := out.Bytes(target)
		if info.DType != safetensors.BF16 {
			t.Fatalf("%s: %s written as %s", dt, target, info.DType)
		}
		want := make([]float32, len(codes))
		if err := quant.Decode(want, string(dt), codes); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(quant.BF16.Encode(want)) {
			t.Errorf("%s: widened values differ", dt)
		}
		out.Close()
	}
}

package model

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/gguf"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant"
)

// stTensor is a tensor to write with writeTensors.
type stTensor struct {
	name  string
	dtype safetensors.DType
	shape []int64
	data  []byte
}

// writeTensors writes ts, with metadata md (may be nil), to path.
func writeTensors(t *testing.T, path string, md map[string]string, ts []stTensor) {
	t.Helper()
	var st []safetensors.Tensor
	for _, x := range ts {
		st = append(st, safetensors.Tensor{Spec: safetensors.Spec{Name: x.name, DType: x.dtype, Shape: x.shape}, Data: x.data})
	}
	if err := safetensors.WriteFile(path, st, md); err != nil {
		t.Fatal(err)
	}
}

// eachTensor calls fn with every tensor of a checkpoint, decoded to float32.
func eachTensor(t *testing.T, path string, fn func(name string, shape []int64, v []float32)) {
	t.Helper()
	r, err := safetensors.OpenCheckpoint(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		b, _ := r.Bytes(n)
		v := make([]float32, info.Elems())
		if err := quant.Decode(v, string(info.DType), b); err != nil {
			t.Fatal(err)
		}
		fn(n, info.Shape, v)
	}
}

// fp8 rounds v to the FP8 dtype (saturating E4M3) after dividing by s and
// returns the codes and the dequantized values code·s in float32.
func fp8(v []float32, dt safetensors.DType, s float32) ([]byte, []float32) {
	codes := make([]byte, len(v))
	deq := make([]float32, len(v))
	for i, x := range v {
		if dt == safetensors.F8E4M3 {
			codes[i] = quant.F32ToE4M3Sat(x / s)
			deq[i] = quant.E4M3ToF32(codes[i]) * s
		} else {
			codes[i] = quant.F32ToE5M2(x / s)
			deq[i] = quant.E5M2ToF32(codes[i]) * s
		}
	}
	return codes, deq
}

func isLinearWeight(name string, shape []int64) bool {
	return strings.HasSuffix(name, ".weight") && len(shape) == 2
}

// fp8Variant writes the synthetic BF16 FLUX at src in one of the forms
// users download (kind: "fp8-e4m3", "fp8-e5m2": every linear weight FP8;
// "scaled-fp8-aio": an all-in-one ComfyUI file, diffusion model under
// model.diffusion_model., scaled FP8 with a scale_weight and scale_input
// per linear, a VAE and two text encoders beside it) and, beside it, the
// F32 checkpoint of its own dequantized weights.
func fp8Variant(t *testing.T, src, dir, kind string) (variant, deq string) {
	var vs, ds []stTensor
	prefix := ""
	if kind == "scaled-fp8-aio" {
		prefix = "model.diffusion_model."
		vs = append(vs, stTensor{prefix + "scaled_fp8", safetensors.F8E4M3, []int64{0}, nil},
			stTensor{"vae.decoder.conv_in.weight", safetensors.BF16, []int64{8, 4}, make([]byte, 64)},
			stTensor{"vae.encoder.conv_in.weight", safetensors.BF16, []int64{8}, make([]byte, 16)},
			stTensor{"text_encoders.clip_l.transformer.text_model.final_layer_norm.weight", safetensors.F16, []int64{16}, make([]byte, 32)},
			stTensor{"text_encoders.t5xxl.transformer.shared.weight", safetensors.F8E4M3, []int64{4, 4}, make([]byte, 16)},
			stTensor{"text_encoders.t5xxl.scaled_fp8", safetensors.F8E4M3, []int64{0}, nil})
	}
	eachTensor(t, src, func(name string, shape []int64, v []float32) {
		if !isLinearWeight(name, shape) {
			vs = append(vs, stTensor{prefix + name, safetensors.BF16, shape, quant.BF16.Encode(v)})
			ds = append(ds, stTensor{name, safetensors.F32, shape, f32Bytes(v)})
			return
		}
		switch kind {
		case "fp8-e4m3", "fp8-e5m2":
			dt := safetensors.F8E4M3
			if kind == "fp8-e5m2" {
				dt = safetensors.F8E5M2
			}
			codes, d := fp8(v, dt, 1)
			vs = append(vs, stTensor{name, dt, shape, codes})
			ds = append(ds, stTensor{name, safetensors.F32, shape, f32Bytes(d)})
		default:
			amax := float32(0)
			for _, x := range v {
				amax = max(amax, float32(math.Abs(float64(x))))
			}
			s := amax / 448
			codes, d := fp8(v, safetensors.F8E4M3, s)
			vs = append(vs, stTensor{prefix + name, safetensors.F8E4M3, shape, codes},
				stTensor{prefix + strings.TrimSuffix(name, ".weight") + ".scale_weight", safetensors.F32, []int64{}, f32Bytes([]float32{s})},
				stTensor{prefix + strings.TrimSuffix(name, ".weight") + ".scale_input", safetensors.F32, []int64{}, f32Bytes([]float32{1})})
			ds = append(ds, stTensor{name, safetensors.F32, shape, f32Bytes(d)})
		}
	})
	variant, deq = filepath.Join(dir, kind+".safetensors"), filepath.Join(dir, kind+"-deq.safetensors")
	writeTensors(t, variant, nil, vs)
	writeTensors(t, deq, nil, ds)
	return variant, deq
}

// bflFLUX writes a synthetic FLUX.1-dev in the BFL naming (as city96's
// GGUFs and ComfyUI files name it), width 256 so that every block linear's
// rows fill whole Q4_K super-blocks.
func bflFLUX(t *testing.T) (dir, model, calib string) {
	dir = t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "flux-dev", Out: dir, Scale: 256.0 / 3072, Blocks: 1, Naming: "bfl", Samples: 48, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	return dir, filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
}

// noFP8OrScales fails when a written file holds an FP8 tensor outside a
// 4-bit layer's scales, a scale tensor, or another component's tensor.
func noFP8OrScales(t *testing.T, path string) {
	t.Helper()
	r, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		if (info.DType == safetensors.F8E4M3 || info.DType == safetensors.F8E5M2) && !strings.HasSuffix(n, "wscales") {
			t.Errorf("%s: %s is %s", path, n, info.DType)
		}
		for _, bad := range []string{"scale_weight", "scale_input", "scaled_fp8", "vae.", "text_encoders.", "model.diffusion_model."} {
			if strings.Contains(n, bad) {
				t.Errorf("%s: tensor %s written", path, n)
			}
		}
	}
}

// TestFP8Inputs: FP8 (E4M3, E5M2) and an all-in-one scaled-FP8 ComfyUI
// checkpoint quantize without any option to the BF16 original's layer
// plan, with exactly the errors of their own dequantized weights, to files
// that pass the loader contracts and hold no FP8, scale or foreign tensor.
func TestFP8Inputs(t *testing.T) {
	dir, src, calib := bflFLUX(t)
	for _, kind := range []string{"fp8-e4m3", "fp8-e5m2", "scaled-fp8-aio"} {
		variant, deq := fp8Variant(t, src, dir, kind)
		run := func(model, out string) *QuantizeReport {
			opt := fastOptions(model, calib, filepath.Join(dir, out))
			opt.Iters, opt.Search = 1, quant.SearchOff
			rep, err := Quantize(opt)
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			return rep
		}
		got, want := run(variant, kind+"-q.safetensors"), run(deq, kind+"-deq-q.safetensors")
		if len(got.Layers) != len(want.Layers) || len(got.Layers) == 0 {
			t.Fatalf("%s: %d layers, dequantized reference %d", kind, len(got.Layers), len(want.Layers))
		}
		for i := range got.Layers {
			g, w := got.Layers[i], want.Layers[i]
			if g.Name != w.Name || g.RelError != w.RelError {
				t.Errorf("%s: layer %s err %v, dequantized reference %s err %v", kind, g.Name, g.RelError, w.Name, w.RelError)
			}
		}
		out := filepath.Join(dir, kind+"-q.safetensors")
		if kind == "scaled-fp8-aio" {
			// check --reference reads the all-in-one scaled file as quantize
			// did: the same errors as against the dequantized checkpoint.
			chk := func(model, ref string) *CheckReport {
				cr, _, err := Check(CheckOptions{Model: model, Reference: ref, Calib: calib, Search: quant.SearchOff, Workers: 2})
				if err != nil {
					t.Fatalf("check %s: %v", ref, err)
				}
				return cr
			}
			a, b := chk(out, variant), chk(filepath.Join(dir, kind+"-deq-q.safetensors"), deq)
			for i := range a.Layers {
				if a.Layers[i].RelError[MethodSVDQuant] != b.Layers[i].RelError[MethodSVDQuant] {
					t.Errorf("check %s: %v vs %v", a.Layers[i].Name, a.Layers[i].RelError, b.Layers[i].RelError)
				}
			}
		}
		noFP8OrScales(t, out)
		checkFileContracts(t, out, unfixed("flux-dev"))
		s := got.Input
		if kind == "scaled-fp8-aio" {
			if len(s.LeftOut) != 3 || s.LeftOut[0].Name != "clip_l" || s.LeftOut[2].Name != "vae" || s.LeftOut[2].Tensors != 2 {
				t.Errorf("%s: left out %+v", kind, s.LeftOut)
			}
			scaled := 0
			eachTensor(t, variant, func(name string, _ []int64, _ []float32) {
				if strings.HasPrefix(name, "model.diffusion_model.") && strings.HasSuffix(name, ".scale_weight") {
					scaled++
				}
			})
			// Every scaled weight dequantized; consumed: its scale_weight and scale_input, and the marker.
			if len(s.Dequant) != 1 || s.Dequant[0].Scheme != "ComfyUI scaled FP8" || s.Dequant[0].Tensors != scaled || s.Dequant[0].Consumed != 2*scaled+1 {
				t.Errorf("%s: dequant %+v, %d scaled weights", kind, s.Dequant, scaled)
			}
			// The VAE comes out as plain safetensors, byte for byte.
			vae := filepath.Join(dir, "vae.safetensors")
			c, err := ExtractComponent(variant, "vae", vae)
			if err != nil || c.Tensors != 2 {
				t.Fatalf("extract: %v %+v", err, c)
			}
			vr, err := safetensors.Open(vae)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(vr.Names(), " ") != "decoder.conv_in.weight encoder.conv_in.weight" {
				t.Errorf("vae names %v", vr.Names())
			}
			vr.Close()
			if _, err := ExtractComponent(variant, "vae", variant); err == nil {
				t.Error("extract onto the input: no error")
			}
		} else if s.Found[strings.ToUpper(strings.Replace(strings.TrimPrefix(kind, "fp8-"), "e", "F8_E", 1))] == 0 {
			t.Errorf("%s: found %v", kind, s.Found)
		}
		// INT4 files hold no F32 tensor: dequantized kept tensors are 16-bit.
		if s.Written["F8_E4M3"] != 0 || s.Written["F8_E5M2"] != 0 || s.Written["F32"] != 0 {
			t.Errorf("%s: written %v", kind, s.Written)
		}
	}
}

// TestScaledFP8Refused: a broken scaled-FP8 file is an error with or
// without --pass-unknown, and a scale tensor is never passed through.
func TestScaledFP8Refused(t *testing.T) {
	dir, src, calib := bflFLUX(t)
	var ts []stTensor
	first := ""
	eachTensor(t, src, func(name string, shape []int64, v []float32) {
		if isLinearWeight(name, shape) && first == "" {
			first = name
			codes, _ := fp8(v, safetensors.F8E4M3, 1)
			ts = append(ts, stTensor{name, safetensors.F8E4M3, shape, codes})
			return
		}
		ts = append(ts, stTensor{name, safetensors.BF16, shape, quant.BF16.Encode(v)})
	})
	for name, extra := range map[string][]stTensor{
		"marker, no scale": {{"scaled_fp8", safetensors.F8E4M3, []int64{0}, nil}},
		"stray scale":      {{"orphan.scale_weight", safetensors.F32, []int64{}, f32Bytes([]float32{1})}},
	} {
		model := filepath.Join(dir, "broken.safetensors")
		writeTensors(t, model, nil, append(append([]stTensor{}, ts...), extra...))
		for _, pass := range []bool{false, true} {
			opt := fastOptions(model, calib, filepath.Join(dir, "out.safetensors"))
			opt.PassUnknown = pass
			_, err := Quantize(opt)
			if err == nil || !strings.Contains(err.Error(), model) || !strings.Contains(err.Error(), "scale") {
				t.Errorf("%s (pass-unknown %v): %v", name, pass, err)
			}
			if _, err := os.Stat(opt.Out); err == nil {
				t.Errorf("%s: output written", name)
			}
		}
	}
}

// ggufFrom writes the checkpoint at src as a city96-style GGUF (BFL
// names, arch flux): typ for every 2-D weight whose rows fill its blocks
// (else Q8_0, else F32), F32 for the rest; typ F16 writes everything F16.
func ggufFrom(t *testing.T, src, path string, typ gguf.Type) {
	var ts []gguf.WTensor
	eachTensor(t, src, func(name string, shape []int64, v []float32) {
		tt := gguf.F32
		data := f32Bytes(v)
		k := shape[len(shape)-1]
		switch {
		case typ == gguf.F16:
			tt, data = gguf.F16, quant.F16.Encode(v)
		case isLinearWeight(name, shape) && typ == gguf.Q4_K && k%256 == 0:
			tt, data = gguf.Q4_K, gguf.EncodeQ4_K(v)
		case isLinearWeight(name, shape) && k%32 == 0:
			tt, data = gguf.Q8_0, gguf.EncodeQ8_0(v)
		}
		ts = append(ts, gguf.WTensor{Name: name, Type: tt, Shape: shape, Data: data})
	})
	var b bytes.Buffer
	if err := gguf.Write(&b, []gguf.KV{{Key: "general.architecture", Value: "flux"}}, ts); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGGUFInputs: GGUF F16, Q8_0 and Q4_K FLUX files quantize to the BF16
// source's layer plan; check against the GGUF (its dequantized weights)
// reports layer errors within 2% of the BF16 source's for F16 and Q8_0;
// Q4_K warns that quantizations stack and reports its own error.
func TestGGUFInputs(t *testing.T) {
	if testing.Short() {
		t.Skip("quantizes and checks four tiny FLUX files")
	}
	dir, src, calib := bflFLUX(t)
	errs := func(model, out string) (*QuantizeReport, map[string]float64) {
		opt := fastOptions(model, calib, filepath.Join(dir, out))
		opt.Iters, opt.Search = 1, quant.SearchOff
		rep, err := Quantize(opt)
		if err != nil {
			t.Fatalf("%s: %v", model, err)
		}
		cr, _, err := Check(CheckOptions{Model: opt.Out, Reference: model, Calib: calib, Search: quant.SearchOff, Workers: 2})
		if err != nil {
			t.Fatalf("check %s: %v", model, err)
		}
		m := map[string]float64{}
		for _, l := range cr.Layers {
			m[l.Name] = l.RelError[MethodSVDQuant]
		}
		return rep, m
	}
	base, baseErr := errs(src, "bf16-q.safetensors")
	for _, typ := range []gguf.Type{gguf.F16, gguf.Q8_0, gguf.Q4_K} {
		path := filepath.Join(dir, typ.String()+".gguf")
		ggufFrom(t, src, path, typ)
		rep, e := errs(path, typ.String()+"-q.safetensors")
		if len(rep.Layers) != len(base.Layers) {
			t.Fatalf("%s: %d layers, BF16 %d", typ, len(rep.Layers), len(base.Layers))
		}
		worst := 0.0
		for name, be := range baseErr {
			ge, ok := e[name]
			if !ok {
				t.Fatalf("%s: layer %s not checked", typ, name)
			}
			worst = math.Max(worst, math.Abs(ge-be)/be)
		}
		t.Logf("%s: worst layer error difference vs BF16 %.2f%%", typ, 100*worst)
		if typ != gguf.Q4_K && worst > 0.02 {
			t.Errorf("%s: a layer's error differs from BF16's by %.1f%% (> 2%%)", typ, 100*worst)
		}
		noFP8OrScales(t, filepath.Join(dir, typ.String()+"-q.safetensors"))
		s := rep.Input
		if s.Format != "gguf" || s.Found[typ.String()] == 0 {
			t.Errorf("%s: input %+v", typ, s)
		}
		if typ == gguf.Q4_K {
			if len(s.Warns) != 1 || !strings.Contains(s.Warns[0], "stacks two quantizations") || len(s.GGUF) == 0 || s.GGUF[0].RelError <= 0 {
				t.Errorf("Q4_K: warnings %v, estimates %+v", s.Warns, s.GGUF)
			}
		} else if len(s.Warns) != 0 {
			t.Errorf("%s: warnings %v", typ, s.Warns)
		}
	}
}

// TestConvertWidensFP8: a quantized file whose 16-bit tensor was stored as
// FP8 (by some other tool) comes out of convert with that tensor widened
// exactly to the file's 16-bit type.
func TestConvertWidensFP8(t *testing.T) {
	model, calib := tinyModel(t)
	dir := t.TempDir()
	q := filepath.Join(dir, "q.safetensors")
	if _, err := Quantize(fastOptions(model, calib, q)); err != nil {
		t.Fatal(err)
	}
	const target = "context_embedder.weight"
	var ts []stTensor
	var codes []byte
	r, err := safetensors.Open(q)
	if err != nil {
		t.Fatal(err)
	}
	md := r.Metadata()
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		b, _ := r.Bytes(n)
		b = append([]byte(nil), b...)
		if n == target {
			v := make([]float32, info.Elems())
			quant.Decode(v, string(info.DType), b)
			codes, _ = fp8(v, safetensors.F8E4M3, 1)
			info.DType, b = safetensors.F8E4M3, codes
		}
		ts = append(ts, stTensor{n, info.DType, info.Shape, b})
	}
	r.Close()
	if codes == nil {
		t.Fatalf("no %s in %s", target, q)
	}
	f8 := filepath.Join(dir, "f8.safetensors")
	writeTensors(t, f8, md, ts)
	conv := filepath.Join(dir, "c.safetensors")
	if _, err := Convert(ConvertOptions{In: f8, Out: conv}); err != nil {
		t.Fatal(err)
	}
	c, err := safetensors.Open(conv)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	info, _ := c.Info(target)
	got, _ := c.Bytes(target)
	want := make([]float32, len(codes))
	for i, x := range codes {
		want[i] = quant.E4M3ToF32(x)
	}
	if info.DType != safetensors.BF16 || !bytes.Equal(got, quant.BF16.Encode(want)) {
		t.Errorf("%s: %s, values widened exactly: %v", target, info.DType, bytes.Equal(got, quant.BF16.Encode(want)))
	}
	noFP8OrScales(t, conv)
}

// TestKeptDequantized16: in a family whose loaders cast dtypes (SANA),
// where nothing else converts a kept tensor, a kept tensor dequantized
// from a GGUF block type (read as F32) is planned in the model's 16-bit
// type and listed as a conversion from its stored type.
func TestKeptDequantized16(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "sana", Out: dir, Scale: 0.2, Blocks: 1, Samples: 16, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	const target = "caption_projection.linear_1.weight"
	var ts []gguf.WTensor
	eachTensor(t, filepath.Join(dir, synth.ModelFile), func(name string, shape []int64, v []float32) {
		w := gguf.WTensor{Name: name, Type: gguf.BF16, Shape: shape, Data: quant.BF16.Encode(v)}
		if name == target {
			w.Type, w.Data = gguf.Q8_0, gguf.EncodeQ8_0(v)
		}
		ts = append(ts, w)
	})
	var b bytes.Buffer
	if err := gguf.Write(&b, nil, ts); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "sana.gguf")
	os.WriteFile(p, b.Bytes(), 0o644)
	plan, r, err := QuantizePlan(PlanOptions{Model: p})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	found := false
	for _, k := range plan.Kept {
		if k.Tensor == target {
			found = true
			if k.DType != safetensors.BF16 || k.SrcDType != safetensors.F32 || k.SrcForm != "Q8_0" {
				t.Errorf("%s planned %s from %s (%q)", target, k.DType, k.SrcDType, k.SrcForm)
			}
		}
	}
	if c := plan.Conversions(); !found || c["Q8_0 → BF16"] != 1 || len(c) != 1 {
		t.Errorf("kept %v, conversions %v", found, c)
	}
}

// TestQwenImageInputs: a second family. A ComfyUI-style Qwen-Image GGUF
// (Q8_0, every name under model.diffusion_model.) and an all-in-one
// Qwen-Image checkpoint (with its VAE and text encoder) plan exactly the
// BF16 original's layers; the GGUF quantizes.
func TestQwenImageInputs(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "qwen-image", Out: dir, Scale: 0.1, Blocks: 1, Samples: 16, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	src, calib := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	var gt []gguf.WTensor
	aio := []stTensor{{"vae.decoder.conv_in.weight", safetensors.BF16, []int64{4}, make([]byte, 8)},
		{"text_encoders.qwen25_7b.transformer.model.norm.weight", safetensors.BF16, []int64{4}, make([]byte, 8)}}
	eachTensor(t, src, func(name string, shape []int64, v []float32) {
		w := gguf.WTensor{Name: "model.diffusion_model." + name, Type: gguf.F32, Shape: shape, Data: f32Bytes(v)}
		if isLinearWeight(name, shape) && shape[1]%32 == 0 {
			w.Type, w.Data = gguf.Q8_0, gguf.EncodeQ8_0(v)
		}
		gt = append(gt, w)
		aio = append(aio, stTensor{"model.diffusion_model." + name, safetensors.BF16, shape, quant.BF16.Encode(v)})
	})
	var b bytes.Buffer
	if err := gguf.Write(&b, []gguf.KV{{Key: "general.architecture", Value: "qwen_image"}}, gt); err != nil {
		t.Fatal(err)
	}
	gp, ap := filepath.Join(dir, "qwen.gguf"), filepath.Join(dir, "qwen-aio.safetensors")
	os.WriteFile(gp, b.Bytes(), 0o644)
	writeTensors(t, ap, nil, aio)
	plan := func(model string) *Plan {
		p, r, err := QuantizePlan(PlanOptions{Model: model})
		if err != nil {
			t.Fatalf("%s: %v", model, err)
		}
		r.Close()
		return p
	}
	base := plan(src)
	for _, m := range []string{gp, ap} {
		p := plan(m)
		if p.Family != "qwen-image" || len(p.Layers) != len(base.Layers) || len(p.Kept) != len(base.Kept) {
			t.Fatalf("%s: family %s, %d layers %d kept; BF16 %d, %d", m, p.Family, len(p.Layers), len(p.Kept), len(base.Layers), len(base.Kept))
		}
		for i := range p.Layers {
			if p.Layers[i].Name != base.Layers[i].Name || p.Layers[i].N != base.Layers[i].N || p.Layers[i].K != base.Layers[i].K {
				t.Errorf("%s: layer %d %s, BF16 %s", m, i, p.Layers[i].Name, base.Layers[i].Name)
			}
			// Q8_0 stores 8.5 bits a weight: the GGUF's layers read fewer bytes.
			if m == gp && p.Layers[i].InBytes >= base.Layers[i].InBytes {
				t.Errorf("%s: layer %s reads %d bytes, BF16 %d", m, p.Layers[i].Name, p.Layers[i].InBytes, base.Layers[i].InBytes)
			}
		}
	}
	if s := plan(ap).InputSummary(); len(s.LeftOut) != 2 || s.LeftOut[0].Name != "qwen25_7b" || s.LeftOut[1].Name != "vae" {
		t.Errorf("all-in-one left out %+v", s.LeftOut)
	}
	// inspect lists the GGUF as stored: Q8_0 weights, 34 bytes per 32.
	ins, err := Inspect(gp, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	q8 := 0
	for _, e := range ins.Tensors {
		if e.DType == "Q8_0" {
			q8++
			if e.ReadAs != "F32" || e.Bytes*32 != 34*e.Shape[0]*e.Shape[1] {
				t.Errorf("inspect %s: read as %q, %d bytes for %v", e.Name, e.ReadAs, e.Bytes, e.Shape)
			}
		}
	}
	if q8 == 0 || ins.Format != "gguf" || ins.Found["Q8_0"] != q8 {
		t.Errorf("inspect: %d Q8_0 tensors, format %s, found %v", q8, ins.Format, ins.Found)
	}
	opt := fastOptions(gp, calib, filepath.Join(dir, "qwen-q.safetensors"))
	opt.Iters, opt.Search = 1, quant.SearchOff
	rep, err := Quantize(opt)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Input.Found["Q8_0"] == 0 || rep.Input.Written["F32"] != 0 {
		t.Errorf("found %v written %v", rep.Input.Found, rep.Input.Written)
	}
	noFP8OrScales(t, opt.Out)
}

package model

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant"
)

// TestT5Family: synth t5-xxl → quantize → the file holds nunchaku's
// W4Linear tensors (qweight I16 [N/4, K], scales / scaled_zeros
// [ceil_num_groups(K, 128), N]), both embedding names, the T5Config and
// model_class; check passes with the svdquant error equal to the group-128
// round-to-nearest baseline it recomputes; the file satisfies the
// nunchaku-python and ComfyUI contracts (planned and written), converts
// to each without change, inspects as w4a16g128 layers and unpacks to the
// codes, scales and zeros of QuantizeWeightOnlyGroup on the reference;
// gpu-check and --precision nvfp4 are refused with a reason.
func TestT5Family(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "t5-xxl", Out: dir, Scale: 0.0625, Blocks: 2, Samples: 32, Seed: 9}); err != nil {
		t.Fatal(err)
	}
	src, cal := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	out := filepath.Join(dir, "t5-w4.safetensors")
	opt := fastOptions(src, cal, out)
	plan, r, err := QuantizePlan(opt.PlanOptions)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	vs, err := plan.Verdicts("svdq test")
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 2 {
		t.Fatalf("%d verdicts", len(vs))
	}
	for _, v := range vs {
		if !v.Loads {
			t.Errorf("planned file does not load in %s: %q", v.Engine, v.Problems)
		}
	}
	rep, err := Quantize(opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Layers) != 14 || rep.Totals.Kept != 8 {
		t.Fatalf("%d layers, %d kept", len(rep.Layers), rep.Totals.Kept)
	}
	for _, l := range rep.Layers {
		// (synth's weights carry its activations' outlier columns, which
		// weight-only min/max groups do not absorb: errors are large.)
		if l.Precision != "w4a16g128" || l.Rank != 0 || !(l.RelError > 0 && l.RelError < 1) {
			t.Errorf("report %+v", l)
		}
	}

	// The file.
	f, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	const D, F = 256, 640 // 4096, 10240 at scale 1/16
	for name, want := range map[string]string{
		"encoder.block.1.layer.0.SelfAttention.q.qweight":      "I16 [64 256]",
		"encoder.block.1.layer.0.SelfAttention.q.scales":       "BF16 [8 256]",
		"encoder.block.1.layer.0.SelfAttention.q.scaled_zeros": "BF16 [8 256]",
		"encoder.block.0.layer.1.DenseReluDense.wi_0.qweight":  "I16 [160 256]",
		"encoder.block.0.layer.1.DenseReluDense.wo.qweight":    "I16 [64 640]",
		"encoder.block.0.layer.1.DenseReluDense.wo.scales":     "BF16 [8 256]",
		"encoder.embed_tokens.weight":                          "BF16 [32128 256]",
		"encoder.block.0.layer.0.layer_norm.weight":            "BF16 [256]",
	} {
		info, ok := f.Info(name)
		if got := string(info.DType) + " " + shapeStr(info.Shape); !ok || got != want {
			t.Errorf("%s: %s, want %s", name, got, want)
		}
	}
	for _, n := range f.Names() {
		if strings.HasSuffix(n, ".bias") || strings.HasSuffix(n, "SelfAttention.q.weight") || strings.HasSuffix(n, "wo.weight") {
			t.Errorf("unexpected tensor %s", n)
		}
	}
	a, _ := f.Bytes("shared.weight")
	b, _ := f.Bytes("encoder.embed_tokens.weight")
	if string(a) != string(b) {
		t.Error("encoder.embed_tokens.weight is not shared.weight")
	}
	md := f.Metadata()
	if md[nunchaku.MetaModelClass] != "NunchakuT5EncoderModel" {
		t.Errorf("model_class %q", md[nunchaku.MetaModelClass])
	}
	if qc, ok := md[nunchaku.MetaQuantizationConfig]; ok {
		t.Errorf("quantization_config %s in a file without W4A4 layers", qc)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(md[nunchaku.MetaConfig]), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["d_model"] != float64(D) || cfg["d_ff"] != float64(F) || cfg["num_layers"] != 2.0 || cfg["num_heads"] != 4.0 ||
		cfg["d_kv"] != 64.0 || cfg["feed_forward_proj"] != "gated-gelu" {
		t.Errorf("config %v", cfg)
	}
	meta, err := nunchaku.ParseMeta(md[nunchaku.MetaSVDQ])
	if err != nil {
		t.Fatal(err)
	}
	for _, lm := range meta.Layers {
		if lm.Kind != nunchaku.KindW4A16G128 || lm.Group != 128 || lm.Chunks != 0 || lm.SHA256 == nunchaku.PlaceholderHash {
			t.Errorf("meta %+v", lm)
		}
	}
	f.Close()
	checkFileContracts(t, out, engine.For("t5-xxl"))

	// check: the svdquant error is the group-128 round-to-nearest baseline.
	crep, _, err := Check(CheckOptions{Model: out, Reference: src, Calib: cal, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !crep.Passed || len(crep.Layers) != 14 {
		t.Fatalf("check: passed %v, %d layers", crep.Passed, len(crep.Layers))
	}
	for _, l := range crep.Layers {
		e, b := l.RelError[MethodSVDQuant], l.RelError[MethodW4A16]
		if l.Precision != "w4a16g128" || l.Integrity != IntegrityOK || len(l.RelError) != 2 || math.Abs(e-b) > 1e-6*b {
			t.Errorf("check %+v", l)
		}
	}

	// unpack: what QuantizeWeightOnlyGroup makes of the reference.
	ures, err := Unpack(UnpackOptions{Model: out, Out: filepath.Join(dir, "unpacked")})
	if err != nil {
		t.Fatal(err)
	}
	u, err := safetensors.Open(ures.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	ref, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	for _, l := range ures.Layers {
		if l.Kind != "w4a16g128" || l.Group != 128 {
			t.Fatalf("unpacked %+v", l)
		}
	}
	for _, name := range []string{"encoder.block.1.layer.1.DenseReluDense.wo", "encoder.block.0.layer.0.SelfAttention.v"} {
		raw, _ := ref.Bytes(name + ".weight")
		info, _ := ref.Info(name + ".weight")
		n, k := int(info.Shape[0]), int(info.Shape[1])
		w := make([]float32, n*k)
		if err := quant.Decode(w, string(info.DType), raw); err != nil {
			t.Fatal(err)
		}
		want := quant.QuantizeWeightOnlyGroup(w, n, k, 128, nil, quant.BF16)
		codes, _ := u.Bytes(name + ".codes")
		if string(codes) != string(want.Codes) {
			t.Errorf("%s: unpacked codes differ from QuantizeWeightOnlyGroup's", name)
		}
		for _, s := range []struct {
			suffix string
			v      []float32
		}{{"scales", want.Scales}, {"zeros", want.Zeros}} {
			si, _ := u.Info(name + "." + s.suffix)
			got, _ := u.Bytes(name + "." + s.suffix)
			if shapeStr(si.Shape) != shapeStr([]int64{int64(n), int64(k / 128)}) || string(got) != string(f32Bytes(s.v)) {
				t.Errorf("%s.%s: %v, differs from QuantizeWeightOnlyGroup's", name, s.suffix, si.Shape)
			}
		}
	}

	// inspect and convert.
	in, err := Inspect(out, InspectOptions{Verify: true})
	if err != nil {
		t.Fatal(err)
	}
	if in.Family != "t5-xxl" || len(in.Layers) != 14 || in.Layers[0].Kind != "w4a16g128" || in.Layers[0].Integrity != IntegrityOK || len(in.Engines) != 2 {
		t.Fatalf("inspect: family %s, %d layers %+v, engines %+v", in.Family, len(in.Layers), in.Layers[0], in.Engines)
	}
	for _, v := range in.Engines {
		if !v.Loads {
			t.Errorf("inspect: does not load in %s: %q", v.Engine, v.Problems)
		}
	}
	for _, target := range []string{"all", engine.Python, engine.ComfyUI} {
		conv := filepath.Join(dir, "conv-"+target+".safetensors")
		crep, err := Convert(ConvertOptions{In: out, Out: conv, Target: target})
		if err != nil {
			t.Fatal(err)
		}
		if crep.Renamed != 0 || crep.Layers != 14 || len(crep.Added) != 0 {
			t.Errorf("convert %s: %+v", target, crep)
		}
		for _, v := range crep.Verdicts {
			if !v.Loads {
				t.Errorf("converted for %s: does not load in %s: %q", target, v.Engine, v.Problems)
			}
		}
		x, y := fileTensors(t, out), fileTensors(t, conv)
		if len(x) != len(y) {
			t.Fatalf("convert %s: %d tensors, was %d", target, len(y), len(x))
		}
		for n, d := range x {
			if y[n] != d {
				t.Errorf("convert %s changed %s", target, n)
			}
		}
	}

	// Refusals.
	_, err = GPUCheck(GPUCheckOptions{Model: out, Reference: src, Calib: cal, Rows: 1})
	if err == nil || !strings.Contains(err.Error(), "14 w4a16g128, which this command does not run") {
		t.Errorf("gpu-check: %v", err)
	}
	po := opt.PlanOptions
	po.Precision = quant.NVFP4
	if _, _, err := QuantizePlan(po); err == nil || !strings.Contains(err.Error(), "no W4A4 layer") {
		t.Errorf("nvfp4: %v", err)
	}

	// --gptq keeps group 128 (and the file still loads).
	opt.GPTQ, opt.Out = true, filepath.Join(dir, "t5-gptq.safetensors")
	if _, err := Quantize(opt); err != nil {
		t.Fatal(err)
	}
	checkFileContracts(t, opt.Out, engine.For("t5-xxl"))
	if crep, _, err := Check(CheckOptions{Model: opt.Out, Reference: src, Calib: cal, Workers: 2}); err != nil || !crep.Passed {
		t.Fatalf("check after --gptq: %v", err)
	}
}

func shapeStr(s []int64) string { return fmt.Sprint(s) }

// TestT5FullSize plans T5-XXL at its real size (a sparse checkpoint):
// 168 W4Linear layers of nunchaku's shapes (q [1024 4096] I16 with scales
// [32 4096], wi_0 [2560 4096], wo [1024 10240] with scales [80 4096]), and
// the planned header loads in both engines.
func TestT5FullSize(t *testing.T) {
	path := sparseSkeleton(t, "t5-xxl")
	plan, r, err := QuantizePlan(PlanOptions{Model: path})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if len(plan.Layers) != 168 || plan.HasW4A4() {
		t.Fatalf("%d layers", len(plan.Layers))
	}
	f, err := plan.OutputFile("svdq test")
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"encoder.block.23.layer.0.SelfAttention.q.qweight":       "I16 [1024 4096]",
		"encoder.block.23.layer.0.SelfAttention.q.scales":        "BF16 [32 4096]",
		"encoder.block.0.layer.1.DenseReluDense.wi_0.qweight":    "I16 [2560 4096]",
		"encoder.block.0.layer.1.DenseReluDense.wi_1.scales":     "BF16 [32 10240]",
		"encoder.block.5.layer.1.DenseReluDense.wo.qweight":      "I16 [1024 10240]",
		"encoder.block.5.layer.1.DenseReluDense.wo.scaled_zeros": "BF16 [80 4096]",
		"encoder.embed_tokens.weight":                            "BF16 [32128 4096]",
	} {
		ti, ok := f.Tensors[name]
		if got := ti.DType + " " + shapeStr(ti.Shape); !ok || got != want {
			t.Errorf("%s: %s, want %s", name, got, want)
		}
	}
	vs, err := plan.Verdicts("svdq test")
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		if !v.Loads {
			t.Errorf("does not load in %s: %q", v.Engine, v.Problems)
		}
	}
	if bpw := plan.BitsPerWeight(); math.Abs(bpw-4.25) > 1e-9 {
		t.Errorf("%.4f bits per weight, want 4.25 (4 + 2·16/128)", bpw)
	}
}

// TestT5WithoutMetadata: a W4Linear file without svdq's entries (as
// another tool would write it) is still found by its tensor suffixes:
// inspect guesses the t5 family and says where it loads, check measures it
// against the reference's plan, unpack reads it.
func TestT5WithoutMetadata(t *testing.T) {
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "t5-xxl", Out: dir, Scale: 0.0625, Blocks: 1, Samples: 16, Seed: 2}); err != nil {
		t.Fatal(err)
	}
	src, cal := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	opt := fastOptions(src, cal, filepath.Join(dir, "q.safetensors"))
	if _, err := Quantize(opt); err != nil {
		t.Fatal(err)
	}
	bare := filepath.Join(dir, "bare.safetensors")
	r, err := safetensors.Open(opt.Out)
	if err != nil {
		t.Fatal(err)
	}
	md := r.Metadata()
	delete(md, nunchaku.MetaSVDQ)
	delete(md, MetaCalib)
	var specs []safetensors.Spec
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		specs = append(specs, safetensors.Spec{Name: n, DType: info.DType, Shape: info.Shape})
	}
	w, err := safetensors.Create(bare, specs, md)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range specs {
		b, _ := r.Bytes(s.Name)
		if err := w.Write(s.Name, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r.Close()
	in, err := Inspect(bare, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(in.Layers) != 7 || in.Layers[0].Kind != nunchaku.KindW4A16G128 || in.Layers[0].Source != "tensors" || len(in.Engines) != 2 {
		t.Fatalf("inspect: %+v, engines %+v", in.Layers, in.Engines)
	}
	for _, v := range in.Engines {
		if !v.Loads {
			t.Errorf("does not load in %s: %q", v.Engine, v.Problems)
		}
	}
	rep, _, err := Check(CheckOptions{Model: bare, Reference: src, Calib: cal, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || len(rep.Layers) != 7 || rep.Layers[0].Precision != "w4a16g128" || rep.Layers[0].Integrity != IntegrityAbsent {
		t.Fatalf("check %+v", rep)
	}
	full, _, err := Check(CheckOptions{Model: opt.Out, Reference: src, Calib: cal, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i := range rep.Layers {
		if rep.Layers[i].RelError[MethodSVDQuant] != full.Layers[i].RelError[MethodSVDQuant] {
			t.Errorf("%s: %v without metadata, %v with", rep.Layers[i].Name, rep.Layers[i].RelError, full.Layers[i].RelError)
		}
	}
	if _, err := Unpack(UnpackOptions{Model: bare, Out: filepath.Join(dir, "u")}); err != nil {
		t.Fatal(err)
	}
}

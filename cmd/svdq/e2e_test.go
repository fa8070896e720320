package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model"
)

// TestEndToEnd runs quantize → inspect → check → unpack on the tiny FLUX
// model in both precisions.
func TestEndToEnd(t *testing.T) {
	m, cal := tinyModel(t)
	for _, prec := range []string{"int4", "nvfp4"} {
		t.Run(prec, func(t *testing.T) {
			dir := t.TempDir()
			q := filepath.Join(dir, "q.safetensors")
			report := filepath.Join(dir, "r.json")
			args := append([]string{"quantize", "--model", m, "--calib", cal, "--out", q, "--precision", prec,
				"--report", report}, fastFlags...)
			out, _ := mustRun(t, 0, args...)
			for _, want := range []string{"transformer_blocks.0.qkv_proj", "-> " + prec + " r16", "-> w4a16",
				"bits per weight", "kept 16-bit:", "embedder", "time:",
				// where it loads (the tiny FLUX is too narrow for the C++
				// engine) and the next step
				"loads in: nunchaku-python", "does not load in: nunchaku-cpp", "the engine hard-codes 3072",
				"next: svdq check --model " + q} {
				if !strings.Contains(out, want) {
					t.Errorf("quantize output lacks %q:\n%s", want, out)
				}
			}
			var rep model.QuantizeReport
			data, err := os.ReadFile(report)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(data, &rep); err != nil {
				t.Fatal(err)
			}
			if len(rep.Layers) != 20 || rep.Totals.Layers != 20 || rep.Totals.Kept == 0 {
				t.Errorf("report: %d layers, totals %+v", len(rep.Layers), rep.Totals)
			}
			fromQuantize := map[string]float64{}
			for _, l := range rep.Layers {
				fromQuantize[l.Name] = l.RelError
				if !(l.RelError > 0 && l.RelError < 1) || l.Seconds <= 0 || l.Shape[0] == 0 {
					t.Errorf("report layer %+v", l)
				}
			}

			// inspect: human and JSON.
			out, _ = mustRun(t, 0, "inspect", q)
			for _, want := range []string{"family: flux-dev", "quantized layers (20; sizes and rank from svdq metadata)",
				"transformer_blocks.0.norm1.linear", "quantization_config = "} {
				if !strings.Contains(out, want) {
					t.Errorf("inspect output lacks %q:\n%s", want, out)
				}
			}
			out, _ = mustRun(t, 0, "inspect", "--json", q)
			var in model.Inspection
			if err := json.Unmarshal([]byte(out), &in); err != nil {
				t.Fatalf("inspect --json: %v\n%s", err, out)
			}
			if in.Family != "flux-dev" || len(in.Layers) != 20 || in.Count == 0 {
				t.Errorf("inspect --json: family %q, %d layers, %d tensors", in.Family, len(in.Layers), in.Count)
			}
			for _, l := range in.Layers {
				want := 16
				if l.Kind == nunchaku.KindW4A16 {
					want = 0
				}
				if l.Rank != want || l.Precision != map[bool]string{true: "int4", false: prec}[l.Kind == nunchaku.KindW4A16] {
					t.Errorf("inspect layer %+v", l)
				}
			}

			// check --json: exactly one object with the contract's keys.
			out, _ = mustRun(t, 0, "check", "--model", q, "--reference", m, "--calib", cal, "--smooth-search", "fast",
				"--json", "--max-rel-error", "0.99")
			checkJSON(t, out, prec, fromQuantize)

			// check's table and plots.
			plot := filepath.Join(dir, "errors.svg")
			out, _ = mustRun(t, 0, "check", "--model", q, "--reference", m, "--calib", cal, "--smooth-search", "fast",
				"--layers", `^transformer_blocks\.0\.`, "--plot", plot, "--spectrum", "transformer_blocks.0.mlp_fc2")
			if !strings.Contains(out, "passed: 10 layers") || !strings.Contains(out, "mean of 8 int4/nvfp4 layers") {
				t.Errorf("check table:\n%s", out)
			}
			for _, p := range []string{plot, filepath.Join(dir, "errors-spectrum.svg")} {
				if b, err := os.ReadFile(p); err != nil || !bytes.Contains(b, []byte("<svg")) {
					t.Errorf("plot %s: %v", p, err)
				}
			}

			// A threshold no 4-bit layer meets: exit 1, verdict printed.
			out, _ = mustRun(t, 1, "check", "--model", q, "--reference", m, "--calib", cal, "--smooth-search", "fast",
				"--layers", "mlp_fc2", "--max-rel-error", "1e-6")
			if !strings.Contains(out, "FAILED: 3 layers") {
				t.Errorf("failing check output:\n%s", out)
			}
			_, _ = mustRun(t, 1, "check", "--model", q, "--reference", m, "--calib", cal, "--smooth-search", "fast",
				"--layers", "mlp_fc2", "--max-rel-error", "1e-6", "--json")

			// unpack, and the unpacked tensors pack back to the file's bytes.
			udir := filepath.Join(dir, "unpacked")
			mustRun(t, 0, "unpack", "--model", q, "--out", udir)
			repack(t, q, filepath.Join(udir, model.UnpackFile))
		})
	}
}

// checkJSON validates check's JSON against the contract and the
// errors quantize reported.
func checkJSON(t *testing.T, out, prec string, fromQuantize map[string]float64) {
	t.Helper()
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Fatalf("check --json printed more than one line:\n%s", out)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if !reflect.DeepEqual(keys, []string{"kinds", "layers", "passed", "worst"}) { // kinds: the verdict per kind of layer
		t.Errorf("check --json keys %v", keys)
	}
	var rep model.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || len(rep.Layers) != 20 || rep.Worst.Name == "" {
		t.Errorf("check: passed %v, %d layers, worst %+v", rep.Passed, len(rep.Layers), rep.Worst)
	}
	w4a4 := []string{"lowrank_w4a4", "naive_w4a4", "smoothquant_w4a4", "svdquant", "svdquant_plain", "w4a16"}
	var sumSVDQ, sumNaive float64
	for _, l := range rep.Layers {
		var got []string
		for k := range l.RelError {
			got = append(got, k)
		}
		sort.Strings(got)
		want, wantPrec := w4a4, prec
		if strings.Contains(l.Name, "norm") {
			want, wantPrec = []string{"svdquant", "w4a16"}, "w4a16"
		}
		if !reflect.DeepEqual(got, want) || l.Precision != wantPrec {
			t.Errorf("%s: precision %s keys %v, want %s %v", l.Name, l.Precision, got, wantPrec, want)
		}
		// check's kernel-exact emulation agrees with the error quantize
		// measured with the fast one.
		if q := fromQuantize[l.Name]; math.Abs(l.RelError["svdquant"]-q) > 0.01*q+1e-4 {
			t.Errorf("%s: check error %.5f, quantize reported %.5f", l.Name, l.RelError["svdquant"], q)
		}
		if wantPrec != "w4a16" {
			sumSVDQ += l.RelError["svdquant"]
			sumNaive += l.RelError["naive_w4a4"]
		}
	}
	if !(sumSVDQ < 0.5*sumNaive) {
		t.Errorf("svdquant mean error %.4f is not well below naive W4A4's %.4f", sumSVDQ/16, sumNaive/16)
	}
}

// repack rebuilds every layer from the unpacked file, packs it with the
// nunchaku packer and compares the bytes with the quantized file's.
func repack(t *testing.T, qpath, upath string) {
	t.Helper()
	q, err := safetensors.Open(qpath)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	u, err := safetensors.Open(upath)
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if u.Metadata()["format"] != model.UnpackFormat {
		t.Fatalf("unpacked format %q", u.Metadata()["format"])
	}
	meta, err := nunchaku.ParseMeta(q.Metadata()[nunchaku.MetaSVDQ])
	if err != nil {
		t.Fatal(err)
	}
	var layers []model.UnpackedLayer
	if err := json.Unmarshal([]byte(u.Metadata()["layers"]), &layers); err != nil {
		t.Fatal(err)
	}
	if len(layers) != len(meta.Layers) {
		t.Fatalf("unpacked %d layers, file has %d", len(layers), len(meta.Layers))
	}
	f32 := func(name string) []float32 {
		info, _ := u.Info(name)
		b, err := u.Bytes(name)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]float32, info.Elems())
		if err := quant.Decode(v, string(info.DType), b); err != nil {
			t.Fatal(err)
		}
		return v
	}
	raw := func(name string) []byte {
		b, err := u.Bytes(name)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, l := range layers {
		dt := quant.BF16
		if l.DType == "F16" {
			dt = quant.F16
		}
		var ts []nunchaku.Tensor
		if l.Kind == nunchaku.KindW4A16 {
			lm, _ := meta.Layer(l.Name)
			wo := &quant.WeightOnly{N: l.N, K: l.K, Codes: raw(l.Name + ".codes"), Scales: f32(l.Name + ".scales"),
				Zeros: f32(l.Name + ".zeros"), Bias: f32(l.Name + ".bias"), DType: dt}
			ts, err = nunchaku.PackW4A16(wo, lm.Chunks)
		} else {
			p, _ := quant.ParsePrecision(l.Precision)
			codes := make([]int8, l.N*l.K)
			for i, c := range raw(l.Name + ".codes") {
				codes[i] = int8(c)
			}
			ql := &quant.Layer{Precision: p, N: l.N, K: l.K, R: l.R, Codes: codes, Scales: f32(l.Name + ".scales"),
				TensorScale: f32(l.Name + ".tensor_scale")[0], Smooth: f32(l.Name + ".smooth"), Down: f32(l.Name + ".lora_down"),
				Up: f32(l.Name + ".lora_up"), Bias: f32(l.Name + ".bias"), Unsigned: l.Unsigned, DType: dt}
			ts, err = nunchaku.PackW4A4(ql)
		}
		if err != nil {
			t.Fatalf("%s: %v", l.Name, err)
		}
		for _, tt := range ts {
			want, err := q.Bytes(l.Name + "." + tt.Suffix)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(tt.Data, want) {
				t.Errorf("%s.%s: repacked bytes differ from the file", l.Name, tt.Suffix)
			}
		}
	}
}

// TestDeterministic quantizes twice with different worker counts: the
// files must be byte-identical.
func TestDeterministic(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	var files [][]byte
	for i, workers := range []string{"1", "3"} {
		out := filepath.Join(dir, "q"+workers+".safetensors")
		args := append([]string{"quantize", "--model", m, "--calib", cal, "--out", out}, fastFlags...)
		args = append(args, "--workers", workers)
		mustRun(t, 0, args...)
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, b)
		if i > 0 && !bytes.Equal(files[0], b) {
			t.Fatalf("quantize with --workers %s gave different bytes than with --workers 1", workers)
		}
	}
}

// TestDryRun prints the plan and writes nothing.
func TestDryRun(t *testing.T) {
	m, _ := tinyModel(t)
	out := filepath.Join(t.TempDir(), "q.safetensors")
	o, _ := mustRun(t, 0, "quantize", "--model", m, "--out", out, "--dry-run")
	for _, want := range []string{"family flux-dev", "20 quantized layers", "w4a4", "w4a16",
		"<- transformer_blocks.0.attn.to_q.weight rows [0:128] cols [0:128]", "kept 16-bit:", "embedder", "output: "} {
		if !strings.Contains(o, want) {
			t.Errorf("dry run lacks %q:\n%s", want, o)
		}
	}
	absent(t, out)
}

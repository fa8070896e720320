package main

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// badQuantize runs quantize expecting exit 2, a one-line error containing
// every string of want, and no output file.
func badQuantize(t *testing.T, want []string, args ...string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "q.safetensors")
	for i, a := range args {
		if a == "OUT" {
			args[i] = out
		}
	}
	if !containsArg(args, "--out") {
		args = append(args, "--out", out)
	}
	args = append(append([]string{"quantize"}, fastFlags...), args...) // later flags win
	_, e := mustRun(t, 2, args...)
	oneLine(t, "stderr", e)
	for _, w := range want {
		if !strings.Contains(e, w) {
			t.Errorf("error %q does not name %q", strings.TrimSpace(e), w)
		}
	}
	for _, a := range args {
		if strings.HasSuffix(a, "q.safetensors") {
			absent(t, a)
		}
	}
}

func containsArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

// TestHostileCorpus feeds every file of testdata/safetensors as the model,
// the calibration file and the quantized file of check: each must be a
// one-line error with exit status 2 and no output.
func TestHostileCorpus(t *testing.T) {
	m, cal := tinyModel(t)
	files, err := filepath.Glob("../../testdata/safetensors/*.safetensors")
	if err != nil || len(files) == 0 {
		t.Fatalf("no hostile corpus: %v", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			badQuantize(t, []string{name}, "--model", f, "--calib", cal)
			badQuantize(t, []string{name}, "--model", m, "--calib", f)
			_, e := mustRun(t, 2, "check", "--model", f, "--reference", m, "--calib", cal)
			oneLine(t, "check stderr", e)
			_, e = mustRun(t, 2, "unpack", "--model", f, "--out", filepath.Join(t.TempDir(), "u"))
			oneLine(t, "unpack stderr", e)
			if !strings.HasPrefix(name, "valid-") {
				_, e = mustRun(t, 2, "inspect", f)
				oneLine(t, "inspect stderr", e)
			}
		})
	}
}

// putF32 overwrites element i of a BF16/F32 tensor with v.
func putValue(ts *safetensors.Tensor, i int, v float32) {
	switch ts.DType {
	case safetensors.BF16:
		binary.LittleEndian.PutUint16(ts.Data[2*i:], uint16(math.Float32bits(v)>>16))
	case safetensors.F32:
		binary.LittleEndian.PutUint32(ts.Data[4*i:], math.Float32bits(v))
	}
}

// TestBadInputs covers the bad inputs one by one.
func TestBadInputs(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()

	t.Run("nan-in-quantized-layer", func(t *testing.T) {
		bad := filepath.Join(dir, "nan.safetensors")
		rewrite(t, m, bad, func(ts *safetensors.Tensor) bool {
			if ts.Name == "transformer_blocks.0.attn.to_k.weight" {
				putValue(ts, 300, float32(math.NaN()))
			}
			return true
		})
		badQuantize(t, []string{bad, "transformer_blocks.0.attn.to_k.weight", "[2, 44]"}, "--model", bad, "--calib", cal)
	})
	t.Run("inf-in-kept-tensor", func(t *testing.T) {
		bad := filepath.Join(dir, "inf.safetensors")
		rewrite(t, m, bad, func(ts *safetensors.Tensor) bool {
			if ts.Name == "x_embedder.weight" {
				putValue(ts, 7, float32(math.Inf(-1)))
			}
			return true
		})
		badQuantize(t, []string{bad, "x_embedder.weight", "element 7"}, "--model", bad, "--calib", cal)
	})
	t.Run("calib-missing-layer", func(t *testing.T) {
		bad := filepath.Join(dir, "calib-missing.safetensors")
		rewrite(t, cal, bad, func(ts *safetensors.Tensor) bool {
			return !strings.HasPrefix(ts.Name, "single_transformer_blocks.1.proj_out.")
		})
		badQuantize(t, []string{bad, "single_transformer_blocks.1.out_proj"}, "--model", m, "--calib", bad)
	})
	t.Run("calib-wrong-width", func(t *testing.T) {
		bad := filepath.Join(dir, "calib-width.safetensors")
		rewrite(t, cal, bad, func(ts *safetensors.Tensor) bool {
			if !strings.HasPrefix(ts.Name, "transformer_blocks.0.ff.net.2.") {
				return true
			}
			switch {
			case strings.HasSuffix(ts.Name, ".input_absmax"): // [512] -> [256]
				ts.Shape, ts.Data = []int64{ts.Shape[0] / 2}, ts.Data[:len(ts.Data)/2]
			case strings.HasSuffix(ts.Name, ".input_samples"): // [S, 512] -> [S, 256]
				s, k := ts.Shape[0], ts.Shape[1]
				out := make([]byte, 0, len(ts.Data)/2)
				for r := int64(0); r < s; r++ {
					out = append(out, ts.Data[r*k*2:r*k*2+k]...)
				}
				ts.Shape, ts.Data = []int64{s, k / 2}, out
			}
			return true
		})
		badQuantize(t, []string{bad, "transformer_blocks.0.ff.net.2.input_absmax", "width 256"}, "--model", m, "--calib", bad)
	})
	t.Run("unknown-arch", func(t *testing.T) {
		badQuantize(t, []string{"unknown model family \"sd3\""}, "--model", m, "--calib", cal, "--arch", "sd3")
	})
	t.Run("undetectable-model", func(t *testing.T) {
		badQuantize(t, []string{"valid-mixed.safetensors", "no known model family"},
			"--model", "../../testdata/safetensors/valid-mixed.safetensors", "--calib", cal)
	})
	t.Run("wrong-family", func(t *testing.T) {
		badQuantize(t, []string{m}, "--model", m, "--calib", cal, "--arch", "pixart-sigma")
	})
	t.Run("missing-output-dir", func(t *testing.T) {
		out := filepath.Join(dir, "no-such-dir", "q.safetensors")
		badQuantize(t, []string{out, "does not exist"}, "--model", m, "--calib", cal, "--out", out)
		if _, err := os.Stat(filepath.Dir(out)); err == nil {
			t.Error("quantize created the missing directory")
		}
	})
	t.Run("truncated-model", func(t *testing.T) {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}
		bad := filepath.Join(dir, "truncated.safetensors")
		if err := os.WriteFile(bad, b[:len(b)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		badQuantize(t, []string{bad}, "--model", bad, "--calib", cal)
	})
	t.Run("missing-model", func(t *testing.T) {
		badQuantize(t, []string{"nope.safetensors"}, "--model", filepath.Join(dir, "nope.safetensors"), "--calib", cal)
	})
	t.Run("bad-flags", func(t *testing.T) {
		badQuantize(t, []string{"fp8"}, "--model", m, "--calib", cal, "--precision", "fp8")
		badQuantize(t, []string{"--include"}, "--model", m, "--calib", cal, "--include", "(")
		badQuantize(t, []string{"medium"}, "--model", m, "--calib", cal, "--smooth-search", "medium")
	})
	t.Run("check-calib-missing-layer", func(t *testing.T) {
		q := filepath.Join(dir, "good.safetensors")
		mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", q}, fastFlags...)...)
		bad := filepath.Join(dir, "calib-missing2.safetensors")
		rewrite(t, cal, bad, func(ts *safetensors.Tensor) bool {
			return !strings.HasPrefix(ts.Name, "transformer_blocks.0.norm1.linear.")
		})
		_, e := mustRun(t, 2, "check", "--model", q, "--reference", m, "--calib", bad)
		oneLine(t, "stderr", e)
		if !strings.Contains(e, "transformer_blocks.0.norm1.linear") {
			t.Errorf("check error does not name the layer: %s", e)
		}
		_, e = mustRun(t, 2, "check", "--model", q, "--reference", m, "--calib", cal, "--layers", "nothing-matches")
		oneLine(t, "stderr", e)
	})
}

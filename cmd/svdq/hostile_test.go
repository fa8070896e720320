package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant/model"
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

// TestHostileCorpus runs every file of testdata/safetensors (the corpus of
// formats/safetensors: empty, truncated, header not JSON, header length
// 2⁶³, overlapping tensors, …, and a few valid files that are no model)
// through every command that reads that kind of file, in every role: each
// run must exit 2 with one line naming the file, leave the file as it was
// and write nothing. gpu-check fails on the file before it needs a GPU.
func TestHostileCorpus(t *testing.T) {
	m, cal := tinyModel(t)
	q := tinyQuantized(t)
	files, err := filepath.Glob("../../testdata/safetensors/*.safetensors")
	if err != nil || len(files) == 0 {
		t.Fatalf("no hostile corpus: %v", err)
	}
	lp := filepath.Join(t.TempDir(), "lora.safetensors")
	rng := rand.New(rand.NewPCG(7, 7))
	if err := lora.Write(lp, []lora.Factors{loraFactors(rng, "double_blocks.0.img_attn.qkv", 4, 3*128, 128)},
		lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	// Each reader: the command line with F for the corpus file and OUT for
	// an output path; valid says whether a valid corpus file (no model,
	// calibration or LoRA, but a well-formed safetensors file) is
	// accepted.
	readers := []struct {
		name  string
		args  []string
		valid bool
	}{
		{"quantize --model", append([]string{"quantize", "--model", "F", "--calib", cal, "--out", "OUT"}, fastFlags...), false},
		{"quantize --calib", append([]string{"quantize", "--model", m, "--calib", "F", "--out", "OUT"}, fastFlags...), false},
		{"quantize --dry-run", []string{"quantize", "--model", "F", "--dry-run"}, false},
		{"check --model", []string{"check", "--model", "F", "--reference", m, "--calib", cal, "--smooth-search", "off"}, false},
		{"check --reference", []string{"check", "--model", q, "--reference", "F", "--calib", cal, "--smooth-search", "off"}, false},
		{"check --calib", []string{"check", "--model", q, "--reference", m, "--calib", "F", "--smooth-search", "off"}, false},
		{"gpu-check --model", []string{"gpu-check", "--model", "F", "--reference", m, "--calib", cal}, false},
		{"gpu-check --reference", []string{"gpu-check", "--model", q, "--reference", "F", "--calib", cal}, false},
		{"gpu-check --calib", []string{"gpu-check", "--model", q, "--reference", m, "--calib", "F"}, false},
		{"inspect", []string{"inspect", "F"}, true},
		{"inspect --verify", []string{"inspect", "--verify", "F"}, true},
		{"unpack", []string{"unpack", "--model", "F", "--out", "OUTDIR"}, false},
		{"convert", []string{"convert", "F", "OUT"}, false},
		{"fuse-lora --model", []string{"fuse-lora", "--model", "F", "--lora", lp, "--out", "OUT", "--w4a16", "skip"}, false},
		{"fuse-lora --lora", []string{"fuse-lora", "--model", q, "--lora", "F", "--out", "OUT", "--w4a16", "skip"}, false},
		{"fuse-lora --delta", []string{"fuse-lora", "--model", q, "--delta", "F", "--base", m, "--out", "OUT", "--w4a16", "skip", "--delta-rank", "4"}, false},
		{"fuse-lora --base", []string{"fuse-lora", "--model", q, "--delta", m, "--base", "F", "--out", "OUT", "--w4a16", "skip", "--delta-rank", "4"}, false},
		{"fuse-lora --reference", []string{"fuse-lora", "--model", q, "--lora", lp, "--reference", "F", "--out", "OUT", "--w4a16", "skip"}, true},
		{"fuse-lora --calib", []string{"fuse-lora", "--model", q, "--lora", lp, "--calib", "F", "--out", "OUT", "--w4a16", "skip"}, true},
		{"calib merge (first)", []string{"calib", "merge", "F", cal, "--out", "OUT"}, false},
		{"calib merge (second)", []string{"calib", "merge", cal, "F", "--out", "OUT"}, false},
		{"merge (first)", []string{"merge", "F", tinyPart(t), "--out", "OUT"}, false},
		{"merge (second)", []string{"merge", tinyPart(t), "F", "--out", "OUT"}, false},
	}
	for _, f := range files {
		name := filepath.Base(f)
		t.Run(name, func(t *testing.T) {
			// A copy, so that a command that wrote to its input would be
			// seen without harming the corpus.
			dir := t.TempDir()
			in := filepath.Join(dir, name)
			orig, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(in, orig, 0o644); err != nil {
				t.Fatal(err)
			}
			for _, r := range readers {
				if r.valid && strings.HasPrefix(name, "valid-") {
					continue
				}
				out := filepath.Join(dir, "out.safetensors")
				args := make([]string, len(r.args))
				for i, a := range r.args {
					switch a {
					case "F":
						a = in
					case "OUT":
						a = out
					case "OUTDIR":
						a = filepath.Join(dir, "unpacked")
						out = filepath.Join(a, model.UnpackFile)
					}
					args[i] = a
				}
				o, e, code := svdq(t, args...)
				switch {
				case code != exitBadInput:
					t.Errorf("%s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.name, code, exitBadInput, o, e)
				case !strings.Contains(e, in) && !strings.Contains(e, name):
					t.Errorf("%s: the error does not name %s: %s", r.name, name, e)
				}
				oneLine(t, r.name+" stderr", e)
				if strings.Contains(e, "panic") || strings.Contains(e, "nil pointer") {
					t.Errorf("%s: %s", r.name, e)
				}
				absent(t, out)
				if now, err := os.ReadFile(in); err != nil || !bytes.Equal(now, orig) {
					t.Fatalf("%s changed %s (%v)", r.name, name, err)
				}
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
	t.Run("missing-bias", func(t *testing.T) {
		// Every FLUX checkpoint has attn.to_q.bias: without it the file is
		// refused, naming the file and the tensor, unless --allow-missing-bias.
		bad := filepath.Join(dir, "no-bias.safetensors")
		rewrite(t, m, bad, func(ts *safetensors.Tensor) bool { return ts.Name != "transformer_blocks.0.attn.to_q.bias" })
		before, _ := os.ReadFile(bad)
		badQuantize(t, []string{bad, "transformer_blocks.0.attn.to_q.bias: missing", "--allow-missing-bias"}, "--model", bad, "--calib", cal)
		badQuantize(t, []string{bad, "transformer_blocks.0.attn.to_q.bias"}, "--model", bad, "--calib", cal, "--dry-run")
		if after, _ := os.ReadFile(bad); !bytes.Equal(before, after) {
			t.Error("the model changed")
		}
		out := filepath.Join(dir, "no-bias-q.safetensors")
		mustRun(t, 0, append([]string{"quantize", "--model", bad, "--calib", cal, "--out", out, "--allow-missing-bias"}, fastFlags...)...)
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

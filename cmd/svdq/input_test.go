package main

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/gguf"
	"github.com/svdq/svdq/formats/safetensors"
)

func writeSpecs(t *testing.T, path string, specs []safetensors.Spec, data map[string][]byte) {
	t.Helper()
	var ts []safetensors.Tensor
	for _, s := range specs {
		ts = append(ts, safetensors.Tensor{Spec: s, Data: data[s.Name]})
	}
	if err := safetensors.WriteFile(path, ts, nil); err != nil {
		t.Fatal(err)
	}
}

// TestHostileInputs: broken scaled-FP8 files and bad GGUF files, built in
// code, through every command that reads a model checkpoint, in every
// role: exit 2, one line naming the file (and the tensors), the file left
// as it was, nothing written.
func TestHostileInputs(t *testing.T) {
	_, cal := tinyModel(t)
	q := tinyQuantized(t)
	dir := t.TempDir()
	one := make([]byte, 4)
	binary.LittleEndian.PutUint32(one, math.Float32bits(1))
	files := map[string][]string{} // path → strings the error must hold
	// scale_weight without its weight
	p := filepath.Join(dir, "orphan-scale.safetensors")
	writeSpecs(t, p, []safetensors.Spec{{Name: "scaled_fp8", DType: safetensors.F8E4M3, Shape: []int64{0}},
		{Name: "a.scale_weight", DType: safetensors.F32, Shape: []int64{}}}, map[string][]byte{"a.scale_weight": one})
	files[p] = []string{`"a.scale_weight"`, `"a.weight"`}
	// FP8 weight without its scale under the marker
	p = filepath.Join(dir, "missing-scale.safetensors")
	writeSpecs(t, p, []safetensors.Spec{{Name: "model.diffusion_model.scaled_fp8", DType: safetensors.F8E4M3, Shape: []int64{0}},
		{Name: "model.diffusion_model.a.weight", DType: safetensors.F8E4M3, Shape: []int64{2, 2}},
		{Name: "vae.w", DType: safetensors.BF16, Shape: []int64{1}}},
		map[string][]byte{"model.diffusion_model.a.weight": make([]byte, 4), "vae.w": make([]byte, 2)})
	files[p] = []string{`"a.weight"`, `"a.scale_weight"`}
	// GGUF: a type svdq does not read, and a truncated file
	var b bytes.Buffer
	gguf.Write(&b, nil, []gguf.WTensor{{Name: "a.weight", Type: gguf.Q8_K, Shape: []int64{1, 256}, Data: make([]byte, 292)}})
	p = filepath.Join(dir, "q8k.gguf")
	os.WriteFile(p, b.Bytes(), 0o644)
	files[p] = []string{`"a.weight"`, "Q8_K"}
	p = filepath.Join(dir, "truncated.gguf")
	os.WriteFile(p, b.Bytes()[:70], 0o644)
	files[p] = []string{"past the end"}

	readers := [][]string{
		append([]string{"quantize", "--model", "F", "--calib", cal, "--out", "OUT"}, fastFlags...),
		{"quantize", "--model", "F", "--dry-run"},
		{"quantize", "--model", "F", "--extract-component", "vae", "--out", "OUT"},
		{"check", "--model", q, "--reference", "F", "--calib", cal, "--smooth-search", "off"},
		{"gpu-check", "--model", q, "--reference", "F", "--calib", cal},
		{"inspect", "F"},
	}
	for f, want := range files {
		orig, _ := os.ReadFile(f)
		for _, r := range readers {
			out := filepath.Join(t.TempDir(), "out.safetensors")
			args := make([]string, len(r))
			for i, a := range r {
				switch a {
				case "F":
					a = f
				case "OUT":
					a = out
				}
				args[i] = a
			}
			_, e := mustRun(t, 2, args...)
			oneLine(t, "stderr", e)
			for _, w := range append(want, f) {
				if !strings.Contains(e, w) {
					t.Errorf("%s %s: error %q lacks %s", r[0], filepath.Base(f), strings.TrimSpace(e), w)
				}
			}
			absent(t, out)
			if now, _ := os.ReadFile(f); !bytes.Equal(now, orig) {
				t.Fatalf("%s changed %s", r[0], f)
			}
		}
	}
}

// TestExtractComponent: quantize --extract-component writes the VAE of an
// all-in-one file as plain safetensors; an unknown name lists the
// components; --out may not be the input.
func TestExtractComponent(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "aio.safetensors")
	writeSpecs(t, p, []safetensors.Spec{{Name: "model.diffusion_model.a.weight", DType: safetensors.BF16, Shape: []int64{2}},
		{Name: "vae.decoder.w", DType: safetensors.BF16, Shape: []int64{3}},
		{Name: "text_encoders.t5xxl.w", DType: safetensors.F16, Shape: []int64{1}}},
		map[string][]byte{"model.diffusion_model.a.weight": make([]byte, 4), "vae.decoder.w": {1, 2, 3, 4, 5, 6}, "text_encoders.t5xxl.w": make([]byte, 2)})
	out := filepath.Join(dir, "vae.safetensors")
	o, _ := mustRun(t, 0, "quantize", "--model", p, "--extract-component", "vae", "--out", out)
	if !strings.Contains(o, "component vae (VAE), 1 tensors") && !strings.Contains(o, "component vae (VAE), 1 tensor") {
		t.Errorf("stdout %q", o)
	}
	r, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := r.Bytes("decoder.w")
	if strings.Join(r.Names(), ",") != "decoder.w" || !bytes.Equal(got, []byte{1, 2, 3, 4, 5, 6}) {
		t.Errorf("extracted %v %v", r.Names(), got)
	}
	r.Close()
	_, e := mustRun(t, 2, "quantize", "--model", p, "--extract-component", "unet", "--out", filepath.Join(dir, "x.safetensors"))
	if !strings.Contains(e, "t5xxl") || !strings.Contains(e, "vae") {
		t.Errorf("unknown component: %q", e)
	}
	mustRun(t, 2, "quantize", "--model", p, "--extract-component", "vae", "--out", p)
	dry := filepath.Join(dir, "dry.safetensors")
	mustRun(t, 2, "quantize", "--model", p, "--extract-component", "vae", "--out", dry, "--dry-run")
	absent(t, dry)
	mustRun(t, 2, "quantize", "--model", p, "--extract-component", "vae")
}

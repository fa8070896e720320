package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// torchPython returns a python interpreter that imports torch, or "" (CI has
// none; then the test is skipped).
func torchPython() string {
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-c", "import torch").Run() == nil {
			return p
		}
	}
	return ""
}

// TestDumpCalibRealNames runs examples/dump_calib.py's recorder (through
// examples/dump_calib_tree.py) on torch module trees that carry each
// family's real module names, and quantizes the family's checkpoint with the
// file it writes: every quantized layer must find its calibration rows. The
// BFL-named FLUX checkpoint is quantized with the file recorded from the
// diffusers-named tree, as a user's diffusers pipeline would record it for a
// BFL single-file checkpoint.
func TestDumpCalibRealNames(t *testing.T) {
	py := torchPython()
	if py == "" {
		t.Skip("no python3 with torch")
	}
	script := filepath.Join("..", "..", "examples", "dump_calib_tree.py")
	dir := t.TempDir()
	record := func(model, out string) {
		t.Helper()
		b, err := exec.Command(py, script, model, out, "--steps", "2", "--samples", "8").CombinedOutput()
		if err != nil || !strings.Contains(string(b), "modules named as in") {
			t.Fatalf("dump_calib_tree.py %s: %v\n%s", model, err, b)
		}
	}
	for _, fam := range []string{"flux-dev", "sana", "pixart-sigma", "qwen-image", "sdxl", "z-image"} {
		t.Run(fam, func(t *testing.T) {
			d := filepath.Join(dir, fam)
			mustRun(t, 0, "synth", "--arch", fam, "--scale", "0.05", "--blocks", "1", "--samples", "8", "--out", d)
			calib := filepath.Join(d, "py.safetensors")
			record(filepath.Join(d, "model.safetensors"), calib)
			o, _ := mustRun(t, 0, "quantize", "--model", filepath.Join(d, "model.safetensors"), "--calib", calib,
				"--out", filepath.Join(d, "q.safetensors"), "--smooth-search", "off", "--iters", "0", "--workers", "2")
			if !strings.Contains(o, "wrote ") {
				t.Fatalf("quantize output:\n%s", o)
			}
			if fam == "flux-dev" {
				bfl := filepath.Join(dir, "flux-bfl")
				mustRun(t, 0, "synth", "--arch", fam, "--naming", "bfl", "--scale", "0.05", "--blocks", "1", "--samples", "8", "--out", bfl)
				mustRun(t, 0, "quantize", "--model", filepath.Join(bfl, "model.safetensors"), "--calib", calib,
					"--out", filepath.Join(bfl, "q.safetensors"), "--smooth-search", "off", "--iters", "0", "--workers", "2")
			}
		})
	}
}

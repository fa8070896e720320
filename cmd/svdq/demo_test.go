package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoSmall runs `svdq demo` on the small model and checks the table
// and the kept files.
func TestDemoSmall(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "demo")
	out, _ := mustRun(t, 0, "demo", "--small", "--calib-samples", "24", "--eval-samples", "6", "--rank", "16", "--dir", dir)
	for _, want := range []string{"naive W4A4", "SmoothQuant W4A4", "SVDQuant INT4", "SVDQuant NVFP4", "W4A16",
		"PSNR dB", "SVDQuant INT4 vs W4A16", "smoothing search fast", "total"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	for _, f := range []string{"tinydit.safetensors", "calib.safetensors", "tinydit-int4.safetensors", "tinydit-nvfp4.safetensors"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	// The calibration file the demo wrote is an ordinary svdq-calib/1 file.
	mustRun(t, 0, "calib", "merge", filepath.Join(dir, "calib.safetensors"), "--out", filepath.Join(dir, "copy.safetensors"))
}

func TestDemoBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "--smooth-search", "sometimes"},
		{"demo", "--rank", "0"},
		{"demo", "extra"},
	} {
		if _, e, code := svdq(t, args...); code != exitBadInput {
			t.Errorf("svdq %s: exit %d, want %d (%s)", strings.Join(args, " "), code, exitBadInput, e)
		}
	}
}

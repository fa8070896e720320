package main

import (
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/kernels"
	"github.com/svdq/svdq/quant/model"
)

// TestIntegrityCommands: a quantized file with one packed byte flipped (in
// qweight, wscales, lora_up, smooth or bias) fails check (exit 1, the layer
// named, "integrity":"mismatch" in the JSON), fails gpu-check before any
// CUDA call (exit 1 even without a GPU), fails inspect --verify, and is
// refused by unpack (exit 2); the unflipped file checks (exit 0) with every
// layer "ok".
func TestIntegrityCommands(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	q := filepath.Join(dir, "q.safetensors")
	mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", q}, fastFlags...)...)
	only := []string{"--layers", `^transformer_blocks\.0\.(qkv_proj|mlp_fc2)$`, "--smooth-search", "off"}

	out, _ := mustRun(t, 0, append([]string{"check", "--model", q, "--reference", m, "--calib", cal, "--json"}, only...)...)
	var rep model.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Layers) != 2 || !rep.Passed {
		t.Fatalf("check of the intact file: %s", out)
	}
	for _, l := range rep.Layers {
		if l.Integrity != "ok" {
			t.Errorf("intact %s: integrity %q", l.Name, l.Integrity)
		}
	}
	out, _ = mustRun(t, 0, "inspect", "--verify", q)
	if !strings.Contains(out, "integrity: 20 of 20 layers record the sha256 of their packed tensors; verified: 20 ok, 0 mismatched") {
		t.Errorf("inspect --verify of the intact file:\n%s", out)
	}

	for _, c := range []struct{ layer, suffix string }{
		{"transformer_blocks.0.qkv_proj", "qweight"},
		{"transformer_blocks.0.qkv_proj", "wscales"},
		{"transformer_blocks.0.mlp_fc2", "lora_up"},
		{"transformer_blocks.0.mlp_fc2", "smooth"},
		{"transformer_blocks.0.qkv_proj", "bias"},
	} {
		bad := filepath.Join(dir, c.suffix+".safetensors")
		rewrite(t, q, bad, func(ts *safetensors.Tensor) bool { // the middle byte inverted
			if ts.Name == c.layer+"."+c.suffix {
				ts.Data[len(ts.Data)/2] ^= 0xFF
			}
			return true
		})
		want := c.layer + ": packed bytes differ from those recorded at quantize time: sha256 "

		out, _ := mustRun(t, 1, append([]string{"check", "--model", bad, "--reference", m, "--calib", cal}, only...)...)
		if !strings.Contains(out, want) || !strings.Contains(out, "FAILED: 1 of 2 layers differ from their recorded sha256") {
			t.Errorf("check, %s flipped:\n%s", c.suffix, out)
		}
		out, _ = mustRun(t, 1, append([]string{"check", "--model", bad, "--reference", m, "--calib", cal, "--json"}, only...)...)
		var rep model.CheckReport
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatal(err)
		}
		for _, l := range rep.Layers {
			if got, w := l.Integrity, map[bool]string{true: "mismatch", false: "ok"}[l.Name == c.layer]; got != w || rep.Passed {
				t.Errorf("check --json, %s flipped: %s integrity %q, want %q (passed %v)", c.suffix, l.Name, got, w, rep.Passed)
			}
		}

		out, errOut := mustRun(t, 1, "gpu-check", "--model", bad, "--reference", m, "--calib", cal, "--rows", "16")
		if !strings.Contains(out, want) || !strings.Contains(out, "nothing was run on the GPU") || errOut != "" {
			t.Errorf("gpu-check, %s flipped:\n%s%s", c.suffix, out, errOut)
		}
		out, _ = mustRun(t, 1, "inspect", "--verify", bad)
		if !strings.Contains(out, want) || !strings.Contains(out, "verified: 19 ok, 1 mismatched") {
			t.Errorf("inspect --verify, %s flipped:\n%s", c.suffix, out)
		}
		_, errOut = mustRun(t, 2, "unpack", "--model", bad, "--out", filepath.Join(dir, "u"))
		if !strings.Contains(errOut, "layer "+c.layer+": packed bytes differ") {
			t.Errorf("unpack, %s flipped: %s", c.suffix, errOut)
		}
	}

	// Past the hashes, gpu-check needs a GPU: here it says it has none.
	if d, err := kernels.Open(0); err == nil {
		d.Close()
		return
	} else if !errors.Is(err, kernels.ErrNoDriver) {
		t.Skipf("GPU driver present but unusable: %v", err)
	}
	_, errOut := mustRun(t, 2, "gpu-check", "--model", q, "--reference", m, "--calib", cal, "--rows", "16")
	if !strings.Contains(errOut, "no CUDA driver found") {
		t.Errorf("gpu-check of the intact file without a GPU: %s", errOut)
	}
}

package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestT5Command: synth t5-xxl → quantize → inspect → check → gpu-check on
// the CLI: weight-only lines without a rank, the summary naming the form,
// inspect listing w4a16g128 layers that load in nunchaku's T5 class and
// ComfyUI's V2 loader, check's w4a16g128 mean, and gpu-check refusing a
// file it has nothing to run on (exit 2, before any GPU is opened).
func TestT5Command(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, 0, "synth", "--arch", "t5-xxl", "--scale", "0.0625", "--blocks", "1", "--samples", "32", "--out", dir)
	m, cal, q := filepath.Join(dir, "model.safetensors"), filepath.Join(dir, "calib.safetensors"), filepath.Join(dir, "q.safetensors")
	out, _ := mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", q}, fastFlags...)...)
	for _, want := range []string{"-> w4a16g128 err", "wrote " + q + ": 7 layers w4a16g128, 6 tensors kept 16-bit",
		"token embedding, copied from shared.weight"} {
		if !strings.Contains(out, want) {
			t.Errorf("quantize output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "w4a16g128 r") {
		t.Errorf("a rank printed for a weight-only layer:\n%s", out)
	}
	out, _ = mustRun(t, 0, "inspect", q)
	for _, want := range []string{"family: t5-xxl", "encoder.block.0.layer.1.DenseReluDense.wo    [256 640]      w4a16g128",
		"total: 7 w4a16g128", "loads in: nunchaku-python (nunchaku NunchakuT5EncoderModel.from_pretrained); comfyui ("} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "quantization_config") || strings.Contains(out, "does not load") {
		t.Errorf("inspect:\n%s", out)
	}
	out, _ = mustRun(t, 0, "check", "--model", q, "--reference", m, "--calib", cal)
	if !strings.Contains(out, "mean of 7 w4a16g128 layers") || !strings.Contains(out, "passed: 7 layers") {
		t.Errorf("check output:\n%s", out)
	}
	_, e := mustRun(t, 2, "gpu-check", "--model", q, "--reference", m, "--calib", cal)
	if !strings.Contains(e, "no W4A4 layer: its quantized layers are 7 w4a16g128, which this command does not run") {
		t.Errorf("gpu-check stderr: %s", e)
	}
	_, e = mustRun(t, 2, "quantize", "--model", m, "--calib", cal, "--out", filepath.Join(dir, "x.safetensors"), "--precision", "nvfp4")
	if !strings.Contains(e, "--precision nvfp4 does not apply") {
		t.Errorf("quantize --precision nvfp4: %s", e)
	}
}

package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/kernels"
	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model"
)

// runCLI runs the app with args and returns the exit status and output.
func runCLI(args ...string) (int, string, string) {
	app := newApp()
	var out, errOut bytes.Buffer
	app.Writer, app.ErrWriter = &out, &errOut
	status := run(app, append([]string{"svdq"}, args...))
	return status, out.String(), errOut.String()
}

func TestBenchTargets(t *testing.T) {
	res := []kernels.BenchResult{
		{M: 256, LowRankCost: 0.10, BF16US: 10, SpeedupBF16: 3},
		{M: 4096, LowRankCost: 0.20, BF16US: 10, SpeedupBF16: 1.1},
		{M: 4096, LowRankCost: 0.05, BF16US: 10, SpeedupBF16: 0.9},
		{M: 1024, LowRankCost: 0.01, BF16US: 10, SpeedupBF16: 0.1},
	}
	got := benchTargets(res)
	if got[0].Worst != 0.20 || got[0].Met {
		t.Errorf("low-rank target %+v", got[0])
	}
	if got[1].Worst != 0.9 || got[1].Met {
		t.Errorf("M=4096 target %+v", got[1])
	}
	if got[2].Worst != 3 || !got[2].Met {
		t.Errorf("M=256 target %+v", got[2])
	}
}

// TestBenchGPUBadPrecision: an unknown --precision or --dtype is refused
// before any GPU is looked for (exit 2, the flag named).
func TestBenchGPUBadPrecision(t *testing.T) {
	status, _, stderr := runCLI("bench-gpu", "--precision", "fp8")
	if status != exitBadInput || !strings.Contains(stderr, `--precision "fp8"`) {
		t.Fatalf("bench-gpu --precision fp8: status %d, stderr %q", status, stderr)
	}
	status, _, stderr = runCLI("bench-gpu", "--dtype", "fp32")
	if status != exitBadInput || !strings.Contains(stderr, `--dtype "fp32"`) {
		t.Fatalf("bench-gpu --dtype fp32: status %d, stderr %q", status, stderr)
	}
}

// TestGPUCommandsWithoutGPU checks the message and status where no GPU is.
func TestGPUCommandsWithoutGPU(t *testing.T) {
	if d, err := kernels.Open(0); err == nil {
		d.Close()
		t.Skip("a GPU is present")
	} else if !errors.Is(err, kernels.ErrNoDriver) {
		t.Skipf("GPU driver present but unusable: %v", err)
	}
	status, _, stderr := runCLI("bench-gpu")
	if status != exitBadInput || !strings.Contains(stderr, "no CUDA driver found") {
		t.Fatalf("bench-gpu: status %d, stderr %q", status, stderr)
	}
}

// TestGPUCheckSynth is the end-to-end check on a GPU: a synthetic FLUX.1-dev
// quantized to INT4 passes gpu-check; the same file with one packed qweight
// byte flipped fails it (exit status 1) on its recorded hash, and --flip
// (the GPU's copy only) fails the GPU/emulation comparison.
func TestGPUCheckSynth(t *testing.T) {
	d, err := kernels.Open(0)
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	d.Close()
	dir := t.TempDir()
	if err := synth.Generate(synth.Options{Arch: "flux-dev", Out: dir, Scale: 0.125, Blocks: 1, Samples: 128}); err != nil {
		t.Fatal(err)
	}
	ref, cal := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	q := filepath.Join(dir, "q.safetensors")
	if _, err := model.Quantize(model.QuantizeOptions{PlanOptions: model.PlanOptions{Model: ref, Arch: "flux-dev"},
		Calib: cal, Out: q, Search: quant.SearchOff, Iters: -1, Tool: "svdq test"}); err != nil {
		t.Fatal(err)
	}
	status, out, stderr := runCLI("gpu-check", "--model", q, "--reference", ref, "--calib", cal, "--rows", "64")
	t.Logf("%s%s", out, stderr)
	if status != exitOK {
		t.Fatalf("gpu-check of a good file: status %d", status)
	}

	// A file with a flipped byte corrupts the emulation's input as well, so the
	// comparison cannot see it: the recorded hash does, before the GPU runs.
	// --flip corrupts the GPU's copy only.
	bad := filepath.Join(dir, "bad.safetensors")
	data, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(q)
	if err != nil {
		t.Fatal(err)
	}
	name := "transformer_blocks.0.qkv_proj.qweight"
	info, ok := f.Info(name)
	hdr := f.HeaderSize()
	f.Close()
	if !ok {
		t.Fatalf("%s not in the file", name)
	}
	data[8+hdr+(info.Begin+info.End)/2] ^= 0xFF
	if err := os.WriteFile(bad, data, 0o644); err != nil {
		t.Fatal(err)
	}
	status, out, stderr = runCLI("gpu-check", "--model", bad, "--reference", ref, "--calib", cal, "--rows", "64",
		"--layers", `^transformer_blocks\.0\.qkv_proj$`)
	t.Logf("%s%s", out, stderr)
	if status != exitMismatch || !strings.Contains(out, "transformer_blocks.0.qkv_proj: packed bytes differ") {
		t.Fatalf("gpu-check of a file with a flipped byte: status %d, want %d naming the layer", status, exitMismatch)
	}
	for _, fl := range []string{name, "transformer_blocks.0.qkv_proj.wscales:7", "transformer_blocks.0.qkv_proj.lora_down"} {
		status, out, stderr = runCLI("gpu-check", "--model", q, "--reference", ref, "--calib", cal, "--rows", "64",
			"--layers", `^transformer_blocks\.0\.qkv_proj$`, "--flip", fl)
		t.Logf("--flip %s: %s%s", fl, out, stderr)
		if status != exitMismatch || !strings.Contains(out, "MISMATCH") {
			t.Fatalf("gpu-check --flip %s: status %d, want %d", fl, status, exitMismatch)
		}
	}
	if status, _, stderr = runCLI("gpu-check", "--model", q, "--reference", ref, "--calib", cal,
		"--flip", "transformer_blocks.0.nosuch.qweight"); status != exitBadInput {
		t.Fatalf("--flip of an unknown layer: status %d (%s)", status, stderr)
	}
}

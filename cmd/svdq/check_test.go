package main

import (
	"encoding/json"
	"errors"
	"fmt"
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

// TestCheckKinds: W4A4 and weight-only layers are judged against their own
// limits (--max-rel-error, --max-rel-error-w4a16; 0 or absent: none), each
// kind with its own summary line and JSON entry; a fresh FLUX passes a W4A4
// limit its adaLN layers exceed; one line per layer reaches stderr as it
// finishes, whatever stdout is.
func TestCheckKinds(t *testing.T) {
	m, cal := tinyModel(t)
	q := tinyQuantized(t)
	args := []string{"check", "--model", q, "--reference", m, "--calib", cal, "--smooth-search", "off"}
	out, e := mustRun(t, 0, append(args, "--max-rel-error", "0.2")...)
	for _, want := range []string{
		"w4a4  (int4/nvfp4):    16 layers, worst ", "; limit 0.2 (--max-rel-error): passed\n",
		"w4a16 (weight-only):    4 layers, worst ", "; no limit (--max-rel-error-w4a16)\n",
		"passed: 20 layers\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	lines := strings.Split(strings.TrimSpace(e), "\n")
	if len(lines) != 20 {
		t.Errorf("stderr: want one line per layer, got:\n%s", e)
	}
	for i, l := range lines {
		if !strings.HasPrefix(l, fmt.Sprintf("[%2d/20] ", i+1)) || !strings.Contains(l, " err 0.") {
			t.Errorf("layer line %q", l)
		}
	}

	// A weight-only limit no adaLN layer meets: exit 1, the w4a16 line
	// says so, the w4a4 line still passes.
	out, _ = mustRun(t, 1, append(args, "--max-rel-error", "0.2", "--max-rel-error-w4a16", "0.01")...)
	for _, want := range []string{"limit 0.2 (--max-rel-error): passed\n", "limit 0.01 (--max-rel-error-w4a16): FAILED (4 over)\n",
		"FAILED: 20 layers, 4 over the limit of their kind\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("check output lacks %q:\n%s", want, out)
		}
	}
	out, _ = mustRun(t, 1, append(args, "--max-rel-error", "0.01", "--max-rel-error-w4a16", "0.9", "--json")...)
	var rep model.CheckReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	want := []model.KindResult{
		{Kind: "w4a4", Layers: 16, Limit: 0.01, Over: 16},
		{Kind: "w4a16", Layers: 4, Limit: 0.9, Passed: true},
	}
	if rep.Passed || len(rep.Kinds) != 2 {
		t.Fatalf("check --json: passed %v, kinds %+v", rep.Passed, rep.Kinds)
	}
	for i, k := range rep.Kinds {
		k.Worst = model.Worst{}
		if k != want[i] {
			t.Errorf("kind %d: %+v, want %+v", i, k, want[i])
		}
	}
	_, e = mustRun(t, 2, append(args, "--max-rel-error-w4a16", "-1")...)
	oneLine(t, "negative limit", e)

	help, _ := mustRun(t, 0, "check", "--help")
	for _, f := range []string{"--max-rel-error X", "--max-rel-error-w4a16 X"} {
		i := strings.Index(help, f+" ")
		if i < 0 || !strings.Contains(help[i:i+strings.Index(help[i:], "\n")], "(0: no limit)") {
			t.Errorf("help of %s does not say 0 means no limit:\n%s", f, help)
		}
	}
}

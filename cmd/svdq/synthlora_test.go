package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestSynthLoRAFamilies: for each family with a nunchaku loader but SANA
// (NOTES.md: its attn2.to_k/to_v LoRA does not fuse at the synthetic
// widths), `synth --lora` writes a PEFT LoRA on every attention projection
// that fuse-lora takes whole (no unmatched module), and --remove-all gives
// back the quantized file byte for byte.
func TestSynthLoRAFamilies(t *testing.T) {
	dir := t.TempDir()
	for _, fam := range []string{"flux-dev", "qwen-image", "sdxl", "z-image", "pixart-sigma"} {
		t.Run(fam, func(t *testing.T) {
			d := filepath.Join(dir, fam)
			mustRun(t, 0, "synth", "--arch", fam, "--scale", "0.05", "--blocks", "1", "--samples", "16", "--lora", "4", "--out", d)
			q, f, b := filepath.Join(d, "q.safetensors"), filepath.Join(d, "f.safetensors"), filepath.Join(d, "b.safetensors")
			mustRun(t, 0, "quantize", "--model", filepath.Join(d, "model.safetensors"), "--calib", filepath.Join(d, "calib.safetensors"),
				"--out", q, "--smooth-search", "off", "--iters", "0", "--workers", "2")
			mustRun(t, 0, "fuse-lora", "--model", q, "--lora", filepath.Join(d, "lora.safetensors")+":0.8", "--out", f)
			mustRun(t, 0, "fuse-lora", "--model", f, "--remove-all", "--out", b)
			qb, _ := os.ReadFile(q)
			fb, _ := os.ReadFile(f)
			bb, _ := os.ReadFile(b)
			if bytes.Equal(qb, fb) {
				t.Fatal("the fused file is the base file")
			}
			if len(qb) == 0 || !bytes.Equal(qb, bb) {
				t.Fatalf("--remove-all did not give back %s", q)
			}
		})
	}
}

package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// TestSynthLoRAFamilies: for every family svdq quantizes but the T5 encoder
// (text-encoder LoRAs are reported, not fused), `synth --lora` writes a PEFT
// LoRA on every attention projection that fuse-lora takes whole (no
// unmatched module), and --remove-all gives back the quantized file byte
// for byte. SANA runs at a width other than its preset skeleton's; its
// attn2.to_k/to_v land in the kept cross_attn.kv_linear (checkKV).
func TestSynthLoRAFamilies(t *testing.T) {
	dir := t.TempDir()
	for _, fam := range []string{"flux-dev", "qwen-image", "sdxl", "z-image", "pixart-sigma", "sana", "lumina-next", "hart", "dc-ae", "llama"} {
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
			if fam == "sana" {
				checkKV(t, q, f, filepath.Join(d, "lora.safetensors"), 0.8)
			}
		})
	}
}

// checkKV checks SANA's kept cross_attn.kv_linear after fusing: rows [0, D)
// are attn2.to_k plus its ΔW, rows [D, 2D) attn2.to_v plus its ΔW
// (ΔW = strength·(α/r)·B·A, α = r here), each rounded once to BF16.
func checkKV(t *testing.T, base, fused, loraPath string, strength float64) {
	t.Helper()
	read := func(path, name string) ([]float32, []int64) {
		f, err := safetensors.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		info, ok := f.Info(name)
		if !ok {
			t.Fatalf("%s: no %s", path, name)
		}
		raw, err := f.Bytes(name)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]float32, info.Elems())
		if err := quant.Decode(v, string(info.DType), raw); err != nil {
			t.Fatal(err)
		}
		return v, info.Shape
	}
	const kv = "transformer_blocks.0.cross_attn.kv_linear.weight"
	w0, shape := read(base, kv)
	w1, _ := read(fused, kv)
	D, K := int(shape[0])/2, int(shape[1])
	visible := 0
	for half, mod := range []string{"to_k", "to_v"} {
		a, as := read(loraPath, "transformer.transformer_blocks.0.attn2."+mod+".lora_A.weight")
		b, _ := read(loraPath, "transformer.transformer_blocks.0.attn2."+mod+".lora_B.weight")
		r := int(as[0])
		for _, rc := range [][2]int{{0, 0}, {D - 1, K - 1}, {D / 2, 3}} {
			i, j := rc[0], rc[1]
			var d float64
			for q := range r {
				d += float64(b[i*r+q]) * float64(a[q*K+j])
			}
			row := half*D + i
			want := quant.RoundBF16(float32(float64(w0[row*K+j]) + strength*d))
			_, e := math.Frexp(math.Abs(float64(want)))
			ulp := math.Ldexp(1, e-8) // one BF16 ulp at want
			if got := w1[row*K+j]; math.Abs(float64(got-want)) > ulp {
				t.Errorf("kv_linear[%d, %d] (%s): %v, want %v", row, j, mod, got, want)
			}
			if math.Abs(strength*d) > 2*ulp {
				visible++
			}
		}
	}
	if visible == 0 {
		t.Fatal("no checked ΔW is above the BF16 rounding: the check cannot tell a fused row from an unfused one")
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant/model"
)

// loraFactors returns random factors of one module.
func loraFactors(rng *rand.Rand, module string, r, n, k int) lora.Factors {
	f := lora.Factors{Module: module, Rank: r, N: n, K: k, A: make([]float32, r*k), B: make([]float32, n*r), Alpha: float64(r)}
	for i := range f.A {
		f.A[i] = float32(rng.NormFloat64() * 0.2)
	}
	for i := range f.B {
		f.B[i] = float32(rng.NormFloat64() * 0.05)
	}
	return f
}

// TestFuseLoRACommand: quantize → fuse-lora (a kohya BFL LoRA on the
// diffusers-named checkpoint) → inspect lists it → check --lora passes →
// --remove-all gives the base bytes back; bad LoRAs exit 2 with one line
// naming the problem and leave no file.
func TestFuseLoRACommand(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	q := filepath.Join(dir, "q.safetensors")
	mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", q}, fastFlags...)...)

	rng := rand.New(rand.NewPCG(1, 2))
	const D, H = 128, 512
	mods := []lora.Factors{
		loraFactors(rng, "double_blocks.0.img_attn.qkv", 4, 3*D, D),
		loraFactors(rng, "double_blocks.0.img_mod.lin", 2, 6*D, D),
		loraFactors(rng, "single_blocks.1.linear1", 4, 3*D+H, D),
		loraFactors(rng, "single_blocks.1.linear2", 4, D, D+H),
		loraFactors(rng, "img_in", 2, D, 64),
	}
	lp := filepath.Join(dir, "style.safetensors")
	if err := lora.Write(lp, mods, lora.WriteOptions{Style: lora.StyleKohya, DType: safetensors.BF16}); err != nil {
		t.Fatal(err)
	}
	fused := filepath.Join(dir, "fused.safetensors")
	// The tiny FLUX loads in nunchaku-python, which has no W4A16 branch:
	// auto refuses the adaLN layers, branch writes them with a warning.
	_, e := mustRun(t, 2, "fuse-lora", "--model", q, "--lora", lp+":0.75", "--out", fused)
	if !strings.Contains(e, "nunchaku-python") || !strings.Contains(e, "--w4a16 skip") {
		t.Errorf("auto on adaLN layers: %q", e)
	}
	oneLine(t, "auto", e)
	absent(t, fused)
	out, e := mustRun(t, 0, "fuse-lora", "--model", q, "--lora", lp+":0.75", "--out", fused, "--w4a16", "branch")
	for _, want := range []string{"transformer_blocks.0.qkv_proj", "w4a4   r16 -> r20 (base r16)", "norm1.linear", "w4a16  r0 -> r2",
		"x_embedder.weight", "kept   merged, LoRA rank 0 -> 2", "fused style: style.safetensors, kohya, strength 0.75, 7 layers, rank +24",
		"wrote " + fused, "W4A4 layers stored at one rank, 32 (quantization_config); 11 untouched layers resized",
		"sidecar " + fused + ".lora-base", "does not load in: nunchaku-cpp, nunchaku-python, comfyui"} {
		if !strings.Contains(out, want) {
			t.Errorf("fuse-lora output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(e, "warning: nunchaku-python") || !strings.Contains(e, "--w4a16 branch") {
		t.Errorf("branch warning: %q", e)
	}
	if _, err := os.Stat(fused + ".lora-base"); err != nil {
		t.Error(err)
	}
	out, _ = mustRun(t, 0, "inspect", fused)
	if !strings.Contains(out, "fused LoRAs (1;") || !strings.Contains(out, "style  strength 0.75  kohya  style.safetensors") {
		t.Errorf("inspect does not list the LoRA:\n%s", out)
	}
	out, _ = mustRun(t, 0, "inspect", "--json", fused)
	var in model.Inspection
	if err := json.Unmarshal([]byte(out), &in); err != nil || in.LoRAs == nil || len(in.LoRAs.LoRAs) != 1 {
		t.Errorf("inspect --json: %v %+v", err, in.LoRAs)
	}
	out, _ = mustRun(t, 0, "check", "--model", fused, "--reference", m, "--calib", cal, "--lora", lp+":0.75",
		"--smooth-search", "off", "--max-rel-error", "0.9")
	if !strings.Contains(out, "passed") {
		t.Errorf("check --lora:\n%s", out)
	}
	_, e = mustRun(t, 2, "check", "--model", fused, "--reference", m, "--calib", cal, "--lora", lp+":0.5")
	oneLine(t, "check with another strength", e)

	// Dry run writes nothing; removal restores the base bytes.
	dry := filepath.Join(dir, "dry.safetensors")
	out, _ = mustRun(t, 0, "fuse-lora", "--model", fused, "--remove-all", "--out", dry, "--dry-run")
	if !strings.Contains(out, "dry run: would write") {
		t.Errorf("dry run output:\n%s", out)
	}
	absent(t, dry)
	back := filepath.Join(dir, "back.safetensors")
	out, _ = mustRun(t, 0, "fuse-lora", "--model", fused, "--remove", "style", "--out", back)
	if !strings.Contains(out, "byte for byte") {
		t.Errorf("remove output:\n%s", out)
	}
	a, _ := os.ReadFile(q)
	b, _ := os.ReadFile(back)
	if !bytes.Equal(a, b) {
		t.Error("--remove did not restore the base file")
	}
	absent(t, back+".lora-base")
	// Without its sidecar, the fused file cannot be changed.
	if err := os.Rename(fused+".lora-base", fused+".away"); err != nil {
		t.Fatal(err)
	}
	_, e = mustRun(t, 2, "fuse-lora", "--model", fused, "--remove-all", "--out", back+"2")
	if !strings.Contains(e, fused+".lora-base is missing") {
		t.Errorf("missing sidecar: %q", e)
	}
	oneLine(t, "missing sidecar", e)
	absent(t, back+"2")

	// Bad input: exit 2, one line naming the problem, nothing written.
	bad := filepath.Join(dir, "bad.safetensors")
	misfit := []lora.Factors{loraFactors(rng, "double_blocks.0.img_attn.qkv", 4, 3*D, 96)}
	if err := lora.Write(bad, misfit, lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	te := filepath.Join(dir, "te.safetensors")
	if err := lora.Write(te, append(mods[:1:1], loraFactors(rng, "te1_text_model.encoder.layers.0.mlp.fc1", 2, 8, 8)),
		lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	o := filepath.Join(dir, "o.safetensors")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--lora", bad, "--w4a16", "branch"}, "transformer_blocks.0.qkv_proj"},
		{[]string{"--lora", te, "--w4a16", "branch"}, "lora_unet_te1_text_model_encoder_layers_0_mlp_fc1"},
		{[]string{"--lora", filepath.Join(dir, "missing.safetensors")}, "missing.safetensors"},
		{[]string{"--remove", "style"}, "no LoRA is fused"},
		{[]string{"--lora", lp, "--w4a16", "requant"}, "w4a16 policy"},
	} {
		_, e, code := svdq(t, append([]string{"fuse-lora", "--model", q, "--out", o}, c.args...)...)
		if code != 2 || !strings.Contains(e, c.want) {
			t.Errorf("%v: exit %d, stderr %q (want %q)", c.args, code, e, c.want)
		}
		oneLine(t, strings.Join(c.args, " "), e)
		absent(t, o)
	}
	// --allow-unmatched: a warning on stderr, the rest fused.
	_, e = mustRun(t, 0, "fuse-lora", "--model", q, "--out", o, "--lora", te, "--allow-unmatched", "--w4a16", "branch")
	if !strings.Contains(e, "warning:") || !strings.Contains(e, "te1_text_model") {
		t.Errorf("allow-unmatched stderr %q", e)
	}
}

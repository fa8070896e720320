package main

import (
	"bytes"
	"encoding/json"
	"math"
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

	// A control LoRA whose img_in reads 128 features widens the input
	// (the summary says so, --json has "input": 128); --remove-all
	// narrows it back to the base bytes; an img_in of 96 features exits 2.
	ctl := filepath.Join(dir, "canny.safetensors")
	if err := lora.Write(ctl, []lora.Factors{mods[0], loraFactors(rng, "img_in", 2, D, 128)}, lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	wide := filepath.Join(dir, "canny-fused.safetensors")
	out, _ = mustRun(t, 0, "fuse-lora", "--model", q, "--lora", ctl, "--out", wide)
	if !strings.Contains(out, "the model now takes 128 input channels") || !strings.Contains(out, "FLUX.1 Canny/Depth-dev") {
		t.Errorf("control LoRA summary:\n%s", out)
	}
	out, _ = mustRun(t, 0, "fuse-lora", "--model", wide, "--remove-all", "--out", o+"2", "--json")
	var rep model.FuseReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil || rep.Input != 64 || rep.InputFrom != 128 || !rep.Restored {
		t.Errorf("--remove-all --json: %v input %d from %d, restored %v", err, rep.Input, rep.InputFrom, rep.Restored)
	}
	bad96 := filepath.Join(dir, "img96.safetensors")
	if err := lora.Write(bad96, []lora.Factors{loraFactors(rng, "img_in", 2, D, 96)}, lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	_, e, code := svdq(t, "fuse-lora", "--model", q, "--lora", bad96, "--out", o+"3")
	if code != 2 || !strings.Contains(e, "x_embedder.weight") || !strings.Contains(e, "64 to 128") {
		t.Errorf("img_in of 96 features: exit %d, %q", code, e)
	}
	oneLine(t, "img_in of 96 features", e)
	absent(t, o+"3")
}

// TestFuseLoRADense: the command with a LyCORIS LoKr (--delta-energy,
// --json lists the truncations with the contract's keys), a full
// fine-tune difference (--delta/--base, --delta-rank) and the flag
// errors, each exiting 2 with one line and no file.
func TestFuseLoRADense(t *testing.T) {
	m, _ := tinyModel(t)
	q := tinyQuantized(t)
	dir := t.TempDir()
	const D = 128
	rng := rand.New(rand.NewPCG(5, 6))
	vals := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.2)
		}
		return v
	}
	enc := func(name string, shape []int64, v []float32) safetensors.Tensor {
		return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: safetensors.F32, Shape: shape}, Data: lora.EncodeF32(v)}
	}
	lp := filepath.Join(dir, "lokr.safetensors")
	// double_blocks.0.img_attn.proj [D, D] = w1 [4, 4] ⊗ (w2_a [32, 2]·w2_b [2, 32]).
	if err := safetensors.WriteFile(lp, []safetensors.Tensor{
		enc("lora_unet_double_blocks_0_img_attn_proj.lokr_w1", []int64{4, 4}, vals(16)),
		enc("lora_unet_double_blocks_0_img_attn_proj.lokr_w2_a", []int64{D / 4, 2}, vals(D/4*2)),
		enc("lora_unet_double_blocks_0_img_attn_proj.lokr_w2_b", []int64{2, D / 4}, vals(2*D/4)),
		enc("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", []int64{2, 8}, vals(16)),
		enc("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", []int64{8, 2}, vals(16)),
	}, nil); err != nil {
		t.Fatal(err)
	}
	fused := filepath.Join(dir, "fused.safetensors")
	_, e := mustRun(t, 2, "fuse-lora", "--model", q, "--lora", lp, "--out", fused, "--w4a16", "skip")
	lines := strings.Split(strings.TrimSpace(e), "\n") // the text-encoder warning, then the error
	if len(lines) != 2 || !strings.Contains(lines[0], "warning") || !strings.Contains(lines[1], "--delta-rank") || !strings.Contains(lines[1], "lokr") {
		t.Errorf("no rank rule: %q", e)
	}
	absent(t, fused)
	out, e := mustRun(t, 0, "fuse-lora", "--model", q, "--lora", lp, "--out", fused, "--w4a16", "skip", "--delta-energy", "0.9", "--json")
	var rep struct {
		Truncated []map[string]any `json:"truncated"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Truncated) != 1 || rep.Truncated[0]["layer"] != "transformer_blocks.0.out_proj" || rep.Truncated[0]["lora"] != "lokr" {
		t.Fatalf("truncated %v", rep.Truncated)
	}
	for _, k := range []string{"rank", "full", "energy", "error", "rows"} {
		if _, ok := rep.Truncated[0][k]; !ok {
			t.Errorf("truncation lacks %q: %v", k, rep.Truncated[0])
		}
	}
	if !strings.Contains(e, "text encoder") {
		t.Errorf("text-encoder keys not reported: %q", e)
	}
	back := filepath.Join(dir, "back.safetensors")
	mustRun(t, 0, "fuse-lora", "--model", fused, "--remove-all", "--out", back)
	if a, b := readAll(t, back), readAll(t, q); !bytes.Equal(a, b) {
		t.Error("remove-all did not restore the base")
	}

	// A fine-tune difference: the base itself with one weight changed.
	ft := filepath.Join(dir, "ft.safetensors")
	rewrite(t, m, ft, func(ts *safetensors.Tensor) bool {
		if ts.Name != "transformer_blocks.0.attn.to_out.0.weight" {
			return true
		}
		for i := 0; i < 200; i++ {
			putValue(ts, rng.IntN(D*D), float32(rng.NormFloat64()))
		}
		return true
	})
	out, _ = mustRun(t, 0, "fuse-lora", "--model", q, "--delta", ft, "--base", m, "--name", "ft", "--out", fused, "--w4a16", "skip", "--delta-rank", "8")
	if !strings.Contains(out, "truncated ft on transformer_blocks.0.out_proj") || !strings.Contains(out, "rank 8 of 128") || !strings.Contains(out, "(weights)") {
		t.Errorf("fine-tune output:\n%s", out)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--delta", ft}, "--delta and --base go together"},
		{[]string{"--lora", lp, "--delta-rank", "4", "--delta-energy", "0.5"}, "not both"},
		{[]string{"--lora", lp, "--delta-energy", "1.5"}, "not in (0, 1]"},
		{[]string{"--lora", lp, "--delta-energy", "-0.5"}, "not in (0, 1]"},
		{[]string{"--lora", lp, "--delta-rank", "-3"}, "negative"},
		{[]string{"--delta", ft, "--base", filepath.Join(dir, "missing.safetensors"), "--delta-rank", "2"}, "missing.safetensors"},
		{[]string{"--delta", ft, "--base", m, "--delta-rank", "2", "--out", ft}, "overwrite"},
		{[]string{"--lora", lp, "--delta-rank", "2", "--reference", ft, "--out", ft}, "overwrite the reference"},
		{[]string{"--lora", lp, "--delta-rank", "2", "--calib", ft, "--out", ft}, "overwrite the calibration file"},
	} {
		o := filepath.Join(dir, "o.safetensors")
		args := append([]string{"fuse-lora", "--model", q, "--out", o, "--w4a16", "skip"}, c.args...)
		_, e := mustRun(t, 2, args...)
		oneLine(t, c.want, e)
		if !strings.Contains(e, c.want) {
			t.Errorf("%v: %q lacks %q", c.args, e, c.want)
		}
		absent(t, o)
	}
}

func readAll(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostileDenseLoRAs: malformed LoHa, LoKr and DoRA files (built here:
// a missing factor, factors that do not multiply, a NaN, a magnitude of
// the wrong shape, a Kronecker product of the wrong size) exit 2 with
// one line naming the file from every command that reads LoRAs, and
// write nothing.
func TestHostileDenseLoRAs(t *testing.T) {
	m, cal := tinyModel(t)
	q := tinyQuantized(t)
	dir := t.TempDir()
	const D = 128
	f32 := func(name string, shape []int64, v ...float32) safetensors.Tensor {
		n := int64(1)
		for _, s := range shape {
			n *= s
		}
		if v == nil {
			v = make([]float32, n)
			for i := range v {
				v[i] = 0.01 * float32(i%7)
			}
		}
		return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: safetensors.F32, Shape: shape}, Data: lora.EncodeF32(v)}
	}
	// A fused file for check --lora.
	rng := rand.New(rand.NewPCG(9, 9))
	lp := filepath.Join(dir, "plain.safetensors")
	if err := lora.Write(lp, []lora.Factors{loraFactors(rng, "double_blocks.0.img_attn.proj", 2, D, D)}, lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	fused := filepath.Join(dir, "fused.safetensors")
	mustRun(t, 0, "fuse-lora", "--model", q, "--lora", lp, "--out", fused, "--w4a16", "skip")
	k := "lora_unet_double_blocks_0_img_attn_proj"
	nan := make([]float32, 16)
	nan[3] = float32(math.NaN())
	cases := map[string][]safetensors.Tensor{
		"loha-missing": {f32(k+".hada_w1_a", []int64{D, 2}), f32(k+".hada_w1_b", []int64{2, D}), f32(k+".hada_w2_a", []int64{D, 2})},
		"loha-inner":   {f32(k+".hada_w1_a", []int64{D, 2}), f32(k+".hada_w1_b", []int64{3, D}), f32(k+".hada_w2_a", []int64{D, 2}), f32(k+".hada_w2_b", []int64{2, D})},
		"lokr-nan":     {f32(k+".lokr_w1", []int64{4, 4}, nan...), f32(k+".lokr_w2", []int64{D / 4, D / 4})},
		"lokr-size":    {f32(k+".lokr_w1", []int64{4, 4}), f32(k+".lokr_w2", []int64{D / 4, D / 2})},
		"dora-shape":   {f32(k+".lora_down.weight", []int64{2, D}), f32(k+".lora_up.weight", []int64{D, 2}), f32(k+".dora_scale", []int64{2, D})},
	}
	for name, ts := range cases {
		bad := filepath.Join(dir, name+".safetensors")
		if err := safetensors.WriteFile(bad, ts, nil); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"fuse-lora", "--model", q, "--lora", bad, "--out", "OUT", "--w4a16", "skip", "--delta-rank", "4", "--reference", m},
			{"check", "--model", fused, "--reference", m, "--calib", cal, "--smooth-search", "off", "--lora", bad},
		} {
			if e := failsWritingNothing(t, name, filepath.Join(dir, "out.safetensors"), args...); !strings.Contains(e, bad) {
				t.Errorf("%s %s: error does not name the file: %s", name, args[0], e)
			}
		}
	}
}

// TestControlLoRACommand: a BFL control LoRA (factors, a bias delta, a
// norm scale) fuses from the command line, which lists the rewritten 1-D
// tensors, and --remove-all gives the base back byte for byte; malformed
// ones (a bias delta of the wrong length, a NaN norm scale, a norm scale
// of no norm in the model) exit 2 with one line naming the file (and the
// tensor, where the file itself is bad) from fuse-lora and check --lora,
// and write nothing.
func TestControlLoRACommand(t *testing.T) {
	m, cal := tinyModel(t)
	q := tinyQuantized(t)
	dir := t.TempDir()
	const D = 128
	f32 := func(name string, shape []int64, v []float32) safetensors.Tensor {
		return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: safetensors.F32, Shape: shape}, Data: lora.EncodeF32(v)}
	}
	vals := func(n int, s float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = s * float32(i%5-2)
		}
		return v
	}
	const qkv, norm = "double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.norm.query_norm.scale"
	control := func(bias []float32, scale []float32, normKey string) []safetensors.Tensor {
		return []safetensors.Tensor{f32(qkv+".lora_A.weight", []int64{2, D}, vals(2*D, 0.01)), f32(qkv+".lora_B.weight", []int64{3 * D, 2}, vals(6*D, 0.01)),
			f32(qkv+".lora_B.bias", []int64{int64(len(bias))}, bias), f32(normKey, []int64{int64(len(scale))}, scale)}
	}
	good := filepath.Join(dir, "canny.safetensors")
	if err := safetensors.WriteFile(good, control(vals(3*D, 0.1), vals(D, 0.5), norm), nil); err != nil {
		t.Fatal(err)
	}
	fused := filepath.Join(dir, "fused.safetensors")
	o, _ := mustRun(t, 0, "fuse-lora", "--model", q, "--lora", good, "--out", fused, "--w4a16", "skip")
	for _, w := range []string{"transformer_blocks.0.qkv_proj.bias", "transformer_blocks.0.norm_q.weight", "1-D", "2 biases/norms"} {
		if !strings.Contains(o, w) {
			t.Errorf("fuse-lora output does not show %q:\n%s", w, o)
		}
	}
	back := filepath.Join(dir, "back.safetensors")
	mustRun(t, 0, "fuse-lora", "--model", fused, "--remove-all", "--out", back)
	if !bytes.Equal(readAll(t, back), readAll(t, q)) {
		t.Errorf("--remove-all: not the base's bytes")
	}
	mustRun(t, 0, "check", "--model", fused, "--reference", m, "--calib", cal, "--smooth-search", "off", "--lora", good)
	nan := vals(D, 0.5)
	nan[7] = float32(math.NaN())
	for _, c := range []struct {
		name, tensor string
		ts           []safetensors.Tensor
	}{
		{"short-bias", qkv + ".lora_B.bias", control(vals(3*D-1, 0.1), vals(D, 0.5), norm)},
		{"nan-scale", norm, control(vals(3*D, 0.1), nan, norm)},
		{"missing-norm", "double_blocks.9.img_attn.norm.query_norm.scale", control(vals(3*D, 0.1), vals(D, 0.5), "double_blocks.9.img_attn.norm.query_norm.scale")},
	} {
		bad := filepath.Join(dir, c.name+".safetensors")
		if err := safetensors.WriteFile(bad, c.ts, nil); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"fuse-lora", "--model", q, "--lora", bad, "--out", "OUT", "--w4a16", "skip"},
			{"check", "--model", fused, "--reference", m, "--calib", cal, "--smooth-search", "off", "--lora", bad},
		} {
			e := failsWritingNothing(t, c.name, filepath.Join(dir, "out.safetensors"), args...)
			if !strings.Contains(e, bad) || (args[0] == "fuse-lora" || c.name == "short-bias") && !strings.Contains(e, c.tensor) {
				t.Errorf("%s %s: error does not name the file and tensor %s: %s", c.name, args[0], c.tensor, e)
			}
		}
	}
}

// failsWritingNothing runs svdq with args, "OUT" standing for out,
// expecting exit 2 with a one-line error and nothing at out; it returns
// the error.
func failsWritingNothing(t *testing.T, name, out string, args ...string) string {
	t.Helper()
	for i, a := range args {
		if a == "OUT" {
			args[i] = out
		}
	}
	_, e := mustRun(t, 2, args...)
	oneLine(t, name+" "+args[0], e)
	absent(t, out)
	return e
}

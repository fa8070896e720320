package model

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// inputLoRA is a control LoRA whose img_in reads k input features (the
// tiny FLUX's x_embedder is [128, 64]), rank 2, no alpha, with a bias
// delta on img_in and a factor pair on a double block's qkv: BFL names,
// or with diffusers true the names diffusers'
// _convert_bfl_flux_control_lora_to_diffusers writes (x_embedder,
// attn.to_q).
type inputLoRA struct {
	namedLoRA
	a, b []float64 // img_in's lora_A [2, k], lora_B [128, 2]
}

func newInputLoRA(rng *rand.Rand, k int, diffusers bool) inputLoRA {
	const D, r = 128, 2
	c := inputLoRA{namedLoRA: namedLoRA{}, a: gauss(rng, r*k, 0.1), b: gauss(rng, D*r, 0.05)}
	in, qkv, n := "img_in", "double_blocks.0.img_attn.qkv", 3*D
	if diffusers {
		in, qkv, n = "transformer.x_embedder", "transformer.transformer_blocks.0.attn.to_q", D
	}
	c.add(in+".lora_A.weight", c.a, r, int64(k))
	c.add(in+".lora_B.weight", c.b, D, r)
	c.add(in+".lora_B.bias", gauss(rng, D, 0.25), D)
	c.add(qkv+".lora_A.weight", gauss(rng, r*D, 0.1), r, D)
	c.add(qkv+".lora_B.weight", gauss(rng, n*r, 0.05), int64(n), r)
	return c
}

// delta is s·(B·A)[i, j], in float64, rank terms in order (as the kept
// merge adds them; s = 0.5 and α/r = 1 scale exactly).
func (c inputLoRA) delta(s float64, k, i, j int) float64 {
	d := 0.0
	for r := range 2 {
		d += float64(float32(s*c.b[i*2+r])) * c.a[r*k+j]
	}
	return d
}

// tensorValues decodes a 2-D 16-bit tensor of a file with its shape.
func tensorValues(t *testing.T, path, name string) ([]float32, []int64) {
	t.Helper()
	v, _, shape := tensorData(t, path, name)
	return v, shape
}

func metadataOf(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	return f.Metadata()
}

// TestFuseInputWidening: a control LoRA whose img_in reads 128 features
// widens the tiny FLUX's x_embedder [128, 64] to [128, 128] = round16([W
// | 0] + s·B·A) (checked element by element against the test's own
// arithmetic: base columns W + ΔW, new columns ΔW alone), sets config
// in_channels 128 with out_channels 64 and comfy_config in_channels 32 /
// out_channels 16 (the values of ComfyUI-nunchaku's
// flux.1-canny-dev.json), loads in every engine the base loads in, and
// the report says so; a second control LoRA on the widened file adds
// (ΔW₁ + ΔW₂, no second widening; this one in diffusers names); removing it gives the first file back
// byte for byte, and --remove-all the base, configs included. Diffusers
// and BFL names.
func TestFuseInputWidening(t *testing.T) {
	for _, which := range []string{"flux", "flux-bfl"} {
		t.Run(which, func(t *testing.T) { fuseInputWidening(t, which) })
	}
}

func fuseInputWidening(t *testing.T, which string) {
	const D, s = 128, 0.5
	dt := quant.BF16
	dir := t.TempDir()
	b := loraCheckpoint(t, which)
	xe := "x_embedder.weight"
	if _, shape := tensorValues(t, b.q, xe); len(shape) == 0 {
		t.Fatal("no x_embedder")
	}
	base, bshape := tensorValues(t, b.q, xe)
	if bshape[0] != D || bshape[1] != 64 {
		t.Fatalf("base x_embedder %v, want [128 64]", bshape)
	}
	rng := rand.New(rand.NewPCG(71, 72))
	c1, c2 := newInputLoRA(rng, 128, false), newInputLoRA(rng, 128, true)
	p1, p2 := c1.write(t, filepath.Join(dir, "canny.safetensors")), c2.write(t, filepath.Join(dir, "depth.safetensors"))
	out := filepath.Join(dir, "o.safetensors")
	rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: p1, Strength: s}}})
	if rep.Input != 128 {
		t.Errorf("report input %d, want 128", rep.Input)
	}
	// Every engine loads the base (the architecture the engines hard-code
	// aside: the file is narrower than FLUX.1), and so the widened file.
	for e, p := range fixedFreeVerdicts(t, b.q) {
		if len(p) > 0 {
			t.Fatalf("engine.Check %s of the base: %v", e, p)
		}
	}
	for e, p := range fixedFreeVerdicts(t, out) {
		if len(p) > 0 {
			t.Errorf("engine.Check %s: %v", e, p)
		}
	}
	got, shape := tensorValues(t, out, xe)
	if shape[0] != D || shape[1] != 128 {
		t.Fatalf("x_embedder %v, want [128 128]", shape)
	}
	for _, ij := range [][2]int{{0, 0}, {5, 63}, {127, 17}, {3, 64}, {77, 100}, {127, 127}} {
		i, j := ij[0], ij[1]
		w := 0.0
		if j < 64 {
			w = float64(base[i*64+j])
		}
		want := dt.Round(float32(w + c1.delta(s, 128, i, j)))
		if got[i*128+j] != want {
			t.Errorf("x_embedder[%d, %d] = %v, want %v", i, j, got[i*128+j], want)
		}
	}
	md := metadataOf(t, out)
	var cfg map[string]any
	if err := json.Unmarshal([]byte(md[engine.MetaConfig]), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg["in_channels"] != 128.0 || cfg["out_channels"] != 64.0 {
		t.Errorf("config in_channels %v, out_channels %v, want 128 and 64", cfg["in_channels"], cfg["out_channels"])
	}
	var cc struct {
		ModelConfig map[string]any `json:"model_config"`
	}
	if err := json.Unmarshal([]byte(md[engine.MetaComfyConfig]), &cc); err != nil {
		t.Fatal(err)
	}
	if cc.ModelConfig["in_channels"] != 32.0 || cc.ModelConfig["out_channels"] != 16.0 {
		t.Errorf("comfy_config in_channels %v, out_channels %v, want 32 and 16", cc.ModelConfig["in_channels"], cc.ModelConfig["out_channels"])
	}

	// check --lora measures the quantized layers (x_embedder is a kept
	// tensor: not measured) of the widened file.
	cr, _, err := Check(CheckOptions{Model: out, Reference: b.src, Calib: b.calib, Search: quant.SearchOff, Workers: 2,
		LoRAs: []LoRASpec{{Path: p1, Strength: s}}, Layers: regexp.MustCompile(`^transformer_blocks\.0\.qkv_proj$`)})
	if err != nil {
		t.Fatalf("check --lora: %v", err)
	}
	if len(cr.Layers) != 1 || !(cr.Layers[0].RelError[MethodSVDQuant] < 0.5) {
		t.Errorf("check --lora: %+v", cr.Layers)
	} else {
		t.Logf("check --lora %s: %.4f", cr.Layers[0].Name, cr.Layers[0].RelError[MethodSVDQuant])
	}

	// A second control LoRA adds to the widened input.
	two := filepath.Join(dir, "two.safetensors")
	if r := fuse(t, FuseOptions{Model: out, Out: two, LoRAs: []LoRASpec{{Path: p2, Strength: s}}}); r.Input != 0 {
		t.Errorf("second control LoRA: report input %d, want 0 (already 128)", r.Input)
	}
	g2, shape := tensorValues(t, two, xe)
	if shape[1] != 128 {
		t.Fatalf("two: x_embedder %v", shape)
	}
	for _, ij := range [][2]int{{1, 2}, {9, 70}, {127, 127}} {
		i, j := ij[0], ij[1]
		w := 0.0
		if j < 64 {
			w = float64(base[i*64+j])
		}
		want := dt.Round(float32(w + c1.delta(s, 128, i, j) + c2.delta(s, 128, i, j)))
		if math.Abs(float64(g2[i*128+j]-want)) > math.Abs(float64(want))/128+1e-6 {
			t.Errorf("two: x_embedder[%d, %d] = %v, want %v", i, j, g2[i*128+j], want)
		}
	}
	if metadataOf(t, two)[engine.MetaConfig] != md[engine.MetaConfig] {
		t.Errorf("second control LoRA changed the config")
	}
	back1 := filepath.Join(mkdir(t, dir, "back1"), "o.safetensors") // the record names the sidecar: same base name
	fuse(t, FuseOptions{Model: two, Out: back1, Remove: []string{"depth"}})
	for _, suf := range []string{"", lora.SidecarSuffix} {
		if !bytes.Equal(fileBytes(t, back1+suf), fileBytes(t, out+suf)) {
			t.Errorf("removing the second control LoRA: %s differs from the file with the first", filepath.Base(back1+suf))
		}
	}
	back := filepath.Join(dir, "back.safetensors")
	if r := fuse(t, FuseOptions{Model: two, Out: back, RemoveAll: true}); !r.Restored || r.Input != 64 {
		t.Errorf("--remove-all: restored %v, input %d (want true, 64)", r.Restored, r.Input)
	}
	if !bytes.Equal(fileBytes(t, back), fileBytes(t, b.q)) {
		t.Errorf("--remove-all: bytes differ from the base")
	}

	// A plain LoRA on x_embedder first, then the control LoRA, then the
	// control LoRA out: the plain LoRA's file back byte for byte.
	plain := namedLoRA{}
	plain.add("x_embedder.lora_A.weight", gauss(rng, 2*64, 0.1), 2, 64)
	plain.add("x_embedder.lora_B.weight", gauss(rng, D*2, 0.05), D, 2)
	pp := plain.write(t, filepath.Join(dir, "plain.safetensors"))
	fp := filepath.Join(mkdir(t, dir, "p"), "x.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: fp, LoRAs: []LoRASpec{{Path: pp, Strength: 1}}})
	fpc := filepath.Join(mkdir(t, dir, "pc"), "x.safetensors")
	fuse(t, FuseOptions{Model: fp, Out: fpc, LoRAs: []LoRASpec{{Path: p1, Strength: s}}})
	if _, shape := tensorValues(t, fpc, xe); shape[1] != 128 {
		t.Errorf("plain then control: x_embedder %v", shape)
	}
	fpb := filepath.Join(mkdir(t, dir, "pb"), "x.safetensors")
	fuse(t, FuseOptions{Model: fpc, Out: fpb, Remove: []string{"canny"}})
	for _, suf := range []string{"", lora.SidecarSuffix} {
		if !bytes.Equal(fileBytes(t, fpb+suf), fileBytes(t, fp+suf)) {
			t.Errorf("plain, control, control out: %s differs from the plain LoRA's file", filepath.Base(fpb+suf))
		}
	}
}

// TestFuseInputWideningHostile: an img_in lora_A of a width other than
// 64 or 128, a NaN in it, and --kept skip with a widening LoRA: errors
// that name the file and the tensor or layer, nothing written.
func TestFuseInputWideningHostile(t *testing.T) {
	b := loraCheckpoint(t, "flux")
	rng := rand.New(rand.NewPCG(73, 74))
	gd := t.TempDir()
	good := newInputLoRA(rng, 128, false).write(t, filepath.Join(gd, "good.safetensors"))
	widened := filepath.Join(gd, "w.safetensors")
	fuse(t, FuseOptions{Model: b.q, Out: widened, LoRAs: []LoRASpec{{Path: good, Strength: 1}}})
	for _, c := range []struct {
		name string
		k    int
		nan  bool
		kept string
		want string
	}{
		{"width 96", 96, false, "", "takes it as [128 64]"},
		{"width 256", 256, false, "", "takes it as [128 64]"},
		{"NaN", 128, true, "", "NaN"},
		{"kept skip", 128, false, KeptSkip, "--kept skip"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			l := newInputLoRA(rng, c.k, false)
			if c.nan {
				a := append([]float64(nil), l.a...)
				a[7] = math.NaN()
				l.add("img_in.lora_A.weight", a, 2, int64(c.k))
			}
			p := l.write(t, filepath.Join(dir, "bad.safetensors"))
			out := filepath.Join(dir, "o.safetensors")
			_, err := FuseLoRA(FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: p, Strength: 1}}, W4A16: W4A16Branch, Kept: c.kept})
			if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "img_in") && !strings.Contains(err.Error(), "x_embedder") || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one naming %s, img_in/x_embedder and %q", err, p, c.want)
			}
			if _, err := os.Stat(out); !os.IsNotExist(err) {
				t.Errorf("output written: %v", err)
			}
			if c.kept != "" {
				return
			}
			// check --lora reads only LoRAs the file records: a fused file
			// and the hostile LoRA, refused naming it.
			_, _, err = Check(CheckOptions{Model: widened, Reference: b.src, Calib: b.calib, Search: quant.SearchOff, Workers: 1,
				LoRAs: []LoRASpec{{Path: good, Strength: 1}, {Path: p, Strength: 1}}})
			if err == nil || !strings.Contains(err.Error(), p) {
				t.Errorf("check --lora: error %v, want one naming %s", err, p)
			}
		})
	}
}

func mkdir(t *testing.T, dir, name string) string {
	t.Helper()
	d := filepath.Join(dir, name)
	if err := os.Mkdir(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

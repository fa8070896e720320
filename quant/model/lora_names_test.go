package model

import (
	"bytes"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// namedLoRA is one LoRA written in some key scheme: name → (shape, values).
type namedLoRA map[string]struct {
	shape []int64
	v     []float64
}

func (l namedLoRA) add(name string, v []float64, shape ...int64) {
	l[name] = struct {
		shape []int64
		v     []float64
	}{shape, v}
}

func (l namedLoRA) write(t *testing.T, path string) string {
	var ts []safetensors.Tensor
	for n, x := range l {
		ts = append(ts, f32Tensor(n, x.shape, x.v))
	}
	if err := safetensors.WriteFile(path, ts, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

// rows returns rows [lo, hi) of a [*, k] matrix.
func rows(m []float64, k, lo, hi int) []float64 { return m[lo*k : hi*k] }

// TestFuseNamings: the same LoRA in XLabs keys
// (double_blocks.N.processor.qkv_lora1, proj_lora2, single_blocks.N.processor.qkv_lora,
// proj_lora), in fal / ai-toolkit keys (BFL names under base_model.model.,
// a single block's qkv as linear1 with zero mlp rows) and in diffusers
// PEFT keys fuses into the same tensors; Qwen-Image LoRAs in PEFT,
// diffusion_model. + lora_A.default (PEFT adapter name kept) and kohya
// lora_unet_ keys too. Text-encoder keys in any of them are reported and
// never fail the run.
func TestFuseNamings(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(41, 41))
	const D, H, r = 128, 512, 2
	te := func(l namedLoRA) namedLoRA {
		l.add("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", gauss(rng, r*8, 0.1), r, 8)
		l.add("lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", gauss(rng, 8*r, 0.1), 8, r)
		return l
	}
	// FLUX: one A per processor, B stacked as XLabs stores it.
	aQKV, bQKV := gauss(rng, r*D, 0.2), gauss(rng, 3*D*r, 0.05)
	aAdd, bAdd := gauss(rng, r*D, 0.2), gauss(rng, D*r, 0.05)
	aSQKV, bSQKV := gauss(rng, r*D, 0.2), gauss(rng, 3*D*r, 0.05)
	aSOut, bSOut := gauss(rng, r*(D+H), 0.2), gauss(rng, D*r, 0.05)

	peft := namedLoRA{}
	for i, m := range []string{"to_q", "to_k", "to_v"} {
		peft.add("transformer.transformer_blocks.0.attn."+m+".lora_A.weight", aQKV, r, D)
		peft.add("transformer.transformer_blocks.0.attn."+m+".lora_B.weight", rows(bQKV, r, i*D, (i+1)*D), D, r)
		peft.add("transformer.single_transformer_blocks.0.attn."+m+".lora_A.weight", aSQKV, r, D)
		peft.add("transformer.single_transformer_blocks.0.attn."+m+".lora_B.weight", rows(bSQKV, r, i*D, (i+1)*D), D, r)
	}
	peft.add("transformer.transformer_blocks.0.attn.to_add_out.lora_A.weight", aAdd, r, D)
	peft.add("transformer.transformer_blocks.0.attn.to_add_out.lora_B.weight", bAdd, D, r)
	peft.add("transformer.single_transformer_blocks.0.proj_out.lora_A.weight", aSOut, r, D+H)
	peft.add("transformer.single_transformer_blocks.0.proj_out.lora_B.weight", bSOut, D, r)

	xlabs := namedLoRA{}
	xlabs.add("double_blocks.0.processor.qkv_lora1.down.weight", aQKV, r, D)
	xlabs.add("double_blocks.0.processor.qkv_lora1.up.weight", bQKV, 3*D, r)
	xlabs.add("double_blocks.0.processor.proj_lora2.down.weight", aAdd, r, D)
	xlabs.add("double_blocks.0.processor.proj_lora2.up.weight", bAdd, D, r)
	xlabs.add("single_blocks.0.processor.qkv_lora.down.weight", aSQKV, r, D)
	xlabs.add("single_blocks.0.processor.qkv_lora.up.weight", bSQKV, 3*D, r)
	xlabs.add("single_blocks.0.processor.proj_lora.down.weight", aSOut, r, D+H)
	xlabs.add("single_blocks.0.processor.proj_lora.up.weight", bSOut, D, r)

	fal := namedLoRA{}
	p := "base_model.model."
	fal.add(p+"double_blocks.0.img_attn.qkv.lora_A.weight", aQKV, r, D)
	fal.add(p+"double_blocks.0.img_attn.qkv.lora_B.weight", bQKV, 3*D, r)
	fal.add(p+"double_blocks.0.txt_attn.proj.lora_A.weight", aAdd, r, D)
	fal.add(p+"double_blocks.0.txt_attn.proj.lora_B.weight", bAdd, D, r)
	fal.add(p+"single_blocks.0.linear1.lora_A.weight", aSQKV, r, D)
	fal.add(p+"single_blocks.0.linear1.lora_B.weight", append(append([]float64(nil), bSQKV...), make([]float64, H*r)...), 3*D+H, r)
	fal.add(p+"single_blocks.0.linear2.lora_A.weight", aSOut, r, D+H)
	fal.add(p+"single_blocks.0.linear2.lora_B.weight", bSOut, D, r)

	b := loraCheckpoint(t, "flux")
	var want map[string]string
	for i, l := range []struct {
		name string
		l    namedLoRA
	}{{"peft", peft}, {"xlabs", te(xlabs)}, {"fal", te(fal)}} {
		lp := l.l.write(t, filepath.Join(dir, l.name+".safetensors"))
		out := filepath.Join(dir, l.name+"-fused.safetensors")
		rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 0.7, Name: "x"}}})
		if i > 0 && (len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "text encoder")) {
			t.Errorf("%s: warnings %v, want the text-encoder keys reported", l.name, rep.Warnings)
		}
		ts, _ := tensorsOf(t, out)
		back := filepath.Join(dir, l.name+"-back.safetensors")
		if r := fuse(t, FuseOptions{Model: out, Out: back, RemoveAll: true}); !r.Restored || !bytes.Equal(fileBytes(t, back), fileBytes(t, b.q)) {
			t.Errorf("%s: --remove-all did not restore the base", l.name)
		}
		if i == 0 {
			want = ts
			continue
		}
		if !reflect.DeepEqual(ts, want) {
			for n := range want {
				if ts[n] != want[n] {
					t.Errorf("%s: tensor %s differs from the PEFT LoRA's", l.name, n)
				}
			}
		}
	}

	// Qwen-Image.
	q := loraCheckpoint(t, "qwen-image")
	src, err := safetensors.Open(q.src)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := src.Info("transformer_blocks.0.attn.to_k.weight")
	src.Close()
	QD := int(info.Shape[0])
	a1, b1 := gauss(rng, r*QD, 0.2), gauss(rng, QD*r, 0.05)
	a2, b2 := gauss(rng, r*4*QD, 0.2), gauss(rng, QD*r, 0.05)
	qpeft, qdefault, qkohya := namedLoRA{}, namedLoRA{}, namedLoRA{}
	for _, m := range []struct {
		name string
		a, b []float64
		k    int
	}{{"transformer_blocks.0.attn.to_k", a1, b1, QD}, {"transformer_blocks.0.img_mlp.net.2", a2, b2, 4 * QD}} {
		qpeft.add("transformer."+m.name+".lora_A.weight", m.a, r, int64(m.k))
		qpeft.add("transformer."+m.name+".lora_B.weight", m.b, int64(QD), r)
		qdefault.add("diffusion_model."+m.name+".lora_A.default.weight", m.a, r, int64(m.k))
		qdefault.add("diffusion_model."+m.name+".lora_B.default.weight", m.b, int64(QD), r)
		k := "lora_unet_" + strings.ReplaceAll(m.name, ".", "_")
		qkohya.add(k+".lora_down.weight", m.a, r, int64(m.k))
		qkohya.add(k+".lora_up.weight", m.b, int64(QD), r)
		qkohya.add(k+".alpha", []float64{r}, 1)
	}
	want = nil
	for i, l := range []struct {
		name string
		l    namedLoRA
	}{{"qwen-peft", qpeft}, {"qwen-default", te(qdefault)}, {"qwen-kohya", te(qkohya)}} {
		lp := l.l.write(t, filepath.Join(dir, l.name+".safetensors"))
		out := filepath.Join(dir, l.name+"-fused.safetensors")
		fuse(t, FuseOptions{Model: q.q, Out: out, LoRAs: []LoRASpec{{Path: lp, Strength: 1.3, Name: "x"}}})
		ts, _ := tensorsOf(t, out)
		back := filepath.Join(dir, l.name+"-back.safetensors")
		if r := fuse(t, FuseOptions{Model: out, Out: back, RemoveAll: true}); !r.Restored || !bytes.Equal(fileBytes(t, back), fileBytes(t, q.q)) {
			t.Errorf("%s: --remove-all did not restore the base", l.name)
		}
		if i == 0 {
			want = ts
			continue
		}
		if !reflect.DeepEqual(ts, want) {
			t.Errorf("%s: fused differently from the PEFT LoRA", l.name)
		}
	}
}

// TestFuseBFLControl: a whole BFL control LoRA (factors, bias deltas,
// norm scales and an img_in that widens the input to 128 channels, as
// FLUX.1 Canny/Depth's) fuses into FLUX.1, x_embedder widened
// (TestFuseInputWidening checks its values); the same widening img_in on
// Qwen-Image (img_in [D, 64] too, but no declared widening) is refused,
// naming the module, the layer and the rule, with or without
// --allow-unmatched.
func TestFuseBFLControl(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(43, 43))
	const D, r = 128, 2
	ctl := newControlLoRA(rng)
	ctl.add("img_in.lora_A.weight", gauss(rng, r*128, 0.1), r, 128)
	ctl.add("img_in.lora_B.weight", gauss(rng, D*r, 0.1), D, r)
	b := loraCheckpoint(t, "flux")
	cp := ctl.write(t, filepath.Join(dir, "control-img.safetensors"))
	out := filepath.Join(dir, "o.safetensors")
	if rep := fuse(t, FuseOptions{Model: b.q, Out: out, LoRAs: []LoRASpec{{Path: cp, Strength: 1}}}); rep.Input != 128 || len(rep.Vectors) != 8 {
		t.Errorf("control LoRA: input %d, %d vectors (want 128, 8)", rep.Input, len(rep.Vectors))
	}
	if _, shape := tensorValues(t, out, "x_embedder.weight"); shape[1] != 128 {
		t.Errorf("x_embedder %v, want [128 128]", shape)
	}
	q := loraCheckpoint(t, "qwen-image")
	_, qshape := tensorValues(t, q.q, "img_in.weight")
	qn := int(qshape[0])
	ql := namedLoRA{}
	ql.add("transformer.img_in.lora_A.weight", gauss(rng, r*128, 0.1), r, 128)
	ql.add("transformer.img_in.lora_B.weight", gauss(rng, qn*r, 0.1), int64(qn), r)
	qp := ql.write(t, filepath.Join(dir, "qwen-img-in.safetensors"))
	for _, allow := range []bool{false, true} {
		_, err := FuseLoRA(FuseOptions{Model: q.q, Out: filepath.Join(dir, "q.safetensors"), LoRAs: []LoRASpec{{Path: qp, Strength: 1}}, AllowUnmatched: allow, W4A16: W4A16Branch})
		if err == nil || !strings.Contains(err.Error(), qp) || !strings.Contains(err.Error(), "img_in") || !strings.Contains(err.Error(), "svdq widens only a FLUX x_embedder/img_in") {
			t.Errorf("Qwen-Image img_in [r, 128], allow-unmatched %v: %v", allow, err)
		}
	}
}

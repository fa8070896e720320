package lora

import (
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/preset"
)

func rg(lo, hi int) preset.Range { return preset.Range{Lo: lo, Hi: hi} }

func sortTargets(ts []Target) []Target {
	out := append([]Target(nil), ts...)
	sort.Slice(out, func(i, j int) bool {
		if out[i].Layer != out[j].Layer {
			return out[i].Layer < out[j].Layer
		}
		return out[i].SrcRows.Lo < out[j].SrcRows.Lo
	})
	return out
}

// TestResolveFLUX resolves module names in every naming and prefix on a
// diffusers-sourced and a BFL-sourced checkpoint: both must give the same
// targets, and these must be the declared ones.
func TestResolveFLUX(t *testing.T) {
	const D, H = 128, 512
	dbl, sgl := "transformer_blocks.1.", "single_transformer_blocks.3."
	want := map[string][]Target{
		"transformer.transformer_blocks.1.attn.to_q":          {{dbl + "qkv_proj", rg(0, D), rg(0, D), rg(0, D)}},
		"transformer_blocks.1.attn.to_v":                      {{dbl + "qkv_proj", rg(0, D), rg(0, D), rg(2*D, 3*D)}},
		"lora_unet_double_blocks_1_img_attn_qkv":              {{dbl + "qkv_proj", rg(0, 3*D), rg(0, D), rg(0, 3*D)}},
		"diffusion_model.double_blocks.1.txt_attn.qkv":        {{dbl + "qkv_proj_context", rg(0, 3*D), rg(0, D), rg(0, 3*D)}},
		"base_model.model.transformer_blocks.1.ff.net.2":      {{dbl + "mlp_fc2", rg(0, D), rg(0, H), rg(0, D)}},
		"lora_unet_double_blocks_1_txt_mlp_0":                 {{dbl + "mlp_context_fc1", rg(0, H), rg(0, D), rg(0, H)}},
		"lora_unet_double_blocks_1_img_mod_lin":               {{dbl + "norm1.linear", rg(0, 6*D), rg(0, D), rg(0, 6*D)}},
		"lora_transformer_transformer_blocks_1_attn_to_out_0": {{dbl + "out_proj", rg(0, D), rg(0, D), rg(0, D)}},
		"lora_unet_single_blocks_3_linear1": {
			{sgl + "mlp_fc1", rg(3*D, 3*D+H), rg(0, D), rg(0, H)},
			{sgl + "qkv_proj", rg(0, 3*D), rg(0, D), rg(0, 3*D)}},
		"single_transformer_blocks.3.attn.to_k": {{sgl + "qkv_proj", rg(0, D), rg(0, D), rg(D, 2*D)}},
		"model.diffusion_model.single_blocks.3.linear2": {
			{sgl + "mlp_fc2", rg(0, D), rg(D, D+H), rg(0, D)},
			{sgl + "out_proj", rg(0, D), rg(0, D), rg(0, D)}},
		"single_transformer_blocks.3.proj_out": {
			{sgl + "mlp_fc2", rg(0, D), rg(D, D+H), rg(0, D)},
			{sgl + "out_proj", rg(0, D), rg(0, D), rg(0, D)}},
		"lora_unet_single_blocks_3_modulation_lin": {{sgl + "norm.linear", rg(0, 3*D), rg(0, D), rg(0, 3*D)}},
		"lora_unet_img_in":                         {{"x_embedder.weight", rg(0, D), rg(0, 64), rg(0, D)}},
		"transformer.x_embedder":                   {{"x_embedder.weight", rg(0, D), rg(0, 64), rg(0, D)}},
		"lora_unet_final_layer_adaLN_modulation_1": {
			{"norm_out.linear.weight", rg(0, D), rg(0, D), rg(D, 2*D)},
			{"norm_out.linear.weight", rg(D, 2*D), rg(0, D), rg(0, D)}},
		"transformer.context_embedder": {{"context_embedder.weight", rg(0, D), rg(0, 4096), rg(0, D)}},
	}
	for _, naming := range []string{"diffusers", "bfl", "comfyui"} {
		ix := fluxIndex(t, naming)
		if !strings.Contains(ix.Aliases, "flux-dev preset") {
			t.Errorf("%s: aliases: %q", naming, ix.Aliases)
		}
		for name, w := range want {
			got, ok := ix.Resolve(name)
			if !ok {
				t.Errorf("%s file: %s does not resolve", naming, name)
				continue
			}
			if g := sortTargets(got); !reflect.DeepEqual(g, sortTargets(w)) {
				t.Errorf("%s file: %s:\n got %+v\nwant %+v", naming, name, g, sortTargets(w))
			}
		}
		for _, bad := range []string{"lora_te1_text_model_encoder_layers_0_mlp_fc1", "transformer_blocks.7.attn.to_q",
			"double_blocks.1.img_attn.norm.query_norm", "lora_unet_double_blocks_1_img_attn", ""} {
			if ts, ok := ix.Resolve(bad); ok {
				t.Errorf("%s file: %q resolves to %+v", naming, bad, ts)
			}
		}
		if li := ix.Layers[dbl+"norm1.linear"]; li == nil || li.Kind != W4A16 || li.Chunks != 6 || li.N != 6*D {
			t.Errorf("%s file: norm1.linear info %+v", naming, li)
		}
	}
}

// TestResolvePixArt covers a family with one naming and kept
// cross-attention K/V.
func TestResolvePixArt(t *testing.T) {
	meta, infos := fakeCheckpoint(skeletonPlan(t, "pixart-sigma", "", 0.12, 2), 32)
	ix, err := NewIndex(meta, infos)
	if err != nil {
		t.Fatal(err)
	}
	const D = 128
	cases := map[string]Target{
		"transformer.transformer_blocks.1.attn2.to_k":   {"transformer_blocks.1.attn2.to_k.weight", rg(0, D), rg(0, D), rg(0, D)},
		"lora_unet_transformer_blocks_0_attn1_to_q":     {"transformer_blocks.0.attn1.to_q", rg(0, D), rg(0, D), rg(0, D)},
		"lora_unet_transformer_blocks_0_attn1_to_out_0": {"transformer_blocks.0.attn1.to_out.0", rg(0, D), rg(0, D), rg(0, D)},
		"transformer.transformer_blocks.1.ff.net.2":     {"transformer_blocks.1.ff.net.2", rg(0, D), rg(0, 4*D), rg(0, D)},
		"caption_projection.linear_2":                   {"caption_projection.linear_2.weight", rg(0, D), rg(0, D), rg(0, D)},
	}
	for name, w := range cases {
		got, ok := ix.Resolve(name)
		if !ok || len(got) != 1 || got[0] != w {
			t.Errorf("%s: got %+v ok=%v, want %+v", name, got, ok, w)
		}
	}
	if li := ix.Layers["transformer_blocks.1.attn2.to_k.weight"]; li == nil || li.Kind != Kept {
		t.Errorf("attn2.to_k info %+v", li)
	}
}

// TestResolveAmbiguous: a flattened name two modules share does not
// resolve; the dotted names still do.
func TestResolveAmbiguous(t *testing.T) {
	ix := &Index{Layers: map[string]*LayerInfo{}, modules: map[string][]Target{
		"a.b_c": {{Layer: "x"}}, "a_b.c": {{Layer: "y"}},
	}}
	ix.flat = map[string]string{}
	for m := range ix.modules {
		if _, dup := ix.flat[flatten(m)]; dup {
			ix.flat[flatten(m)] = ""
		} else {
			ix.flat[flatten(m)] = m
		}
	}
	if ts, ok := ix.Resolve("lora_unet_a_b_c"); ok {
		t.Errorf("ambiguous name resolved to %v", ts)
	}
	if ts, ok := ix.Resolve("a.b_c"); !ok || ts[0].Layer != "x" {
		t.Errorf("a.b_c: %v %v", ts, ok)
	}
}

// TestAliasesRefused: metadata that the preset does not reproduce (q and
// k swapped in a fused qkv layer) keeps the file's own names only, and
// says why.
func TestAliasesRefused(t *testing.T) {
	meta, infos := fakeCheckpoint(skeletonPlan(t, "flux-dev", "diffusers", 0.04, 1), 16)
	lm, _ := meta.Layer("transformer_blocks.0.qkv_proj")
	lm.Sources[0].Tensor, lm.Sources[1].Tensor = lm.Sources[1].Tensor, lm.Sources[0].Tensor
	ix, err := NewIndex(meta, infos)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ix.Aliases, "no naming") {
		t.Errorf("aliases: %q", ix.Aliases)
	}
	if _, ok := ix.Resolve("lora_unet_double_blocks_0_img_attn_qkv"); ok {
		t.Error("BFL name resolved without the preset")
	}
	if ts, ok := ix.Resolve("transformer_blocks.0.attn.to_q"); !ok || ts[0].Rows != rg(128, 256) {
		t.Errorf("the file's own name: %+v %v", ts, ok)
	}
}

func TestMaxNumber(t *testing.T) {
	for s, w := range map[string]int{"a": -1, "transformer_blocks.18.qkv": 18, "a.3.b.12": 12, "x0": 0} {
		if g := maxNumber(s); g != w {
			t.Errorf("%q: %d, want %d", s, g, w)
		}
	}
}

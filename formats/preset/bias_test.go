package preset

import (
	"strings"
	"testing"
)

// TestRequiredBiases: in the families whose real checkpoints have a bias
// on a linear (models.md: FLUX, Qwen-Image, PixArt all +b; SANA and SDXL
// all but the bias-free q/k/v and SANA's conv_point), a checkpoint missing
// one is refused with an error naming the tensor, unless
// AllowMissingBias, which plans the layer without it; a bias-free module
// is planned without one either way, and FLUX's split proj_out puts its
// bias on mlp_fc2 only.
func TestRequiredBiases(t *testing.T) {
	for _, c := range []struct {
		family, naming string
		drop           string // a required bias
		layer          string // the layer it feeds
		free           string // a module the family's checkpoints have without bias ("" none)
	}{
		{"flux-dev", "diffusers", "transformer_blocks.0.attn.to_q.bias", "transformer_blocks.0.qkv_proj", ""},
		{"flux-dev", "bfl", "double_blocks.0.img_attn.qkv.bias", "transformer_blocks.0.qkv_proj", ""},
		{"flux-dev", "comfyui", "model.diffusion_model.single_blocks.0.linear2.bias", "single_transformer_blocks.0.mlp_fc2", ""},
		{"flux-schnell", "diffusers", "single_transformer_blocks.0.proj_out.bias", "single_transformer_blocks.0.mlp_fc2", ""},
		{"flux-dev", "diffusers", "x_embedder.bias", "", ""},
		{"qwen-image", "", "transformer_blocks.0.img_mod.1.bias", "transformer_blocks.0.img_mod.1", ""},
		{"pixart-sigma", "", "transformer_blocks.0.ff.net.2.bias", "transformer_blocks.0.ff.net.2", ""},
		{"sana", "", "transformer_blocks.0.attn2.to_out.0.bias", "transformer_blocks.0.cross_attn.out_proj", "transformer_blocks.0.attn1.to_q"},
		{"sdxl", "", "down_blocks.2.attentions.0.transformer_blocks.0.ff.net.0.proj.bias", "down_blocks.2.attentions.0.transformer_blocks.0.ff.net.0.proj",
			"down_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q"},
	} {
		t.Run(c.family+"/"+c.drop, func(t *testing.T) {
			specs, err := Skeleton(c.family, SkeletonOptions{Scale: 0.05, Blocks: 1, Naming: c.naming})
			if err != nil {
				t.Fatal(err)
			}
			tab := SkeletonTable(specs)
			if _, ok := tab[c.drop]; !ok {
				t.Fatalf("the skeleton has no %s", c.drop)
			}
			if c.free != "" {
				if _, ok := tab[c.free+".bias"]; ok {
					t.Fatalf("the skeleton has %s.bias, which real checkpoints lack", c.free)
				}
			}
			f, err := Lookup(c.family)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Plan(tab, Options{}); err != nil {
				t.Fatalf("complete skeleton: %v", err)
			}
			delete(tab, c.drop)
			_, err = f.Plan(tab, Options{})
			if err == nil || !strings.Contains(err.Error(), "tensor "+c.drop+": missing") || !strings.Contains(err.Error(), "--allow-missing-bias") {
				t.Fatalf("without %s: %v", c.drop, err)
			}
			p, err := f.Plan(tab, Options{AllowMissingBias: true})
			if err != nil {
				t.Fatalf("AllowMissingBias: %v", err)
			}
			if c.layer == "" {
				return
			}
			l, ok := p.Layer(c.layer)
			if !ok {
				t.Fatalf("no layer %s", c.layer)
			}
			for _, s := range l.Sources {
				if s.Bias == c.drop {
					t.Errorf("layer %s still reads %s", c.layer, c.drop)
				}
			}
		})
	}
}

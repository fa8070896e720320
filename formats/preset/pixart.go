package preset

import "fmt"

// pixart is PixArt-Σ (diffusers PixArtTransformer2DModel). nunchaku ships
// no PixArt loader, so the output keeps the diffusers module names, each
// linear its own W4A4 layer; q, k and v of self-attention share a smoothing
// group. Cross-attention K/V read the T5 tokens and stay 16-bit (spec
// svdquant.md). ff.net.2 reads a GELU (tanh) output, so it is marked
// Shifted as nunchaku does for every GELU MLP it runs (FLUX, Qwen-Image).
type pixart struct{}

var _ Family = pixart{}

func init() { register(pixart{}) }

func (pixart) Name() string { return "pixart-sigma" }

func (pixart) Detect(t Table) bool {
	_, a := t.Shape("adaln_single.linear.weight")
	_, b := t.Shape("transformer_blocks.0.attn2.to_k.weight")
	_, c := t.Shape("transformer_blocks.0.ff.net.0.proj.weight")
	return a && b && c
}

var pixartBlock = []layerDecl{
	{name: "attn1.to_q", role: W4A4, group: "attn1_input", reason: "self-attention q", parts: []part{{module: "attn1.to_q"}}},
	{name: "attn1.to_k", role: W4A4, group: "attn1_input", reason: "self-attention k", parts: []part{{module: "attn1.to_k"}}},
	{name: "attn1.to_v", role: W4A4, group: "attn1_input", reason: "self-attention v", parts: []part{{module: "attn1.to_v"}}},
	{name: "attn1.to_out.0", role: W4A4, reason: "self-attention output", parts: []part{{module: "attn1.to_out.0"}}},
	{name: "attn2.to_q", role: W4A4, reason: "cross-attention q (image side)", parts: []part{{module: "attn2.to_q"}}},
	{name: "attn2.to_out.0", role: W4A4, reason: "cross-attention output", parts: []part{{module: "attn2.to_out.0"}}},
	{name: "ff.net.0.proj", role: W4A4, reason: "MLP up", parts: []part{{module: "ff.net.0.proj"}}},
	{name: "ff.net.2", role: W4A4, shifted: true, reason: "MLP down, GELU input", parts: []part{{module: "ff.net.2"}}},
}

var pixartKept = []keepDecl{
	{module: "attn2.to_k.weight", reason: "cross-attention K/V (text side)"},
	{module: "attn2.to_k.bias", reason: "cross-attention K/V (text side)"},
	{module: "attn2.to_v.weight", reason: "cross-attention K/V (text side)"},
	{module: "attn2.to_v.bias", reason: "cross-attention K/V (text side)"},
	{module: "scale_shift_table", reason: "adaLN-single table"},
}

var pixartOutside = rules(
	`^(pos_embed|caption_projection)\.`, "embedder",
	`^adaln_single\.`, "timestep embedder and adaLN-single",
	`^scale_shift_table$`, "final norm modulation",
	`^proj_out\.`, "final projection",
)

func (f pixart) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "PixArtTransformer2DModel", "diffusers", "")
	p.requireBiases(opt) // models.md: all block linears +b
	D := p.dim("transformer_blocks.0.attn1.to_q.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	n := p.stack("transformer_blocks.", pixartBlock, pixartKept, func(string) dims { return dims{D: D} })
	hd := headDim(D, 72, 64)
	patch := 2
	p.plan.Config = configJSON(map[string]any{
		"_class_name":               "PixArtTransformer2DModel",
		"attention_bias":            true,
		"attention_head_dim":        hd,
		"caption_channels":          p.dim("caption_projection.linear_1.weight", 1),
		"cross_attention_dim":       D,
		"in_channels":               p.dim("pos_embed.proj.weight", 1),
		"norm_type":                 "ada_norm_single",
		"num_attention_heads":       D / hd,
		"num_layers":                n,
		"out_channels":              p.dim("proj_out.weight", 0) / (patch * patch),
		"patch_size":                patch,
		"sample_size":               128,
		"use_additional_conditions": false,
	})
	return p.finish(opt, classify(pixartOutside))
}

// headDim returns the first candidate head dimension dividing d (the last
// candidate otherwise).
func headDim(d int, candidates ...int) int {
	for _, c := range candidates {
		if d%c == 0 {
			return c
		}
	}
	return candidates[len(candidates)-1]
}

// Skeleton lists PixArt-Σ XL-2 at scale: width 1152·scale, Blocks blocks
// (28 when 0).
func (f pixart) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	D := scaled(1152, opt.Scale)
	var s skel
	s.conv("pos_embed.proj", D, 4, 2, true)
	s.lin("caption_projection.linear_1", D, 4096, true)
	s.lin("caption_projection.linear_2", D, D, true)
	s.lin("adaln_single.emb.timestep_embedder.linear_1", D, 256, true)
	s.lin("adaln_single.emb.timestep_embedder.linear_2", D, D, true)
	s.lin("adaln_single.linear", 6*D, D, true)
	s.vec("scale_shift_table", 2, D)
	s.lin("proj_out", 32, D, true)
	for i := range blocksOr(opt.Blocks, 28) {
		b := fmt.Sprintf("transformer_blocks.%d.", i)
		for _, a := range []string{"attn1", "attn2"} {
			for _, m := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
				s.lin(b+a+"."+m, D, D, true)
			}
		}
		s.lin(b+"ff.net.0.proj", 4*D, D, true)
		s.lin(b+"ff.net.2", D, 4*D, true)
		s.vec(b+"scale_shift_table", 6, D)
	}
	return s, nil
}

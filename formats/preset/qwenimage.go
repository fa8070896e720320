package preset

import "fmt"

// qwenImage is Qwen-Image (diffusers QwenImageTransformer2DModel), output in
// the names of nunchaku's NunchakuQwenImageTransformer2DModel
// (nunchaku/models/transformers/transformer_qwenimage.py): attn.to_qkv and
// attn.add_qkv_proj fuse q|k|v, img_mod.1/txt_mod.1 are AWQ W4A16 with six
// interleaved chunks (its forward views the output as [B, dim, 6]), and the
// MLP's second linears read the GELU output shifted and unsigned
// (NunchakuFeedForward sets act_unsigned on net.2 for INT4).
type qwenImage struct{}

var _ Family = qwenImage{}

func init() { register(qwenImage{}) }

func (qwenImage) Name() string { return "qwen-image" }

func (qwenImage) Detect(t Table) bool {
	_, a := t.Shape("transformer_blocks.0.img_mod.1.weight")
	_, b := t.Shape("txt_in.weight")
	return a && b
}

var qwenBlock = []layerDecl{
	{name: "img_mod.1", role: W4A16, chunks: 6, reason: "adaLN modulation: weight-only", parts: []part{{module: "img_mod.1"}}},
	{name: "txt_mod.1", role: W4A16, chunks: 6, reason: "adaLN modulation: weight-only", parts: []part{{module: "txt_mod.1"}}},
	{name: "attn.to_qkv", role: W4A4, reason: "attention q|k|v (image)", parts: []part{
		{module: "attn.to_q"}, {module: "attn.to_k"}, {module: "attn.to_v"}}},
	{name: "attn.add_qkv_proj", role: W4A4, reason: "attention q|k|v (text)", parts: []part{
		{module: "attn.add_q_proj"}, {module: "attn.add_k_proj"}, {module: "attn.add_v_proj"}}},
	{name: "attn.to_out.0", role: W4A4, reason: "attention output (image)", parts: []part{{module: "attn.to_out.0"}}},
	{name: "attn.to_add_out", role: W4A4, reason: "attention output (text)", parts: []part{{module: "attn.to_add_out"}}},
	{name: "img_mlp.net.0.proj", role: W4A4, reason: "MLP up (image)", parts: []part{{module: "img_mlp.net.0.proj"}}},
	{name: "img_mlp.net.2", role: W4A4, shifted: true, reason: "MLP down (image), GELU input", parts: []part{{module: "img_mlp.net.2"}}},
	{name: "txt_mlp.net.0.proj", role: W4A4, reason: "MLP up (text)", parts: []part{{module: "txt_mlp.net.0.proj"}}},
	{name: "txt_mlp.net.2", role: W4A4, shifted: true, reason: "MLP down (text), GELU input", parts: []part{{module: "txt_mlp.net.2"}}},
}

var qwenKept = []keepDecl{
	{module: "attn.norm_q.weight", reason: "norm"},
	{module: "attn.norm_k.weight", reason: "norm"},
	{module: "attn.norm_added_q.weight", reason: "norm"},
	{module: "attn.norm_added_k.weight", reason: "norm"},
}

var qwenOutside = rules(
	`^(img_in|txt_in|txt_norm|time_text_embed)\.`, "embedder",
	`^norm_out\.`, "final norm modulation",
	`^proj_out\.`, "final projection",
)

func (f qwenImage) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "NunchakuQwenImageTransformer2DModel", "diffusers", "")
	p.requireBiases(opt) // models.md: all block linears +b
	D := p.dim("img_in.weight", 0)
	hd := p.dim("transformer_blocks.0.attn.norm_q.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	n := p.stack("transformer_blocks.", qwenBlock, qwenKept, func(string) dims { return dims{D: D} })
	p.plan.Config = configJSON(map[string]any{
		"_class_name":         "QwenImageTransformer2DModel",
		"attention_head_dim":  hd,
		"axes_dims_rope":      ropeAxes(hd),
		"guidance_embeds":     false,
		"in_channels":         p.dim("img_in.weight", 1),
		"joint_attention_dim": p.dim("txt_in.weight", 1),
		"num_attention_heads": D / max(hd, 1),
		"num_layers":          n,
		"out_channels":        p.dim("proj_out.weight", 0) / 4,
		"patch_size":          2,
	})
	return p.finish(opt, classify(qwenOutside))
}

// Skeleton lists Qwen-Image at scale: width 3072·scale (head dim 128),
// Blocks blocks (60 when 0).
func (f qwenImage) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	D := scaled(3072, opt.Scale)
	const hd = 128
	var s skel
	s.lin("img_in", D, 64, true)
	s.lin("txt_in", D, 3584, true)
	s.norm("txt_norm", 3584, false)
	s.lin("time_text_embed.timestep_embedder.linear_1", D, 256, true)
	s.lin("time_text_embed.timestep_embedder.linear_2", D, D, true)
	s.lin("norm_out.linear", 2*D, D, true)
	s.lin("proj_out", 64, D, true)
	for i := range blocksOr(opt.Blocks, 60) {
		b := fmt.Sprintf("transformer_blocks.%d.", i)
		s.lin(b+"img_mod.1", 6*D, D, true)
		s.lin(b+"txt_mod.1", 6*D, D, true)
		for _, m := range []string{"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"} {
			s.lin(b+"attn."+m, D, D, true)
		}
		for _, m := range []string{"norm_q", "norm_k", "norm_added_q", "norm_added_k"} {
			s.norm(b+"attn."+m, hd, false)
		}
		for _, m := range []string{"img_mlp", "txt_mlp"} {
			s.lin(b+m+".net.0.proj", 4*D, D, true)
			s.lin(b+m+".net.2", D, 4*D, true)
		}
	}
	return s, nil
}

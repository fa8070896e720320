package preset

import "fmt"

// luminaNext is Lumina-Next-SFT 2B (diffusers LuminaNextDiT2DModel). nunchaku
// has no loader for it: output names are the diffusers module names, each
// linear its own layer; q/k/v (self-attention) and linear_1/linear_3
// (SwiGLU gate/up) share smoothing groups. attn2.to_k/to_v read the caption
// features and stay 16-bit like PixArt-Σ's and SANA's (our choice: the
// spec names only those two). norm1.linear (the adaLN modulation) is
// W4A16 without chunk interleaving (Chunks 0: no engine defines one).
// linear_2 reads silu(gate)·up, unbounded below: not Shifted.
type luminaNext struct{}

var _ Family = luminaNext{}

func init() { register(luminaNext{}) }

func (luminaNext) Name() string { return "lumina-next" }

func (luminaNext) Detect(t Table) bool {
	_, a := t.Shape("layers.0.feed_forward.linear_3.weight")
	_, b := t.Shape("layers.0.attn2.to_k.weight")
	return a && b
}

var luminaBlock = []layerDecl{
	{name: "norm1.linear", role: W4A16, reason: "adaLN modulation: weight-only", parts: []part{{module: "norm1.linear"}}},
	{name: "attn1.to_q", role: W4A4, group: "attn1_input", reason: "self-attention q", parts: []part{{module: "attn1.to_q"}}},
	{name: "attn1.to_k", role: W4A4, group: "attn1_input", reason: "self-attention k", parts: []part{{module: "attn1.to_k"}}},
	{name: "attn1.to_v", role: W4A4, group: "attn1_input", reason: "self-attention v", parts: []part{{module: "attn1.to_v"}}},
	{name: "attn2.to_q", role: W4A4, reason: "cross-attention q (image side)", parts: []part{{module: "attn2.to_q"}}},
	{name: "attn2.to_out.0", role: W4A4, reason: "attention output", parts: []part{{module: "attn2.to_out.0"}}},
	{name: "feed_forward.linear_1", role: W4A4, group: "ffn_input", reason: "SwiGLU gate", parts: []part{{module: "feed_forward.linear_1"}}},
	{name: "feed_forward.linear_3", role: W4A4, group: "ffn_input", reason: "SwiGLU up", parts: []part{{module: "feed_forward.linear_3"}}},
	{name: "feed_forward.linear_2", role: W4A4, reason: "SwiGLU down", parts: []part{{module: "feed_forward.linear_2"}}},
}

var luminaKept = []keepDecl{
	{module: "attn2.to_k.weight", reason: "cross-attention K/V (text side)"},
	{module: "attn2.to_v.weight", reason: "cross-attention K/V (text side)"},
}

var luminaOutside = rules(
	`^layers\.\d+\.(attn1|attn2)\.norm_[qk]\.(weight|bias)$`, "norm",
	`^layers\.\d+\.(norm1\.norm|ffn_norm1|norm2|ffn_norm2|norm1_context)\.weight$`, "norm",
	`^layers\.\d+\.gate$`, "attention gate",
	`^(patch_embedder|pad_token|time_caption_embed)(\.|$)`, "embedder",
	`^norm_out\.`, "final norm modulation and projection",
)

func (f luminaNext) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "LuminaNextDiT2DModel", "diffusers", "")
	D := p.dim("layers.0.attn1.to_q.weight", 0)
	kv := p.dim("layers.0.attn1.to_k.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	n := p.stack("layers.", luminaBlock, luminaKept, func(string) dims { return dims{D: D} })
	hd := headDim(D, 72, 64)
	p.plan.Config = configJSON(map[string]any{
		"_class_name":         "LuminaNextDiT2DModel",
		"cross_attention_dim": p.dim("layers.0.attn2.to_k.weight", 1),
		"hidden_size":         D,
		"in_channels":         p.dim("patch_embedder.proj.weight", 1) / 4,
		"num_attention_heads": D / hd,
		"num_kv_heads":        kv / hd,
		"num_layers":          n,
		"patch_size":          2,
	})
	return p.finish(opt, classify(luminaOutside))
}

// Skeleton lists Lumina-Next 2B at scale: width 2304·scale (head dim 72
// when it divides, else 64; 8 KV heads), SwiGLU hidden ⌈8D/3⌉ to 256,
// Blocks layers (24 when 0).
func (f luminaNext) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	D := scaled(2304, opt.Scale)
	hd := headDim(D, 72, 64)
	kv := 8 * hd
	H := ceilTo(8*D/3, 256)
	A := min(D, 1024) // adaLN embedding width
	const text = 2048
	var s skel
	s.lin("patch_embedder.proj", D, 16, true)
	s.vec("pad_token", D)
	s.lin("time_caption_embed.timestep_embedder.linear_1", A, 256, true)
	s.lin("time_caption_embed.timestep_embedder.linear_2", A, A, true)
	s.norm("time_caption_embed.caption_embedder.0", text, true)
	s.lin("time_caption_embed.caption_embedder.1", A, text, true)
	s.lin("norm_out.linear_1", D, A, true)
	s.lin("norm_out.linear_2", 16, D, true)
	for i := range blocksOr(opt.Blocks, 24) {
		b := fmt.Sprintf("layers.%d.", i)
		s.lin(b+"attn1.to_q", D, D, false)
		s.lin(b+"attn1.to_k", kv, D, false)
		s.lin(b+"attn1.to_v", kv, D, false)
		s.norm(b+"attn1.norm_q", D, true)
		s.norm(b+"attn1.norm_k", kv, true)
		s.lin(b+"attn2.to_q", D, D, false)
		s.lin(b+"attn2.to_k", kv, text, false)
		s.lin(b+"attn2.to_v", kv, text, false)
		s.norm(b+"attn2.norm_q", D, true)
		s.norm(b+"attn2.norm_k", kv, true)
		s.lin(b+"attn2.to_out.0", D, D, false)
		s.vec(b+"gate", D/hd)
		s.lin(b+"feed_forward.linear_1", H, D, false)
		s.lin(b+"feed_forward.linear_3", H, D, false)
		s.lin(b+"feed_forward.linear_2", D, H, false)
		s.norm(b+"norm1.norm", D, false)
		s.lin(b+"norm1.linear", 4*D, A, true)
		s.norm(b+"ffn_norm1", D, false)
		s.norm(b+"norm2", D, false)
		s.norm(b+"ffn_norm2", D, false)
		s.norm(b+"norm1_context", text, false)
	}
	return s, nil
}

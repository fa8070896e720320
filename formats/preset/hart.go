package preset

import "fmt"

// hart is HART (MIT Han Lab's hybrid autoregressive transformer): an AR
// transformer (blocks.N) plus a residual diffusion MLP
// (diffloss.net.res_blocks.N). nunchaku has no loader: output names are the
// module names. The AR attention's qkv_proj is already fused in the file
// and stays one layer; SwiGLU gate/up share a smoothing group. ada_lin.1 and
// the diffusion MLP's adaLN_modulation.1 are W4A16 (Chunks 0). The
// diffusion MLP's mlp.2 reads a SiLU output (≥ −0.28): not Shifted (the
// shift is nunchaku's GELU-path constant). The 1024px width is a stand-in
// (spec models.md): everything is read from the file.
type hart struct{}

var _ Family = hart{}

func init() { register(hart{}) }

func (hart) Name() string { return "hart" }

func (hart) Detect(t Table) bool {
	_, a := t.Shape("blocks.0.attn.qkv_proj.weight")
	_, b := t.Shape("blocks.0.ada_lin.1.weight")
	return a && b
}

var hartBlock = []layerDecl{
	{name: "ada_lin.1", role: W4A16, reason: "adaLN modulation: weight-only", parts: []part{{module: "ada_lin.1"}}},
	{name: "attn.qkv_proj", role: W4A4, reason: "attention q|k|v (fused in the file)", parts: []part{{module: "attn.qkv_proj"}}},
	{name: "attn.proj", role: W4A4, reason: "attention output", parts: []part{{module: "attn.proj"}}},
	{name: "ffn.gate_proj", role: W4A4, group: "ffn_input", reason: "SwiGLU gate", parts: []part{{module: "ffn.gate_proj"}}},
	{name: "ffn.up_proj", role: W4A4, group: "ffn_input", reason: "SwiGLU up", parts: []part{{module: "ffn.up_proj"}}},
	{name: "ffn.down_proj", role: W4A4, reason: "SwiGLU down", parts: []part{{module: "ffn.down_proj"}}},
}

var hartDiffBlock = []layerDecl{
	{name: "adaLN_modulation.1", role: W4A16, reason: "adaLN modulation: weight-only", parts: []part{{module: "adaLN_modulation.1"}}},
	{name: "mlp.0", role: W4A4, reason: "diffusion MLP up", parts: []part{{module: "mlp.0"}}},
	{name: "mlp.2", role: W4A4, reason: "diffusion MLP down (SiLU input)", parts: []part{{module: "mlp.2"}}},
}

var hartOutside = rules(
	`^blocks\.\d+\.attn\.(q_bias|v_bias|scale_mul_1H11)$`, "attention bias/scale",
	`^(word_embed|context_embed|context_norm|pos_start|pos_1LC|lvl_embed|class_emb)(\.|$)`, "embedder",
	`^head_nm\.`, "final norm modulation",
	`^head\.`, "output head",
	`^diffloss\.net\.(time_embed|cond_embed|input_proj)\.`, "embedder",
	`^diffloss\.net\.res_blocks\.\d+\.in_ln\.`, "norm",
	`^diffloss\.net\.final_layer\.`, "final projection",
)

func (f hart) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "HARTForT2I", "diffusers", "")
	C := p.dim("blocks.0.attn.proj.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	n := p.stack("blocks.", hartBlock, nil, func(string) dims { return dims{D: C} })
	m := p.stack("diffloss.net.res_blocks.", hartDiffBlock, nil, func(string) dims { return dims{} })
	p.plan.Config = configJSON(map[string]any{
		"_class_name": "HARTForT2I",
		"depth":       n,
		"diff_depth":  m,
		"diff_width":  p.dim("diffloss.net.res_blocks.0.mlp.0.weight", 0),
		"embed_dim":   C,
		"mlp_hidden":  p.dim("blocks.0.ffn.gate_proj.weight", 0),
		"num_heads":   C / 64,
	})
	return p.finish(opt, classify(hartOutside))
}

// Skeleton lists the HART stand-in at scale: C = 1280·scale (head dim 64),
// SwiGLU hidden ⌈8C/3⌉ to 256, Blocks AR blocks (20 when 0), a diffusion
// MLP of width 1024·scale with 6 residual blocks.
func (f hart) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	C := scaled(1280, opt.Scale)
	H := ceilTo(8*C/3, 256)
	W := scaled(1024, opt.Scale)
	const vae, text = 32, 1536
	var s skel
	s.lin("word_embed", C, vae, true)
	s.norm("context_norm", text, true)
	s.lin("context_embed", C, text, true)
	s.vec("pos_start", 1, 1, C)
	s.vec("lvl_embed.weight", 14, C)
	s.lin("head_nm.ada_lin.1", 2*C, C, true)
	s.lin("head", 4096, C, true)
	for i := range blocksOr(opt.Blocks, 20) {
		b := fmt.Sprintf("blocks.%d.", i)
		s.lin(b+"attn.qkv_proj", 3*C, C, false)
		s.vec(b+"attn.q_bias", C)
		s.vec(b+"attn.v_bias", C)
		s.lin(b+"attn.proj", C, C, true)
		s.lin(b+"ffn.gate_proj", H, C, false)
		s.lin(b+"ffn.up_proj", H, C, false)
		s.lin(b+"ffn.down_proj", C, H, false)
		s.lin(b+"ada_lin.1", 6*C, C, true)
	}
	s.lin("diffloss.net.time_embed.mlp.0", W, 256, true)
	s.lin("diffloss.net.time_embed.mlp.2", W, W, true)
	s.lin("diffloss.net.cond_embed", W, C, true)
	s.lin("diffloss.net.input_proj", W, vae, true)
	for i := range 6 {
		b := fmt.Sprintf("diffloss.net.res_blocks.%d.", i)
		s.norm(b+"in_ln", W, true)
		s.lin(b+"mlp.0", W, W, true)
		s.lin(b+"mlp.2", W, W, true)
		s.lin(b+"adaLN_modulation.1", 3*W, W, true)
	}
	s.lin("diffloss.net.final_layer.adaLN_modulation.1", 2*W, W, true)
	s.lin("diffloss.net.final_layer.linear", 2*vae, W, true)
	return s, nil
}

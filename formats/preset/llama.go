package preset

import "fmt"

// llama is the LLaMA-2 layout of VILA-U's 7B language model (Hugging Face
// LlamaForCausalLM). Output names are the module names; q/k/v and gate/up
// share smoothing groups; down_proj reads silu(gate)·up (signed, not
// Shifted). Embeddings, norms and lm_head stay 16-bit.
type llama struct{}

var _ Family = llama{}

func init() { register(llama{}) }

func (llama) Name() string { return "llama" }

func (llama) Detect(t Table) bool {
	_, a := t.Shape("model.layers.0.self_attn.q_proj.weight")
	_, b := t.Shape("model.embed_tokens.weight")
	return a && b
}

var llamaBlock = []layerDecl{
	{name: "self_attn.q_proj", role: W4A4, group: "attn_input", reason: "attention q", parts: []part{{module: "self_attn.q_proj"}}},
	{name: "self_attn.k_proj", role: W4A4, group: "attn_input", reason: "attention k", parts: []part{{module: "self_attn.k_proj"}}},
	{name: "self_attn.v_proj", role: W4A4, group: "attn_input", reason: "attention v", parts: []part{{module: "self_attn.v_proj"}}},
	{name: "self_attn.o_proj", role: W4A4, reason: "attention output", parts: []part{{module: "self_attn.o_proj"}}},
	{name: "mlp.gate_proj", role: W4A4, group: "mlp_input", reason: "SwiGLU gate", parts: []part{{module: "mlp.gate_proj"}}},
	{name: "mlp.up_proj", role: W4A4, group: "mlp_input", reason: "SwiGLU up", parts: []part{{module: "mlp.up_proj"}}},
	{name: "mlp.down_proj", role: W4A4, reason: "SwiGLU down", parts: []part{{module: "mlp.down_proj"}}},
}

var llamaKept = []keepDecl{
	{module: "input_layernorm.weight", reason: "norm"},
	{module: "post_attention_layernorm.weight", reason: "norm"},
}

var llamaOutside = rules(
	`^model\.embed_tokens\.weight$`, "embedder",
	`^model\.norm\.weight$`, "norm",
	`^lm_head\.weight$`, "output head",
	`^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$`, "rotary table",
)

func (f llama) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "LlamaForCausalLM", "diffusers", "")
	D := p.dim("model.layers.0.self_attn.q_proj.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	n := p.stack("model.layers.", llamaBlock, llamaKept, func(string) dims { return dims{D: D} })
	p.plan.Config = configJSON(map[string]any{
		"architectures":       []string{"LlamaForCausalLM"},
		"model_type":          "llama",
		"hidden_size":         D,
		"intermediate_size":   p.dim("model.layers.0.mlp.gate_proj.weight", 0),
		"num_attention_heads": D / 128,
		"num_hidden_layers":   n,
		"num_key_value_heads": p.dim("model.layers.0.self_attn.k_proj.weight", 0) / 128,
		"rms_norm_eps":        1e-5,
		"vocab_size":          p.dim("model.embed_tokens.weight", 0),
	})
	return p.finish(opt, classify(llamaOutside))
}

// Skeleton lists LLaMA-2-7B at scale: width 4096·scale (head dim 128), MLP
// hidden 11008·scale and vocabulary 32000·scale (each rounded to 128 below
// scale 1), Blocks layers (32 when 0).
func (f llama) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	D, H, V := scaled(4096, opt.Scale), scaled(11008, opt.Scale), scaled(32000, opt.Scale)
	var s skel
	s.vec("model.embed_tokens.weight", V, D)
	s.norm("model.norm", D, false)
	s.vec("lm_head.weight", V, D)
	for i := range blocksOr(opt.Blocks, 32) {
		b := fmt.Sprintf("model.layers.%d.", i)
		for _, m := range []string{"q_proj", "k_proj", "v_proj", "o_proj"} {
			s.lin(b+"self_attn."+m, D, D, false)
		}
		s.lin(b+"mlp.gate_proj", H, D, false)
		s.lin(b+"mlp.up_proj", H, D, false)
		s.lin(b+"mlp.down_proj", D, H, false)
		s.norm(b+"input_layernorm", D, false)
		s.norm(b+"post_attention_layernorm", D, false)
	}
	return s, nil
}

package engine

import (
	"regexp"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
)

// LayerSpec is one quantized module of a block as the file names it.
type LayerSpec struct {
	Name string // relative to the block prefix, e.g. "attn.to_qkv"
	Kind string // "w4a4", "w4a16" or "w4a16g128" (nunchaku.Kind*)
	// Bias: the loader's module has a bias (only read by contracts whose
	// BiasAlways is false).
	Bias bool
	// Unsigned: INT4 input shifted by 0.171875 and quantized unsigned
	// (act_unsigned) — the second linear of a GELU MLP.
	Unsigned bool
	// Pair names the layer whose rank must equal this one's where the
	// engine fuses the two (C++ FLUX MLPs: fc1's epilogue feeds fc2).
	Pair string
}

// BlockSpec is a repeated block: Re matches a layer's block prefix
// (including the trailing dot) and captures nothing else.
type BlockSpec struct {
	Stem   string // display and Fixed key, e.g. "transformer_blocks"
	Re     *regexp.Regexp
	Layers []LayerSpec
	// Skippable: the loader may build the block unquantized
	// (Z-Image refiners with quantization_config.skip_refiners).
	Skippable bool
	// ByPresence: the loader quantizes a module only where the file holds
	// its qweight and keeps a 16-bit nn.Linear (which needs "<name>.weight")
	// elsewhere (nunchaku's T5), so a module may be either.
	ByPresence bool
	// Required are 16-bit tensors of every block (relative names) a strict
	// loader needs.
	Required []string
}

// Family is the file-side layer table of one model family.
type Family struct {
	Name   string
	Blocks []BlockSpec
	// Required are 16-bit tensors outside the blocks a strict loader needs
	// (only listed where svdq has seen a file miss one: T5's tied
	// encoder.embed_tokens.weight).
	Required []string
}

// Block finds the block spec and the relative layer name of a quantized
// layer name; ok false when no block of the family matches.
func (f *Family) Block(layer string) (b *BlockSpec, prefix, rel string, ok bool) {
	for i := range f.Blocks {
		bs := &f.Blocks[i]
		if loc := bs.Re.FindStringIndex(layer); loc != nil && loc[0] == 0 {
			return bs, layer[:loc[1]], layer[loc[1]:], true
		}
	}
	return nil, "", "", false
}

// Spec returns the layer spec called rel in b.
func (b *BlockSpec) Spec(rel string) (*LayerSpec, bool) {
	for i := range b.Layers {
		if b.Layers[i].Name == rel {
			return &b.Layers[i], true
		}
	}
	return nil, false
}

const w4a4, w4a16, w4a16g128 = nunchaku.KindW4A4, nunchaku.KindW4A16, nunchaku.KindW4A16G128

// familyOf maps svdq's preset family names to the table's families.
var familyOf = map[string]string{
	"flux-dev":     "flux",
	"flux-schnell": "flux",
	"sana":         "sana",
	"qwen-image":   "qwen-image",
	"sdxl":         "sdxl",
	"z-image":      "z-image",
	"t5-xxl":       "t5",
}

// FamilyOf returns the table family of a preset family ("" when nunchaku
// runs no such model).
func FamilyOf(presetFamily string) string { return familyOf[presetFamily] }

func stem(s string) *regexp.Regexp { return regexp.MustCompile(`^` + regexp.QuoteMeta(s) + `\.\d+\.`) }

// Families are the file-side layer tables, read from the loaders:
//
//   - flux: nunchaku src/FluxModel.cpp JointTransformerBlock /
//     FluxSingleTransformerBlock constructors (names, bias=true, AWQ
//     adaLN), Linear.cpp GEMM_W4A4; transformer_flux_v2.py
//     convert_flux_state_dict maps the same names onto V2's modules;
//     attention.py NunchakuFeedForward sets act_unsigned on net[2].
//   - sana: src/SanaModel.cpp SanaLinearAttention (qkv_proj, out_proj: no
//     bias), MultiHeadCrossAttention (q_linear, out_proj: bias; kv_linear
//     16-bit), SanaGLUMBConv (inverted_conv: bias; point_conv: no bias).
//   - qwen-image: transformer_qwenimage.py NunchakuQwenAttention,
//     NunchakuQwenImageTransformerBlock (img_mod.1 / txt_mod.1 AWQ),
//     NunchakuFeedForward.
//   - sdxl: unets/unet_sdxl.py NunchakuSDXLAttention (to_qkv of bias-free
//     q/k/v; cross-attention to_q bias-free, to_k/to_v 16-bit),
//     NunchakuSDXLFeedForward (act_unsigned never set).
//   - z-image: transformer_zimage.py NunchakuZImageAttention,
//     NunchakuZImageFeedForward (diffusers Attention bias=False,
//     out_bias=False; SwiGLU FeedForward bias=False; act_unsigned never set).
//   - t5: text_encoders/t5_encoder.py NunchakuT5EncoderModel.from_pretrained
//     swaps any nn.Linear of transformers' T5EncoderModel whose qweight is
//     in the file for a W4Linear (group 128, no bias: T5's linears have
//     none); the names are transformers' (encoder.block.N.layer.0.
//     SelfAttention.{q,k,v,o}, layer.1.DenseReluDense.{wi_0,wi_1,wo} of the
//     gated v1.1 feed-forward), and the strict load needs every other
//     tensor of T5EncoderModel.state_dict(), the tied embedding under both
//     of its names included.
var Families = map[string]*Family{
	"flux": {Name: "flux", Blocks: []BlockSpec{
		{Stem: "transformer_blocks", Re: stem("transformer_blocks"), Layers: []LayerSpec{
			{Name: "norm1.linear", Kind: w4a16, Bias: true},
			{Name: "norm1_context.linear", Kind: w4a16, Bias: true},
			{Name: "qkv_proj", Kind: w4a4, Bias: true},
			{Name: "qkv_proj_context", Kind: w4a4, Bias: true},
			{Name: "out_proj", Kind: w4a4, Bias: true},
			{Name: "out_proj_context", Kind: w4a4, Bias: true},
			{Name: "mlp_fc1", Kind: w4a4, Bias: true, Pair: "mlp_fc2"},
			{Name: "mlp_fc2", Kind: w4a4, Bias: true, Unsigned: true, Pair: "mlp_fc1"},
			{Name: "mlp_context_fc1", Kind: w4a4, Bias: true, Pair: "mlp_context_fc2"},
			{Name: "mlp_context_fc2", Kind: w4a4, Bias: true, Unsigned: true, Pair: "mlp_context_fc1"},
		}},
		{Stem: "single_transformer_blocks", Re: stem("single_transformer_blocks"), Layers: []LayerSpec{
			{Name: "norm.linear", Kind: w4a16, Bias: true},
			{Name: "qkv_proj", Kind: w4a4, Bias: true},
			{Name: "mlp_fc1", Kind: w4a4, Bias: true, Pair: "mlp_fc2"},
			{Name: "out_proj", Kind: w4a4, Bias: true},
			{Name: "mlp_fc2", Kind: w4a4, Bias: true, Unsigned: true, Pair: "mlp_fc1"},
		}},
	}},
	"sana": {Name: "sana", Blocks: []BlockSpec{
		{Stem: "transformer_blocks", Re: stem("transformer_blocks"), Layers: []LayerSpec{
			{Name: "attn.qkv_proj", Kind: w4a4},
			{Name: "attn.out_proj", Kind: w4a4},
			{Name: "cross_attn.q_linear", Kind: w4a4, Bias: true},
			{Name: "cross_attn.out_proj", Kind: w4a4, Bias: true},
			{Name: "ff.inverted_conv", Kind: w4a4, Bias: true},
			{Name: "ff.point_conv", Kind: w4a4},
		}},
	}},
	"qwen-image": {Name: "qwen-image", Blocks: []BlockSpec{
		{Stem: "transformer_blocks", Re: stem("transformer_blocks"), Layers: []LayerSpec{
			{Name: "img_mod.1", Kind: w4a16, Bias: true},
			{Name: "txt_mod.1", Kind: w4a16, Bias: true},
			{Name: "attn.to_qkv", Kind: w4a4, Bias: true},
			{Name: "attn.add_qkv_proj", Kind: w4a4, Bias: true},
			{Name: "attn.to_out.0", Kind: w4a4, Bias: true},
			{Name: "attn.to_add_out", Kind: w4a4, Bias: true},
			{Name: "img_mlp.net.0.proj", Kind: w4a4, Bias: true},
			{Name: "img_mlp.net.2", Kind: w4a4, Bias: true, Unsigned: true},
			{Name: "txt_mlp.net.0.proj", Kind: w4a4, Bias: true},
			{Name: "txt_mlp.net.2", Kind: w4a4, Bias: true, Unsigned: true},
		}},
	}},
	"sdxl": {Name: "sdxl", Blocks: []BlockSpec{
		{Stem: "transformer_blocks",
			Re: regexp.MustCompile(`^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.`),
			Layers: []LayerSpec{
				{Name: "attn1.to_qkv", Kind: w4a4},
				{Name: "attn1.to_out.0", Kind: w4a4, Bias: true},
				{Name: "attn2.to_q", Kind: w4a4},
				{Name: "attn2.to_out.0", Kind: w4a4, Bias: true},
				{Name: "ff.net.0.proj", Kind: w4a4, Bias: true},
				{Name: "ff.net.2", Kind: w4a4, Bias: true},
			}},
	}},
	"z-image": {Name: "z-image", Blocks: []BlockSpec{
		{Stem: "layers", Re: stem("layers"), Layers: zimageLayers},
		{Stem: "noise_refiner", Re: stem("noise_refiner"), Layers: zimageLayers, Skippable: true},
		{Stem: "context_refiner", Re: stem("context_refiner"), Layers: zimageLayers, Skippable: true},
	}},
	"t5": t5Family,
}

var t5Family = &Family{Name: "t5",
	Blocks: []BlockSpec{{Stem: "encoder.block", Re: stem("encoder.block"), ByPresence: true,
		Layers: []LayerSpec{
			{Name: "layer.0.SelfAttention.q", Kind: w4a16g128},
			{Name: "layer.0.SelfAttention.k", Kind: w4a16g128},
			{Name: "layer.0.SelfAttention.v", Kind: w4a16g128},
			{Name: "layer.0.SelfAttention.o", Kind: w4a16g128},
			{Name: "layer.1.DenseReluDense.wi_0", Kind: w4a16g128},
			{Name: "layer.1.DenseReluDense.wi_1", Kind: w4a16g128},
			{Name: "layer.1.DenseReluDense.wo", Kind: w4a16g128},
		},
		Required: []string{"layer.0.layer_norm.weight", "layer.1.layer_norm.weight"}}},
	Required: []string{"shared.weight", "encoder.embed_tokens.weight", "encoder.final_layer_norm.weight",
		"encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"},
}

var zimageLayers = []LayerSpec{
	{Name: "attention.to_qkv", Kind: w4a4},
	{Name: "attention.to_out.0", Kind: w4a4},
	{Name: "feed_forward.net.0.proj", Kind: w4a4},
	{Name: "feed_forward.net.2", Kind: w4a4},
}

// LayerSpecOf returns the spec of a quantized layer name of a preset
// family, ok false when the family's loaders build no such module.
func LayerSpecOf(presetFamily, layer string) (*LayerSpec, bool) {
	f, ok := Families[tableFamily(presetFamily)]
	if !ok {
		return nil, false
	}
	b, _, rel, ok := f.Block(layer)
	if !ok {
		return nil, false
	}
	return b.Spec(rel)
}

// blockIndex returns the trailing block number of a prefix "stem.N." (-1
// when there is none).
func blockIndex(prefix string) int {
	p := strings.TrimSuffix(prefix, ".")
	i := strings.LastIndexByte(p, '.')
	n := 0
	if i < 0 || i == len(p)-1 {
		return -1
	}
	for _, c := range p[i+1:] {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

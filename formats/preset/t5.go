package preset

import (
	"fmt"
	"strings"
)

// t5 is the T5-XXL text encoder (T5 v1.1, gated-GELU feed-forward: FLUX's
// and SD3's second text encoder) as transformers' T5EncoderModel names it,
// output for nunchaku's NunchakuT5EncoderModel
// (nunchaku/models/text_encoders/t5_encoder.py from_pretrained, read at
// nunchaku 3a3cc3d) and ComfyUI-nunchaku's NunchakuTextEncoderLoaderV2,
// which hands a file whose metadata model_class is "NunchakuT5EncoderModel"
// to the same from_pretrained.
//
// from_pretrained builds T5EncoderModel(T5Config(**json.loads(
// metadata["config"]))), replaces every nn.Linear whose "<name>.qweight"
// the file holds by a W4Linear (group 128: text_encoders/linear.py, the
// TinyChat layout; Role W4A16G128) and loads the file with
// load_state_dict(strict=True). So which linears are 4-bit is the file's
// choice: the code does not say which subset the published nunchaku T5
// file quantizes. We quantize all seven linears of every block,
// layer.0.SelfAttention.{q,k,v,o} and layer.1.DenseReluDense.{wi_0,wi_1,wo}
// (no bias: T5's linears have none; a bias in the file would be carried,
// though the strict load rejects it), except a linear whose in-features are
// not a multiple of 128 or out-features not a multiple of 8, which W4Linear
// cannot build: it stays a 16-bit nn.Linear, which the loader keeps where
// the file has no qweight.
//
// Everything else is written 16-bit under its transformers name and must
// be present (the load is strict): shared.weight, every block's
// layer.{0,1}.layer_norm.weight, block 0's relative_attention_bias and
// encoder.final_layer_norm.weight. T5EncoderModel registers the token
// embedding twice — self.shared, and T5Stack's embed_tokens, which is the
// same module (modeling_t5.py T5EncoderModel.__init__: T5Stack(
// encoder_config, self.shared)) — so its state_dict() and the strict load
// need both shared.weight and encoder.embed_tokens.weight; checkpoints
// saved with the tied copy dropped get encoder.embed_tokens.weight as a
// copy of shared.weight (or the reverse).
//
// Input names: transformers' (no prefix), or ComfyUI's full-checkpoint
// prefix "text_encoders.t5xxl.transformer." (output names drop it). A
// decoder (T5ForConditionalGeneration) is refused: nunchaku's class is the
// encoder alone. Run time: W4Linear calls gemm_awq (group 128 only) from
// 8 tokens on and gemv_awq below, whose C++ asserts group 64
// (src/kernels/awq/gemv_awq.cu gemv_awq), so the 4-bit T5 is meant for
// prompts padded to ≥ 8 tokens, as FLUX pipelines pad them.
type t5 struct{}

var _ Family = t5{}

func init() { register(t5{}) }

func (t5) Name() string { return "t5-xxl" }

// t5Prefixes are the name prefixes a T5 encoder file may carry.
var t5Prefixes = []string{"", "text_encoders.t5xxl.transformer."}

// t5Prefix finds the prefix under which the table holds a gated T5
// encoder: a gated feed-forward (wi_0, which T5 v1.0's "wi" lacks), block
// 0's relative position bias and a token embedding.
func t5Prefix(t Table) (string, bool) {
	for _, p := range t5Prefixes {
		_, a := t.Shape(p + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight")
		_, b := t.Shape(p + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
		_, c := t.Shape(p + "shared.weight")
		_, d := t.Shape(p + "encoder.embed_tokens.weight")
		if a && b && (c || d) {
			return p, true
		}
	}
	return "", false
}

func (t5) Detect(t Table) bool { _, ok := t5Prefix(t); return ok }

// t5Linears are a block's linears, relative to "encoder.block.<i>.".
var t5Linears = []struct{ module, reason string }{
	{"layer.0.SelfAttention.q", "attention q"},
	{"layer.0.SelfAttention.k", "attention k"},
	{"layer.0.SelfAttention.v", "attention v"},
	{"layer.0.SelfAttention.o", "attention output"},
	{"layer.1.DenseReluDense.wi_0", "gated-GELU feed-forward: gate (GELU) input"},
	{"layer.1.DenseReluDense.wi_1", "gated-GELU feed-forward: linear input"},
	{"layer.1.DenseReluDense.wo", "feed-forward output"},
}

// t5BlockNorms are every block's 16-bit tensors.
var t5BlockNorms = []keepDecl{
	{module: "layer.0.layer_norm.weight", reason: "norm"},
	{module: "layer.1.layer_norm.weight", reason: "norm"},
}

const (
	t5Bias     = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
	t5Shared   = "shared.weight"
	t5Embed    = "encoder.embed_tokens.weight"
	t5Final    = "encoder.final_layer_norm.weight"
	t5Stem     = "encoder.block."
	t5EmbedWhy = "token embedding"
)

var t5Outside = rules(
	`^encoder\.final_layer_norm\.weight$`, "norm",
	`^encoder\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$`, "relative position bias",
)

func (f t5) Plan(t Table, opt Options) (*Plan, error) {
	prefix, ok := t5Prefix(t)
	if !ok {
		prefix = ""
	}
	p := newPlanner(t, f.Name(), "NunchakuT5EncoderModel", "transformers", prefix)
	var dec []string
	for _, n := range t.Names() {
		if local, ok := strings.CutPrefix(n, prefix); ok && (strings.HasPrefix(local, "decoder.") || strings.HasPrefix(local, "lm_head.")) {
			dec = append(dec, n)
		}
	}
	if len(dec) > 0 {
		return nil, fmt.Errorf("preset %s: tensor %s (and %d more decoder/lm_head tensors): an encoder-decoder T5 checkpoint; nunchaku's NunchakuT5EncoderModel is the encoder alone (save T5EncoderModel's weights)",
			f.Name(), dec[0], len(dec)-1)
	}
	emb := t5Shared
	if !p.has(emb) {
		emb = t5Embed
	}
	V, D := p.dim(emb, 0), p.dim(emb, 1)
	nb, H := p.dim(t5Bias, 0), p.dim(t5Bias, 1)
	inner := p.dim("encoder.block.0.layer.0.SelfAttention.q.weight", 0)
	F := p.dim("encoder.block.0.layer.1.DenseReluDense.wi_0.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	if H <= 0 || inner%H != 0 {
		return nil, fmt.Errorf("preset %s: tensor %s: %d heads do not divide the attention width %d of %s",
			f.Name(), prefix+t5Bias, H, inner, prefix+"encoder.block.0.layer.0.SelfAttention.q.weight")
	}
	idx := blockIndices(t, prefix, t5Stem)
	if err := contiguous(idx, prefix+t5Stem); err != nil {
		p.errorf("%v", err)
	}
	for _, i := range idx {
		b := fmt.Sprintf("%s%d.", t5Stem, i)
		for _, l := range t5Linears {
			rows, cols, ok := p.matrix(b+l.module+".weight", false)
			if !ok {
				continue
			}
			if cols%128 != 0 || rows%8 != 0 {
				p.keep(b+l.module+".weight", b+l.module+".weight",
					fmt.Sprintf("%s [%d %d]: W4Linear needs in-features a multiple of 128 and out-features of 8; nunchaku keeps an nn.Linear where the file has no qweight", l.reason, rows, cols))
				if p.has(b + l.module + ".bias") {
					p.keep(b+l.module+".bias", b+l.module+".bias", "bias of a 16-bit linear")
				}
				continue
			}
			p.block([]layerDecl{{name: l.module, role: W4A16G128, reason: l.reason + ": weight-only, W4Linear (group 128)",
				parts: []part{{module: l.module}}}}, dims{D: D, H: F}, b, "", b, false)
		}
		p.keepBlock(t5BlockNorms, b, "", b, false)
		for _, k := range t5BlockNorms { // the strict load needs them
			if name := b + k.module; !p.has(name) {
				p.errorf("tensor %s: missing", prefix+name)
			}
		}
	}
	if !p.has(t5Final) {
		p.errorf("tensor %s: missing", prefix+t5Final)
	}
	// The tied embedding under both of its state_dict names (kept here, not
	// by finish: a copy's source counts as used).
	for _, n := range []string{t5Shared, t5Embed} {
		if p.has(n) {
			p.keep(n, n, t5EmbedWhy)
		}
	}
	for _, c := range [][2]string{{t5Shared, t5Embed}, {t5Embed, t5Shared}} {
		if p.has(c[0]) && !p.has(c[1]) {
			p.keepPieces(Kept{Name: c[1], Reason: t5EmbedWhy + ", copied from " + c[0] + " (T5EncoderModel.state_dict() lists the module under both names)",
				Transform: "concat", Shape: []int64{int64(V), int64(D)},
				Pieces: []Piece{{Tensor: c[0], SrcRows: All(V), Rows: All(V)}}})
		}
	}
	// Widths and counts from the file; layer_norm_epsilon and
	// relative_attention_max_distance (no tensor shows them) and the token
	// ids are google/t5-v1_1-xxl's config.json values, which FLUX's
	// text_encoder_2 carries.
	p.plan.Config = configJSON(map[string]any{
		"architectures":                   []string{"T5EncoderModel"},
		"classifier_dropout":              0.0,
		"d_ff":                            F,
		"d_kv":                            inner / H,
		"d_model":                         D,
		"decoder_start_token_id":          0,
		"dense_act_fn":                    "gelu_new",
		"dropout_rate":                    0.1,
		"eos_token_id":                    1,
		"feed_forward_proj":               "gated-gelu",
		"initializer_factor":              1.0,
		"is_encoder_decoder":              true,
		"is_gated_act":                    true,
		"layer_norm_epsilon":              1e-6,
		"model_type":                      "t5",
		"num_decoder_layers":              len(idx),
		"num_heads":                       H,
		"num_layers":                      len(idx),
		"pad_token_id":                    0,
		"relative_attention_max_distance": 128,
		"relative_attention_num_buckets":  nb,
		"tie_word_embeddings":             false,
		"use_cache":                       true,
		"vocab_size":                      V,
	})
	return p.finish(opt, classify(t5Outside))
}

// Skeleton lists T5-XXL at scale: width 4096·scale with 64-wide heads,
// feed-forward 10240·scale, Blocks blocks (24 when 0), 32 relative
// position buckets and the real vocabulary of 32128 (an interface width);
// shared.weight only (checkpoints saved with the tied encoder.embed_tokens
// dropped), so plans exercise the copy.
func (f t5) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if opt.Naming != "" && opt.Naming != "diffusers" && opt.Naming != "transformers" {
		return nil, fmt.Errorf("family %s has only the transformers naming, not %q", f.Name(), opt.Naming)
	}
	D := scaled(4096, opt.Scale)
	F := scaled(10240, opt.Scale)
	const dkv, buckets, vocab = 64, 32, 32128
	H := D / dkv
	n := blocksOr(opt.Blocks, 24)
	var s skel
	s.vec(t5Shared, vocab, D)
	s.norm("encoder.final_layer_norm", D, false)
	for i := range n {
		b := fmt.Sprintf("%s%d.", t5Stem, i)
		for _, m := range []string{"q", "k", "v"} {
			s.lin(b+"layer.0.SelfAttention."+m, H*dkv, D, false)
		}
		s.lin(b+"layer.0.SelfAttention.o", D, H*dkv, false)
		if i == 0 {
			s.vec(b+"layer.0.SelfAttention.relative_attention_bias.weight", buckets, H)
		}
		s.norm(b+"layer.0.layer_norm", D, false)
		s.lin(b+"layer.1.DenseReluDense.wi_0", F, D, false)
		s.lin(b+"layer.1.DenseReluDense.wi_1", F, D, false)
		s.lin(b+"layer.1.DenseReluDense.wo", D, F, false)
		s.norm(b+"layer.1.layer_norm", D, false)
	}
	return s, nil
}

package preset

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
)

// zImage is Z-Image (diffusers ZImageTransformer2DModel,
// models/transformers/transformer_z_image.py), output in the names of
// nunchaku's NunchakuZImageTransformer2DModel
// (nunchaku/models/transformers/transformer_zimage.py), which patches every
// block of layers, noise_refiner and context_refiner (quantization_config
// skip_refiners false, the loader's default):
//
//   - NunchakuZImageAttention fuses attention.to_q|to_k|to_v into
//     attention.to_qkv (fuse_linears, rows in that order; the processor
//     chunks q, k, v back in that order) and makes attention.to_out.0 W4A4.
//   - _convert_z_image_ff replaces the block's FeedForward (w1, w2, w3,
//     forward w2(silu(w1 x) · w3 x)) by a diffusers FeedForward with
//     activation_fn "swiglu": feed_forward.net.0.proj [2F, D] and
//     feed_forward.net.2 [D, F], both W4A4 (NunchakuSDXLFeedForward). It
//     copies no weights, so the file must hold them in the new layout:
//     diffusers SwiGLU.forward splits proj's output as
//     "hidden_states, gate = chunk(2)" and returns hidden_states ·
//     silu(gate), so rows [0, F) are w3 (the ungated half) and rows
//     [F, 2F) are w1 (the gate).
//
// No layer has a bias (Attention bias=False, out_bias=False; FeedForward
// bias=False) and none is Shifted: net.2 reads the SwiGLU product, signed,
// and nunchaku leaves act_unsigned False. The loader renames nothing; every
// other tensor (norms, adaLN_modulation.0, embedders, final layer, pad
// tokens) stays 16-bit under its diffusers name and must be present, since
// the load is strict.
type zImage struct{}

var _ Family = zImage{}

func init() { register(zImage{}) }

func (zImage) Name() string { return "z-image" }

// Detect looks for Z-Image's diffusers names: block attention
// "attention.to_q", FFN "feed_forward.w1" (Lumina-Next, also "layers.N.",
// has attn1 and linear_1..3) and the caption embedder cap_embedder.1.
func (zImage) Detect(t Table) bool {
	_, a := t.Shape("layers.0.attention.to_q.weight")
	_, b := t.Shape("layers.0.feed_forward.w1.weight")
	_, c := t.Shape("cap_embedder.1.weight")
	return a && b && c
}

var zImageBlock = []layerDecl{
	{name: "attention.to_qkv", role: W4A4, reason: "attention q|k|v", parts: []part{
		{module: "attention.to_q"}, {module: "attention.to_k"}, {module: "attention.to_v"}}},
	{name: "attention.to_out.0", role: W4A4, reason: "attention output", parts: []part{{module: "attention.to_out.0"}}},
	{name: "feed_forward.net.0.proj", role: W4A4,
		reason: "SwiGLU up: w3 rows, then w1 (gate) rows, as diffusers SwiGLU chunks them",
		parts:  []part{{module: "feed_forward.w3"}, {module: "feed_forward.w1"}}},
	{name: "feed_forward.net.2", role: W4A4, reason: "SwiGLU down (signed input)", parts: []part{{module: "feed_forward.w2"}}},
}

// zImageNorms are every block's 16-bit tensors.
var zImageNorms = []keepDecl{
	{module: "attention.norm_q.weight", reason: "norm"},
	{module: "attention.norm_k.weight", reason: "norm"},
	{module: "attention_norm1.weight", reason: "norm"},
	{module: "attention_norm2.weight", reason: "norm"},
	{module: "ffn_norm1.weight", reason: "norm"},
	{module: "ffn_norm2.weight", reason: "norm"},
}

// zImageModulated adds the adaLN linear of the blocks built with
// modulation=True (layers, noise_refiner; not context_refiner). nunchaku's
// Z-Image keeps it an nn.Linear.
var zImageModulated = append(append([]keepDecl(nil), zImageNorms...),
	keepDecl{module: "adaLN_modulation.0.weight", reason: "adaLN modulation (16-bit in nunchaku's Z-Image)"},
	keepDecl{module: "adaLN_modulation.0.bias", reason: "adaLN modulation (16-bit in nunchaku's Z-Image)"},
)

var zImageOutside = rules(
	`^all_x_embedder\.\d+-\d+\.(weight|bias)$`, "embedder",
	`^all_final_layer\.\d+-\d+\.adaLN_modulation\.1\.(weight|bias)$`, "final norm modulation",
	`^all_final_layer\.\d+-\d+\.linear\.(weight|bias)$`, "final projection",
	`^t_embedder\.mlp\.[02]\.(weight|bias)$`, "embedder",
	`^cap_embedder\.0\.weight$`, "norm",
	`^cap_embedder\.1\.(weight|bias)$`, "embedder",
	`^(x_pad_token|cap_pad_token)$`, "pad token",
)

var zImagePatchRe = regexp.MustCompile(`^all_x_embedder\.(\d+)-(\d+)\.weight$`)

// zImagePatches returns the (patch_size, f_patch_size) pairs of the file's
// all_x_embedder entries (ModuleDict keys "p-f"), sorted.
func zImagePatches(t Table) [][2]int {
	var out [][2]int
	for _, n := range t.Names() {
		if m := zImagePatchRe.FindStringSubmatch(n); m != nil {
			p, _ := strconv.Atoi(m[1])
			f, _ := strconv.Atoi(m[2])
			out = append(out, [2]int{p, f})
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i][0] != out[j][0] {
			return out[i][0] < out[j][0]
		}
		return out[i][1] < out[j][1]
	})
	return out
}

// zImageAxes returns RoPE axes_dims for head dim hd: Z-Image's [32, 48, 48]
// at 128 (its config.json); otherwise a quarter and two equal halves of the
// rest, all even (our choice: the model only asserts sum(axes_dims) = hd).
func zImageAxes(hd int) []int {
	a := (hd / 4) &^ 1
	b := ((hd - a) / 2) &^ 1
	return []int{a, b, hd - a - b}
}

func (f zImage) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "NunchakuZImageTransformer2DModel", "diffusers", "")
	D := p.dim("cap_embedder.1.weight", 0)
	capDim := p.dim("cap_embedder.1.weight", 1)
	hd := p.dim("layers.0.attention.norm_q.weight", 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	if hd <= 0 || D%hd != 0 {
		return nil, fmt.Errorf("preset %s: tensor layers.0.attention.norm_q.weight: head dim %d does not divide dim %d", f.Name(), hd, D)
	}
	dimsOf := func(string) dims { return dims{D: D} }
	n := p.stack("layers.", zImageBlock, zImageModulated, dimsOf)
	nr := p.stack("noise_refiner.", zImageBlock, zImageModulated, dimsOf)
	nc := p.stack("context_refiner.", zImageBlock, zImageNorms, dimsOf)
	if nr != nc {
		p.errorf("noise_refiner has %d blocks, context_refiner %d: ZImageTransformer2DModel builds n_refiner_layers of each", nr, nc)
	}
	// nunchaku loads strictly: every block tensor must be there (the keep
	// tables skip absent tensors).
	for _, s := range []struct {
		stem  string
		n     int
		decls []keepDecl
	}{{"layers.", n, zImageModulated}, {"noise_refiner.", nr, zImageModulated}, {"context_refiner.", nc, zImageNorms}} {
		for i := range s.n {
			for _, k := range s.decls {
				if name := fmt.Sprintf("%s%d.%s", s.stem, i, k.module); !p.has(name) {
					p.errorf("tensor %s: missing", name)
				}
			}
		}
	}
	for _, name := range []string{"t_embedder.mlp.0.weight", "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight",
		"t_embedder.mlp.2.bias", "cap_embedder.0.weight", "cap_embedder.1.bias", "x_pad_token", "cap_pad_token"} {
		if !p.has(name) {
			p.errorf("tensor %s: missing", name)
		}
	}
	patches := zImagePatches(t)
	if len(patches) == 0 {
		p.errorf("tensor all_x_embedder.2-1.weight: missing (no all_x_embedder.<p>-<f>.weight)")
	}
	var ps, fs []int
	in := 0
	for _, pf := range patches {
		key := fmt.Sprintf("%d-%d", pf[0], pf[1])
		for _, name := range []string{"all_x_embedder." + key + ".bias", "all_final_layer." + key + ".linear.weight",
			"all_final_layer." + key + ".linear.bias", "all_final_layer." + key + ".adaLN_modulation.1.weight",
			"all_final_layer." + key + ".adaLN_modulation.1.bias"} {
			if !p.has(name) {
				p.errorf("tensor %s: missing", name)
			}
		}
		// x_embedder: Linear(f·p·p·in_channels, dim).
		x := "all_x_embedder." + key + ".weight"
		k, per := p.dim(x, 1), pf[1]*pf[0]*pf[0]
		if per <= 0 || k%per != 0 || (in != 0 && k/per != in) {
			p.errorf("tensor %s: %d input columns, not %d·in_channels (in_channels %d)", x, k, per, in)
		} else {
			in = k / per
		}
		ps, fs = append(ps, pf[0]), append(fs, pf[1])
	}
	// Widths and counts from the file; axes_lens, norm_eps, rope_theta and
	// t_scale (no tensor shows them) are Tongyi-MAI/Z-Image-Turbo's
	// transformer/config.json values.
	p.plan.Config = configJSON(map[string]any{
		"_class_name":      "ZImageTransformer2DModel",
		"all_f_patch_size": fs,
		"all_patch_size":   ps,
		"axes_dims":        zImageAxes(hd),
		"axes_lens":        []int{1536, 512, 512},
		"cap_feat_dim":     capDim,
		"dim":              D,
		"in_channels":      in,
		"n_heads":          D / hd,
		"n_kv_heads":       D / hd, // unused by the diffusers model (q, k, v all have n_heads heads)
		"n_layers":         n,
		"n_refiner_layers": nr,
		"norm_eps":         1e-5,
		"qk_norm":          true,
		"rope_theta":       256.0,
		"t_scale":          1000.0,
	})
	return p.finish(opt, classify(zImageOutside))
}

// Skeleton lists Z-Image at scale: width 3840·scale (head dim 128), SwiGLU
// hidden int(dim/3·8) as ZImageTransformerBlock computes it, Blocks layers
// (30 when 0) and min(2, layers) blocks in each refiner; caption width
// 2560, 16 latent channels, patch 2 (all_x_embedder "2-1").
func (f zImage) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	D := scaled(3840, opt.Scale)
	const hd = 128
	F := int(float64(D) / 3 * 8)
	A := min(D, 256) // ADALN_EMBED_DIM
	const capDim, in, patch = 2560, 16, 2
	n := blocksOr(opt.Blocks, 30)
	r := min(2, n)
	var s skel
	s.lin("all_x_embedder.2-1", D, patch*patch*in, true)
	s.lin("all_final_layer.2-1.linear", patch*patch*in, D, true)
	s.lin("all_final_layer.2-1.adaLN_modulation.1", D, A, true)
	s.lin("t_embedder.mlp.0", 1024, 256, true)
	s.lin("t_embedder.mlp.2", A, 1024, true)
	s.norm("cap_embedder.0", capDim, false)
	s.lin("cap_embedder.1", D, capDim, true)
	s.vec("x_pad_token", 1, D)
	s.vec("cap_pad_token", 1, D)
	block := func(b string, modulation bool) {
		for _, m := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
			s.lin(b+"attention."+m, D, D, false)
		}
		s.norm(b+"attention.norm_q", hd, false)
		s.norm(b+"attention.norm_k", hd, false)
		s.lin(b+"feed_forward.w1", F, D, false)
		s.lin(b+"feed_forward.w2", D, F, false)
		s.lin(b+"feed_forward.w3", F, D, false)
		for _, m := range []string{"attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2"} {
			s.norm(b+m, D, false)
		}
		if modulation {
			s.lin(b+"adaLN_modulation.0", 4*D, A, true)
		}
	}
	for i := range n {
		block(fmt.Sprintf("layers.%d.", i), true)
	}
	for i := range r {
		block(fmt.Sprintf("noise_refiner.%d.", i), true)
		block(fmt.Sprintf("context_refiner.%d.", i), false)
	}
	return s, nil
}

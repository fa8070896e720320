package preset

import "fmt"

// sana is SANA (diffusers SanaTransformer2DModel), output in the names of
// nunchaku's C++ SanaModel (src/SanaModel.cpp), which loads every tensor
// under "transformer_blocks." itself; the rest stays with diffusers:
//
//	attn.qkv_proj        attn1.to_q|to_k|to_v, each padded to dim_pad = ⌈D/128⌉·128 rows
//	attn.out_proj        attn1.to_out.0
//	cross_attn.q_linear  attn2.to_q
//	cross_attn.kv_linear attn2.to_k ‖ attn2.to_v, 16-bit (text side)
//	cross_attn.out_proj  attn2.to_out.0
//	ff.inverted_conv     ff.conv_inverted (1×1 conv), its two GLU halves each
//	                     padded to nunchaku's hidden size ⌈H/64⌉·64 rows
//	ff.depth_conv        ff.conv_depth, 16-bit, halves padded alike, stored
//	                     [2·Hpad, 3, 3, 1] as nunchaku's DWCONV declares it
//	ff.point_conv        ff.conv_point (1×1 conv)
//
// No layer is Shifted: nunchaku quantizes point_conv's input (a GLU output)
// signed, and the shift exists only on its fused GELU path.
type sana struct{}

var _ Family = sana{}

func init() { register(sana{}) }

func (sana) Name() string { return "sana" }

func (sana) Detect(t Table) bool {
	_, a := t.Shape("transformer_blocks.0.ff.conv_inverted.weight")
	_, b := t.Shape("transformer_blocks.0.attn2.to_k.weight")
	return a && b
}

func slotDpad(d dims) int { return d.Dpad }
func slotHpad(d dims) int { return d.Hpad }

var sanaBlock = []layerDecl{
	{name: "attn.qkv_proj", role: W4A4, reason: "linear attention q|k|v", parts: []part{
		{module: "attn1.to_q", slot: slotDpad, noBias: true},
		{module: "attn1.to_k", slot: slotDpad, noBias: true},
		{module: "attn1.to_v", slot: slotDpad, noBias: true}}},
	{name: "attn.out_proj", role: W4A4, reason: "linear attention output", parts: []part{{module: "attn1.to_out.0"}}},
	{name: "cross_attn.q_linear", role: W4A4, reason: "cross-attention q (image side)", parts: []part{{module: "attn2.to_q"}}},
	{name: "cross_attn.out_proj", role: W4A4, reason: "cross-attention output", parts: []part{{module: "attn2.to_out.0"}}},
	{name: "ff.inverted_conv", role: W4A4, conv: true, reason: "Mix-FFN 1×1 conv up (GLU value|gate)", parts: []part{
		{module: "ff.conv_inverted", srcRows: func(d dims) Range { return Range{0, d.H} }, slot: slotHpad},
		{module: "ff.conv_inverted", srcRows: func(d dims) Range { return Range{d.H, 2 * d.H} }, slot: slotHpad}}},
	{name: "ff.point_conv", role: W4A4, conv: true, reason: "Mix-FFN 1×1 conv down", parts: []part{{module: "ff.conv_point", noBias: true}}},
}

var sanaKept = []keepDecl{{module: "scale_shift_table", reason: "adaLN-single table"}}

var sanaOutside = rules(
	`^(patch_embed|caption_projection|caption_norm)\.`, "embedder",
	`^time_embed\.`, "timestep embedder and adaLN-single",
	`^scale_shift_table$`, "final norm modulation",
	`^proj_out\.`, "final projection",
)

func (f sana) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "NunchakuSanaTransformer2DModel", "diffusers", "")
	p.requireBiases(opt) // models.md: +b except attn1.to_q|k|v and ff.conv_point
	D := p.dim("transformer_blocks.0.attn1.to_q.weight", 0)
	H := p.dim("transformer_blocks.0.ff.conv_inverted.weight", 0) / 2
	if err := p.err(); err != nil {
		return nil, err
	}
	d := dims{D: D, Dpad: ceilTo(D, 128), H: H, Hpad: ceilTo(H, 64)}
	n := p.stack("transformer_blocks.", sanaBlock, sanaKept, func(string) dims { return d })
	for i := range n {
		b := fmt.Sprintf("transformer_blocks.%d.", i)
		p.sanaKV(b)
		p.sanaDepth(b, d)
	}
	crossHd := headDim(D, 112, 72, 64, 32)
	p.plan.Config = configJSON(map[string]any{
		"_class_name":               "SanaTransformer2DModel",
		"attention_bias":            false,
		"attention_head_dim":        32,
		"caption_channels":          p.dim("caption_projection.linear_1.weight", 1),
		"cross_attention_dim":       D,
		"cross_attention_head_dim":  crossHd,
		"dropout":                   0.0,
		"in_channels":               p.dim("patch_embed.proj.weight", 1),
		"mlp_ratio":                 float64(H) / float64(D),
		"norm_elementwise_affine":   false,
		"norm_eps":                  1e-6,
		"num_attention_heads":       D / 32,
		"num_cross_attention_heads": D / crossHd,
		"num_layers":                n,
		"out_channels":              p.dim("proj_out.weight", 0),
		"patch_size":                1,
		"sample_size":               32,
	})
	return p.finish(opt, classify(sanaOutside))
}

// sanaKV keeps attn2.to_k ‖ attn2.to_v as cross_attn.kv_linear.
func (p *planner) sanaKV(b string) {
	out := b + "cross_attn.kv_linear"
	for _, suf := range []string{".weight", ".bias"} {
		k, v := b+"attn2.to_k"+suf, b+"attn2.to_v"+suf
		ks, okK := p.shape(k)
		vs, okV := p.shape(v)
		if !okK || !okV {
			if suf == ".weight" {
				p.errorf("tensor %s or %s: missing", p.prefix+k, p.prefix+v)
			}
			continue
		}
		if len(ks) != len(vs) || len(ks) == 0 || (len(ks) == 2 && ks[1] != vs[1]) {
			p.errorf("tensor %s: shape %v does not stack with %s %v", p.prefix+k, ks, p.prefix+v, vs)
			continue
		}
		r := int(ks[0])
		shape := append([]int64{ks[0] + vs[0]}, ks[1:]...)
		p.keepPieces(Kept{Name: out + suf, Reason: "cross-attention K/V (text side)", Transform: "concat", Shape: shape,
			Pieces: []Piece{{Tensor: k, SrcRows: All(r), Rows: All(r)}, {Tensor: v, SrcRows: All(int(vs[0])), Rows: Range{r, r + int(vs[0])}}}})
		if suf == ".weight" && len(ks) == 2 {
			p.alias(b+"attn2.to_k", Target{Layer: out + suf, Kept: true, SrcRows: All(r), Rows: All(r), Cols: All(int(ks[1]))})
			p.alias(b+"attn2.to_v", Target{Layer: out + suf, Kept: true, SrcRows: All(int(vs[0])), Rows: Range{r, r + int(vs[0])}, Cols: All(int(ks[1]))})
		}
	}
}

// sanaDepth keeps ff.conv_depth as ff.depth_conv: GLU halves moved to
// padded offsets, weight viewed as [2·Hpad, 3, 3, 1].
func (p *planner) sanaDepth(b string, d dims) {
	for _, suf := range []string{".weight", ".bias"} {
		src := b + "ff.conv_depth" + suf
		s, ok := p.shape(src)
		if !ok {
			p.errorf("tensor %s: missing", p.prefix+src)
			continue
		}
		if int(s[0]) != 2*d.H || (suf == ".weight" && (len(s) != 4 || s[1] != 1)) {
			p.errorf("tensor %s: shape %v, want [%d, 1, k, k] / [%d]", p.prefix+src, s, 2*d.H, 2*d.H)
			continue
		}
		shape := []int64{int64(2 * d.Hpad)}
		transform := "pad"
		if suf == ".weight" {
			shape = append(shape, s[2], s[3], 1)
			if d.Hpad == d.H {
				transform = "reshape"
			}
		} else if d.Hpad == d.H {
			p.keep(b+"ff.depth_conv"+suf, src, "depthwise 3×3 conv")
			continue
		}
		p.keepPieces(Kept{Name: b + "ff.depth_conv" + suf, Reason: "depthwise 3×3 conv", Transform: transform, Shape: shape,
			Pieces: []Piece{{Tensor: src, SrcRows: Range{0, d.H}, Rows: Range{0, d.H}},
				{Tensor: src, SrcRows: Range{d.H, 2 * d.H}, Rows: Range{d.Hpad, d.Hpad + d.H}}}})
	}
}

// Skeleton lists SANA 1600M at scale: width 2240·scale, Mix-FFN hidden
// 2.5·width, Blocks blocks (20 when 0).
func (f sana) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	D := scaled(2240, opt.Scale)
	H := D * 5 / 2
	var s skel
	s.conv("patch_embed.proj", D, 32, 1, true)
	s.lin("time_embed.emb.timestep_embedder.linear_1", D, 256, true)
	s.lin("time_embed.emb.timestep_embedder.linear_2", D, D, true)
	s.lin("time_embed.linear", 6*D, D, true)
	s.lin("caption_projection.linear_1", D, 2304, true)
	s.lin("caption_projection.linear_2", D, D, true)
	s.norm("caption_norm", D, false)
	s.vec("scale_shift_table", 2, D)
	s.lin("proj_out", 32, D, true)
	for i := range blocksOr(opt.Blocks, 20) {
		b := fmt.Sprintf("transformer_blocks.%d.", i)
		for _, m := range []string{"to_q", "to_k", "to_v"} {
			s.lin(b+"attn1."+m, D, D, false)
		}
		s.lin(b+"attn1.to_out.0", D, D, true)
		for _, m := range []string{"to_q", "to_k", "to_v", "to_out.0"} {
			s.lin(b+"attn2."+m, D, D, true)
		}
		s.conv(b+"ff.conv_inverted", 2*H, D, 1, true)
		s.vec(b+"ff.conv_depth.weight", 2*H, 1, 3, 3)
		s.vec(b+"ff.conv_depth.bias", 2*H)
		s.conv(b+"ff.conv_point", D, H, 1, false)
		s.vec(b+"scale_shift_table", 6, D)
	}
	return s, nil
}

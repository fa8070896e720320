package preset

import (
	"fmt"
	"regexp"
	"sort"
)

// dcae is the DC-AE f32c32 autoencoder (diffusers AutoencoderDC). Only its
// EfficientViT blocks hold linears worth quantizing: attn.to_q/k/v (one
// smoothing group), attn.to_out (reads the two-scale attention output,
// 2C), and the GLUMBConv's 1×1 convs conv_out.conv_inverted and
// conv_out.conv_point, quantized as linears (Conv1x1). The multi-scale
// depthwise and grouped convs, norms, 3×3 convs and everything outside the
// EfficientViT blocks stay 16-bit. nunchaku has no loader: output names are
// the module names.
type dcae struct{}

var _ Family = dcae{}

func init() { register(dcae{}) }

func (dcae) Name() string { return "dc-ae" }

func (dcae) Detect(t Table) bool {
	_, a := t.Shape("encoder.conv_in.weight")
	_, b := t.Shape("decoder.conv_out.weight")
	return a && b && len(dcaeBlocks(t)) > 0
}

var dcaeBlock = []layerDecl{
	{name: "attn.to_q", role: W4A4, group: "attn_input", reason: "linear attention q", parts: []part{{module: "attn.to_q"}}},
	{name: "attn.to_k", role: W4A4, group: "attn_input", reason: "linear attention k", parts: []part{{module: "attn.to_k"}}},
	{name: "attn.to_v", role: W4A4, group: "attn_input", reason: "linear attention v", parts: []part{{module: "attn.to_v"}}},
	{name: "attn.to_out", role: W4A4, reason: "attention output (two scales)", parts: []part{{module: "attn.to_out"}}},
	{name: "conv_out.conv_inverted", role: W4A4, conv: true, reason: "GLUMBConv 1×1 conv up", parts: []part{{module: "conv_out.conv_inverted"}}},
	{name: "conv_out.conv_point", role: W4A4, conv: true, reason: "GLUMBConv 1×1 conv down", parts: []part{{module: "conv_out.conv_point"}}},
}

var dcaeKept = []keepDecl{
	{module: "attn.to_qkv_multiscale.0.proj_in.weight", reason: "multi-scale depthwise 5×5 conv"},
	{module: "attn.to_qkv_multiscale.0.proj_out.weight", reason: "multi-scale grouped 1×1 conv"},
	{module: "attn.norm_out.weight", reason: "norm"}, {module: "attn.norm_out.bias", reason: "norm"},
	{module: "conv_out.conv_depth.weight", reason: "depthwise 3×3 conv"}, {module: "conv_out.conv_depth.bias", reason: "depthwise 3×3 conv"},
	{module: "conv_out.norm.weight", reason: "norm"}, {module: "conv_out.norm.bias", reason: "norm"},
}

var dcaeOutside = rules(
	`(^|\.)(conv_in|conv_out|conv1|conv2|conv)\.(weight|bias)$`, "3×3 conv",
	`(^|\.)(norm|norm_out)\.(weight|bias)$`, "norm",
)

var dcaeBlockRe = regexp.MustCompile(`^((?:encoder\.down_blocks|decoder\.up_blocks)\.\d+\.\d+)\.attn\.to_q\.weight$`)

func dcaeBlocks(t Table) []string {
	var out []string
	for _, n := range t.Names() {
		if m := dcaeBlockRe.FindStringSubmatch(n); m != nil {
			out = append(out, m[1]+".")
		}
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i], out[j]) })
	return out
}

func (f dcae) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "AutoencoderDC", "diffusers", "")
	blocks := dcaeBlocks(t)
	for _, b := range blocks {
		p.block(dcaeBlock, dims{D: p.dim(b+"attn.to_q.weight", 0)}, b, "", b, false)
		p.keepBlock(dcaeKept, b, "", b, false)
	}
	p.plan.Config = configJSON(map[string]any{
		"_class_name":         "AutoencoderDC",
		"attention_head_dim":  32,
		"in_channels":         p.dim("encoder.conv_in.weight", 1),
		"latent_channels":     p.dim("encoder.conv_out.weight", 0),
		"efficientvit_blocks": len(blocks),
	})
	return p.finish(opt, classify(dcaeOutside))
}

// Skeleton lists a DC-AE f32c32 stand-in at scale: stage widths
// 128, 256, 512, 512, 1024, 1024 (·scale); ResBlock stages 0–2 with
// 0/4/8 encoder and 0/5/10 decoder blocks, EfficientViT stages 3–5 with 2
// each; Blocks > 0 caps every stage at Blocks blocks.
func (f dcae) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	ch := []int{128, 256, 512, 512, 1024, 1024}
	for i := range ch {
		ch[i] = scaled(ch[i], opt.Scale)
	}
	enc, dec := []int{0, 4, 8, 2, 2, 2}, []int{0, 5, 10, 2, 2, 2}
	if opt.Blocks > 0 {
		for i := range enc {
			enc[i], dec[i] = min(enc[i], opt.Blocks), min(dec[i], opt.Blocks)
		}
	}
	const latent, hd = 32, 32
	var s skel
	resBlock := func(b string, c int) {
		s.conv(b+"conv1", c, c, 3, true)
		s.conv(b+"conv2", c, c, 3, false)
		s.norm(b+"norm", c, true)
	}
	evit := func(b string, c int) {
		for _, m := range []string{"to_q", "to_k", "to_v"} {
			s.lin(b+"attn."+m, c, c, false)
		}
		s.vec(b+"attn.to_qkv_multiscale.0.proj_in.weight", 3*c, 1, 5, 5)
		s.vec(b+"attn.to_qkv_multiscale.0.proj_out.weight", 3*c, hd, 1, 1)
		s.lin(b+"attn.to_out", c, 2*c, false)
		s.norm(b+"attn.norm_out", c, true)
		s.conv(b+"conv_out.conv_inverted", 8*c, c, 1, true)
		s.conv(b+"conv_out.conv_depth", 8*c, 1, 3, true)
		s.conv(b+"conv_out.conv_point", c, 4*c, 1, false)
		s.norm(b+"conv_out.norm", c, true)
	}
	block := func(b string, stage int) {
		if stage < 3 {
			resBlock(b, ch[stage])
		} else {
			evit(b, ch[stage])
		}
	}
	s.conv("encoder.conv_in", ch[0], 3, 3, true)
	for i := range ch {
		for j := range enc[i] {
			block(fmt.Sprintf("encoder.down_blocks.%d.%d.", i, j), i)
		}
		if i < len(ch)-1 {
			s.conv(fmt.Sprintf("encoder.down_blocks.%d.%d.conv", i, enc[i]), ch[i+1]/4, ch[i], 3, true)
		}
	}
	s.conv("encoder.conv_out", latent, ch[5], 3, true)
	s.conv("decoder.conv_in", ch[5], latent, 3, true)
	for i := range ch {
		j0 := 0
		if i < len(ch)-1 && dec[i] > 0 {
			s.conv(fmt.Sprintf("decoder.up_blocks.%d.0.conv", i), 4*ch[i], ch[i+1], 3, true)
			j0 = 1
		}
		for j := range dec[i] {
			block(fmt.Sprintf("decoder.up_blocks.%d.%d.", i, j0+j), i)
		}
	}
	s.norm("decoder.norm_out", ch[0], true)
	s.conv("decoder.conv_out", 3, ch[0], 3, true)
	return s, nil
}

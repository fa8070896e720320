package preset

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// sdxl is the SDXL base UNet (diffusers UNet2DConditionModel), output in the
// names of nunchaku's NunchakuSDXLUNet2DConditionModel
// (nunchaku/models/unets/unet_sdxl.py), which patches only the
// BasicTransformerBlocks: attn1.to_qkv fuses q|k|v, attn2.to_q and the
// to_out.0 projections and both ff linears are W4A4, attn2.to_k/to_v (text
// side) stay 16-bit. Everything else stays 16-bit: the attention modules'
// proj_in/proj_out (nunchaku does not patch them), resnet 3×3 convs, 1×1
// shortcuts and time projections, embedders, norms. ff.net.2 reads a GEGLU
// output (not bounded below), and nunchaku leaves it signed: not Shifted.
type sdxl struct{}

var _ Family = sdxl{}

func init() { register(sdxl{}) }

func (sdxl) Name() string { return "sdxl" }

func (sdxl) Detect(t Table) bool {
	_, a := t.Shape("add_embedding.linear_1.weight")
	_, b := t.Shape("conv_in.weight")
	return a && b && len(sdxlBlocks(t)) > 0
}

var sdxlBlock = []layerDecl{
	{name: "attn1.to_qkv", role: W4A4, reason: "self-attention q|k|v", parts: []part{
		{module: "attn1.to_q", noBias: true}, {module: "attn1.to_k", noBias: true}, {module: "attn1.to_v", noBias: true}}},
	{name: "attn1.to_out.0", role: W4A4, reason: "self-attention output", parts: []part{{module: "attn1.to_out.0"}}},
	{name: "attn2.to_q", role: W4A4, reason: "cross-attention q (image side)", parts: []part{{module: "attn2.to_q", noBias: true}}},
	{name: "attn2.to_out.0", role: W4A4, reason: "cross-attention output", parts: []part{{module: "attn2.to_out.0"}}},
	{name: "ff.net.0.proj", role: W4A4, reason: "GEGLU up", parts: []part{{module: "ff.net.0.proj"}}},
	{name: "ff.net.2", role: W4A4, reason: "MLP down (GEGLU input, signed)", parts: []part{{module: "ff.net.2"}}},
}

var sdxlKept = []keepDecl{
	{module: "attn2.to_k.weight", reason: "cross-attention K/V (text side)"},
	{module: "attn2.to_v.weight", reason: "cross-attention K/V (text side)"},
	{module: "norm1.weight", reason: "norm"}, {module: "norm1.bias", reason: "norm"},
	{module: "norm2.weight", reason: "norm"}, {module: "norm2.bias", reason: "norm"},
	{module: "norm3.weight", reason: "norm"}, {module: "norm3.bias", reason: "norm"},
}

var sdxlOutside = rules(
	`\.proj_(in|out)\.(weight|bias)$`, "attention proj_in/proj_out (16-bit in nunchaku's SDXL)",
	`\.conv_shortcut\.(weight|bias)$`, "resnet 1×1 shortcut conv",
	`\.time_emb_proj\.(weight|bias)$`, "resnet time projection",
	`^(time_embedding|add_embedding)\.`, "embedder",
	`(^|\.)(conv|conv1|conv2|conv_in|conv_out)\.(weight|bias)$`, "3×3 conv",
	`(^|\.)(norm|norm1|norm2|conv_norm_out)\.(weight|bias)$`, "norm",
)

var sdxlBlockRe = regexp.MustCompile(`^(.*\.transformer_blocks\.\d+)\.attn1\.to_q\.weight$`)

// sdxlBlocks returns the transformer block prefixes (with trailing dot) in
// natural order.
func sdxlBlocks(t Table) []string {
	var out []string
	for _, n := range t.Names() {
		if m := sdxlBlockRe.FindStringSubmatch(n); m != nil {
			out = append(out, m[1]+".")
		}
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i], out[j]) })
	return out
}

// naturalLess compares dotted names, numeric components as numbers.
func naturalLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		x, e1 := strconv.Atoi(as[i])
		y, e2 := strconv.Atoi(bs[i])
		if e1 == nil && e2 == nil {
			return x < y
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

func (f sdxl) Plan(t Table, opt Options) (*Plan, error) {
	p := newPlanner(t, f.Name(), "NunchakuSDXLUNet2DConditionModel", "diffusers", "")
	p.requireBiases(opt) // models.md: +b except attn1.to_q|k|v and attn2.to_q|k|v
	for _, b := range sdxlBlocks(t) {
		p.block(sdxlBlock, dims{D: p.dim(b+"attn1.to_q.weight", 0)}, b, "", b, false)
		p.keepBlock(sdxlKept, b, "", b, false)
	}
	var channels, layers, heads []int
	for i := 0; p.has(fmt.Sprintf("down_blocks.%d.resnets.0.conv2.weight", i)); i++ {
		c := p.dim(fmt.Sprintf("down_blocks.%d.resnets.0.conv2.weight", i), 0)
		channels = append(channels, c)
		heads = append(heads, c/64)
		layers = append(layers, len(blockIndices(t, "", fmt.Sprintf("down_blocks.%d.attentions.0.transformer_blocks.", i))))
	}
	for i := range layers {
		layers[i] = max(layers[i], 1) // diffusers lists 1 for blocks without attention
	}
	down, up := []string{}, []string{}
	for i := range channels {
		if p.has(fmt.Sprintf("down_blocks.%d.attentions.0.norm.weight", i)) {
			down = append(down, "CrossAttnDownBlock2D")
		} else {
			down = append(down, "DownBlock2D")
		}
		if p.has(fmt.Sprintf("up_blocks.%d.attentions.0.norm.weight", i)) {
			up = append(up, "CrossAttnUpBlock2D")
		} else {
			up = append(up, "UpBlock2D")
		}
	}
	cross := 0
	if bs := sdxlBlocks(t); len(bs) > 0 {
		cross = p.dim(bs[0]+"attn2.to_k.weight", 1)
	}
	p.plan.Config = configJSON(map[string]any{
		"_class_name":                           "UNet2DConditionModel",
		"act_fn":                                "silu",
		"addition_embed_type":                   "text_time",
		"addition_embed_type_num_heads":         64,
		"addition_time_embed_dim":               256,
		"attention_head_dim":                    heads,
		"block_out_channels":                    channels,
		"center_input_sample":                   false,
		"cross_attention_dim":                   cross,
		"down_block_types":                      down,
		"flip_sin_to_cos":                       true,
		"freq_shift":                            0,
		"in_channels":                           p.dim("conv_in.weight", 1),
		"layers_per_block":                      len(blockIndices(t, "", "down_blocks.0.resnets.")),
		"mid_block_scale_factor":                1,
		"norm_eps":                              1e-5,
		"norm_num_groups":                       32,
		"out_channels":                          p.dim("conv_out.weight", 0),
		"projection_class_embeddings_input_dim": p.dim("add_embedding.linear_1.weight", 1),
		"sample_size":                           128,
		"transformer_layers_per_block":          layers,
		"up_block_types":                        up,
		"use_linear_projection":                 true,
	})
	return p.finish(opt, classify(sdxlOutside))
}

// Skeleton lists the SDXL base UNet at scale: channels 320/640/1280·scale;
// attention modules at the 1280 level hold Blocks transformer blocks (10
// when 0) and those at the 640 level min(2, Blocks).
func (f sdxl) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	if err := onlyDiffusers(f.Name(), opt); err != nil {
		return nil, err
	}
	ch := []int{scaled(320, opt.Scale), scaled(640, opt.Scale), scaled(1280, opt.Scale)}
	t2 := blocksOr(opt.Blocks, 10)
	tl := []int{0, min(2, t2), t2}
	temb := 4 * ch[0]
	const text = 2048
	var s skel
	res := func(b string, in, out int) {
		s.norm(b+"norm1", in, true)
		s.conv(b+"conv1", out, in, 3, true)
		s.lin(b+"time_emb_proj", out, temb, true)
		s.norm(b+"norm2", out, true)
		s.conv(b+"conv2", out, out, 3, true)
		if in != out {
			s.conv(b+"conv_shortcut", out, in, 1, true)
		}
	}
	attn := func(b string, c, n int) {
		s.norm(b+"norm", c, true)
		s.lin(b+"proj_in", c, c, true)
		s.lin(b+"proj_out", c, c, true)
		for j := range n {
			tb := fmt.Sprintf("%stransformer_blocks.%d.", b, j)
			for _, k := range []string{"norm1", "norm2", "norm3"} {
				s.norm(tb+k, c, true)
			}
			for _, m := range []string{"to_q", "to_k", "to_v"} {
				s.lin(tb+"attn1."+m, c, c, false)
			}
			s.lin(tb+"attn1.to_out.0", c, c, true)
			s.lin(tb+"attn2.to_q", c, c, false)
			s.lin(tb+"attn2.to_k", c, text, false)
			s.lin(tb+"attn2.to_v", c, text, false)
			s.lin(tb+"attn2.to_out.0", c, c, true)
			s.lin(tb+"ff.net.0.proj", 8*c, c, true)
			s.lin(tb+"ff.net.2", c, 4*c, true)
		}
	}
	s.conv("conv_in", ch[0], 4, 3, true)
	s.lin("time_embedding.linear_1", temb, ch[0], true)
	s.lin("time_embedding.linear_2", temb, temb, true)
	s.lin("add_embedding.linear_1", temb, 2816, true)
	s.lin("add_embedding.linear_2", temb, temb, true)
	for i := range 3 {
		in := ch[max(i-1, 0)]
		for j := range 2 {
			b := fmt.Sprintf("down_blocks.%d.", i)
			res(fmt.Sprintf("%sresnets.%d.", b, j), map[bool]int{true: in, false: ch[i]}[j == 0], ch[i])
			if tl[i] > 0 {
				attn(fmt.Sprintf("%sattentions.%d.", b, j), ch[i], tl[i])
			}
		}
		if i < 2 {
			s.conv(fmt.Sprintf("down_blocks.%d.downsamplers.0.conv", i), ch[i], ch[i], 3, true)
		}
	}
	res("mid_block.resnets.0.", ch[2], ch[2])
	attn("mid_block.attentions.0.", ch[2], t2)
	res("mid_block.resnets.1.", ch[2], ch[2])
	prev := ch[2]
	for i := range 3 {
		out, inp := ch[2-i], ch[max(2-i-1, 0)]
		for j := range 3 {
			skip := out
			if j == 2 {
				skip = inp
			}
			rin := out
			if j == 0 {
				rin = prev
			}
			res(fmt.Sprintf("up_blocks.%d.resnets.%d.", i, j), rin+skip, out)
			if tl[2-i] > 0 {
				attn(fmt.Sprintf("up_blocks.%d.attentions.%d.", i, j), out, tl[2-i])
			}
		}
		if i < 2 {
			s.conv(fmt.Sprintf("up_blocks.%d.upsamplers.0.conv", i), out, out, 3, true)
		}
		prev = out
	}
	s.norm("conv_norm_out", ch[0], true)
	s.conv("conv_out", 4, ch[0], 3, true)
	return s, nil
}

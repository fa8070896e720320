package preset

import (
	"encoding/json"
	"fmt"
)

// flux is FLUX.1-dev or FLUX.1-schnell (diffusers FluxTransformer2DModel),
// read in the diffusers naming (optionally prefixed "transformer."), the
// original BFL naming or the ComfyUI naming (BFL with prefix
// "model.diffusion_model."). The output follows nunchaku's C++ FluxModel
// (src/FluxModel.cpp) and deepcompressor's nunchaku converter: fused
// qkv_proj/qkv_proj_context, out_proj…, the RMSNorm weights renamed to
// norm_q/norm_k/norm_added_q/norm_added_k directly under the block (the
// converter's "norm_q": "attn.norm_q" map), and everything outside the
// blocks under its diffusers name.
type flux struct{ dev bool }

var _ Family = (*flux)(nil)

func init() {
	register(&flux{dev: true})
	register(&flux{dev: false})
}

func (f *flux) Name() string {
	if f.dev {
		return "flux-dev"
	}
	return "flux-schnell"
}

const fluxClass = "NunchakuFluxTransformer2dModel"

// fluxNamings are the (naming, prefix, probe tensor) triples tried in order.
var fluxNamings = []struct{ naming, prefix, probe, guidance string }{
	{"diffusers", "", "transformer_blocks.0.norm1_context.linear.weight", "time_text_embed.guidance_embedder.linear_1.weight"},
	{"diffusers", "transformer.", "transformer_blocks.0.norm1_context.linear.weight", "time_text_embed.guidance_embedder.linear_1.weight"},
	{"bfl", "", "double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"},
	{"comfyui", "model.diffusion_model.", "double_blocks.0.img_attn.qkv.weight", "guidance_in.in_layer.weight"},
}

// fluxNaming returns the naming of t, its prefix and whether it has the
// guidance embedder (FLUX.1-dev).
func fluxNaming(t Table) (naming, prefix string, guidance, ok bool) {
	for _, n := range fluxNamings {
		if _, found := t.Shape(n.prefix + n.probe); found {
			_, g := t.Shape(n.prefix + n.guidance)
			return n.naming, n.prefix, g, true
		}
	}
	return "", "", false, false
}

func (f *flux) Detect(t Table) bool {
	_, _, g, ok := fluxNaming(t)
	return ok && g == f.dev
}

// fluxDouble declares a double (joint) block: diffusers module, BFL module
// and the BFL rows each logical linear takes.
var fluxDouble = []layerDecl{
	{name: "norm1.linear", role: W4A16, chunks: 6, reason: "adaLN modulation: weight-only",
		parts: []part{{module: "norm1.linear", orig: "img_mod.lin"}}},
	{name: "norm1_context.linear", role: W4A16, chunks: 6, reason: "adaLN modulation: weight-only",
		parts: []part{{module: "norm1_context.linear", orig: "txt_mod.lin"}}},
	{name: "qkv_proj", role: W4A4, reason: "attention q|k|v (image)", parts: []part{
		{module: "attn.to_q", orig: "img_attn.qkv", origRow: span(0, 1, unitD)},
		{module: "attn.to_k", orig: "img_attn.qkv", origRow: span(1, 2, unitD)},
		{module: "attn.to_v", orig: "img_attn.qkv", origRow: span(2, 3, unitD)}}},
	{name: "qkv_proj_context", role: W4A4, reason: "attention q|k|v (text)", parts: []part{
		{module: "attn.add_q_proj", orig: "txt_attn.qkv", origRow: span(0, 1, unitD)},
		{module: "attn.add_k_proj", orig: "txt_attn.qkv", origRow: span(1, 2, unitD)},
		{module: "attn.add_v_proj", orig: "txt_attn.qkv", origRow: span(2, 3, unitD)}}},
	{name: "out_proj", role: W4A4, reason: "attention output (image)",
		parts: []part{{module: "attn.to_out.0", orig: "img_attn.proj"}}},
	{name: "out_proj_context", role: W4A4, reason: "attention output (text)",
		parts: []part{{module: "attn.to_add_out", orig: "txt_attn.proj"}}},
	{name: "mlp_fc1", role: W4A4, reason: "MLP up (image)",
		parts: []part{{module: "ff.net.0.proj", orig: "img_mlp.0"}}},
	{name: "mlp_fc2", role: W4A4, shifted: true, reason: "MLP down (image), GELU input",
		parts: []part{{module: "ff.net.2", orig: "img_mlp.2"}}},
	{name: "mlp_context_fc1", role: W4A4, reason: "MLP up (text)",
		parts: []part{{module: "ff_context.net.0.proj", orig: "txt_mlp.0"}}},
	{name: "mlp_context_fc2", role: W4A4, shifted: true, reason: "MLP down (text), GELU input",
		parts: []part{{module: "ff_context.net.2", orig: "txt_mlp.2"}}},
}

var fluxDoubleKept = []keepDecl{
	{module: "attn.norm_q.weight", orig: "img_attn.norm.query_norm.scale", out: "norm_q.weight", reason: "norm"},
	{module: "attn.norm_k.weight", orig: "img_attn.norm.key_norm.scale", out: "norm_k.weight", reason: "norm"},
	{module: "attn.norm_added_q.weight", orig: "txt_attn.norm.query_norm.scale", out: "norm_added_q.weight", reason: "norm"},
	{module: "attn.norm_added_k.weight", orig: "txt_attn.norm.key_norm.scale", out: "norm_added_k.weight", reason: "norm"},
}

// fluxSingle declares a single block. BFL linear1 is q|k|v|mlp stacked
// (D, D, D, H rows); proj_out/linear2 reads attention ‖ MLP (D + H columns)
// and is split by columns, its bias going to mlp_fc2 (the last part).
var fluxSingle = []layerDecl{
	{name: "norm.linear", role: W4A16, chunks: 3, reason: "adaLN modulation: weight-only",
		parts: []part{{module: "norm.linear", orig: "modulation.lin"}}},
	{name: "qkv_proj", role: W4A4, group: "qkv_mlp_input", reason: "attention q|k|v", parts: []part{
		{module: "attn.to_q", orig: "linear1", origRow: span(0, 1, unitD)},
		{module: "attn.to_k", orig: "linear1", origRow: span(1, 2, unitD)},
		{module: "attn.to_v", orig: "linear1", origRow: span(2, 3, unitD)}}},
	{name: "mlp_fc1", role: W4A4, group: "qkv_mlp_input", reason: "MLP up (reads the qkv input)", parts: []part{
		{module: "proj_mlp", orig: "linear1", origRow: func(d dims) Range { return Range{3 * d.D, 3*d.D + d.H} }}}},
	{name: "out_proj", role: W4A4, reason: "attention output (proj_out columns [0, D))", parts: []part{
		{module: "proj_out", orig: "linear2", cols: span(0, 1, unitD)}}},
	{name: "mlp_fc2", role: W4A4, shifted: true, reason: "MLP down (proj_out columns [D, D+H)), GELU input", parts: []part{
		{module: "proj_out", orig: "linear2", cols: func(d dims) Range { return Range{d.D, d.D + d.H} }}}},
}

var fluxSingleKept = []keepDecl{
	{module: "attn.norm_q.weight", orig: "norm.query_norm.scale", out: "norm_q.weight", reason: "norm"},
	{module: "attn.norm_k.weight", orig: "norm.key_norm.scale", out: "norm_k.weight", reason: "norm"},
}

// fluxOutside maps the modules outside the blocks: diffusers ↔ BFL.
var fluxOutside = []struct {
	diff, orig, reason string
	swap               bool // BFL halves are (shift, scale), diffusers (scale, shift)
	dev                bool // only in FLUX.1-dev
}{
	{diff: "x_embedder", orig: "img_in", reason: "embedder"},
	{diff: "context_embedder", orig: "txt_in", reason: "embedder"},
	{diff: "time_text_embed.timestep_embedder.linear_1", orig: "time_in.in_layer", reason: "embedder"},
	{diff: "time_text_embed.timestep_embedder.linear_2", orig: "time_in.out_layer", reason: "embedder"},
	{diff: "time_text_embed.guidance_embedder.linear_1", orig: "guidance_in.in_layer", reason: "embedder", dev: true},
	{diff: "time_text_embed.guidance_embedder.linear_2", orig: "guidance_in.out_layer", reason: "embedder", dev: true},
	{diff: "time_text_embed.text_embedder.linear_1", orig: "vector_in.in_layer", reason: "embedder"},
	{diff: "time_text_embed.text_embedder.linear_2", orig: "vector_in.out_layer", reason: "embedder"},
	{diff: "norm_out.linear", orig: "final_layer.adaLN_modulation.1", reason: "final norm modulation", swap: true},
	{diff: "proj_out", orig: "final_layer.linear", reason: "final projection"},
}

func (f *flux) Plan(t Table, opt Options) (*Plan, error) {
	naming, prefix, g, ok := fluxNaming(t)
	if !ok {
		return nil, fmt.Errorf("preset %s: not a FLUX checkpoint (no %s)", f.Name(), fluxNamings[0].probe)
	}
	if g != f.dev {
		return nil, fmt.Errorf("preset %s: guidance embedder present = %v; this is %s", f.Name(), g,
			map[bool]string{true: "flux-dev", false: "flux-schnell"}[g])
	}
	bfl := naming != "diffusers"
	p := newPlanner(t, f.Name(), fluxClass, naming, prefix)
	p.requireBiases(opt) // models.md: all linears +b
	name := func(diff, orig string) string {
		if bfl {
			return orig
		}
		return diff
	}
	// Widths from the file.
	D := p.dim(name("x_embedder.weight", "img_in.weight"), 0)
	hd := p.dim(name("transformer_blocks.0.attn.norm_q.weight", "double_blocks.0.img_attn.norm.query_norm.scale"), 0)
	if err := p.err(); err != nil {
		return nil, err
	}
	double := blockIndices(t, prefix, name("transformer_blocks.", "double_blocks."))
	single := blockIndices(t, prefix, name("single_transformer_blocks.", "single_blocks."))
	if err := contiguous(double, prefix+name("transformer_blocks.", "double_blocks.")); err != nil {
		return nil, fmt.Errorf("preset %s: %w", f.Name(), err)
	}
	if err := contiguous(single, prefix+name("single_transformer_blocks.", "single_blocks.")); err != nil {
		return nil, fmt.Errorf("preset %s: %w", f.Name(), err)
	}
	for _, i := range double {
		diffB, origB := fmt.Sprintf("transformer_blocks.%d.", i), fmt.Sprintf("double_blocks.%d.", i)
		d := dims{D: D, H: p.dim(name(diffB+"ff.net.0.proj.weight", origB+"img_mlp.0.weight"), 0)}
		p.block(fluxDouble, d, diffB, origB, diffB, bfl)
		p.keepBlock(fluxDoubleKept, diffB, origB, diffB, bfl)
	}
	for _, i := range single {
		diffB, origB := fmt.Sprintf("single_transformer_blocks.%d.", i), fmt.Sprintf("single_blocks.%d.", i)
		d := dims{D: D}
		if bfl {
			d.H = p.dim(origB+"linear1.weight", 0) - 3*D
		} else {
			d.H = p.dim(diffB+"proj_mlp.weight", 0)
		}
		p.block(fluxSingle, d, diffB, origB, diffB, bfl)
		p.keepBlock(fluxSingleKept, diffB, origB, diffB, bfl)
	}
	for _, o := range fluxOutside {
		if o.dev && !f.dev {
			continue
		}
		for _, suf := range []string{".weight", ".bias"} {
			file := name(o.diff, o.orig) + suf
			s, ok := p.shape(file)
			if !ok {
				switch {
				case suf == ".weight":
					p.errorf("tensor %s: missing", prefix+file)
				case p.biased:
					p.missingBias(file)
				}
				continue
			}
			if o.swap && bfl {
				h := int(s[0]) / 2
				p.keepPieces(Kept{Name: o.diff + suf, Reason: o.reason, Transform: "swap-halves", Shape: s,
					Pieces: []Piece{{Tensor: file, SrcRows: Range{0, h}, Rows: Range{h, 2 * h}},
						{Tensor: file, SrcRows: Range{h, 2 * h}, Rows: Range{0, h}}}})
			} else {
				p.keep(o.diff+suf, file, o.reason)
			}
			if suf != ".weight" || len(s) != 2 {
				continue
			}
			rows, cols := int(s[0]), int(s[1])
			whole := Target{Layer: o.diff + suf, Kept: true, SrcRows: All(rows), Rows: All(rows), Cols: All(cols)}
			p.alias(o.diff, whole)
			if o.swap {
				h := rows / 2
				p.alias(o.orig, Target{Layer: o.diff + suf, Kept: true, SrcRows: Range{0, h}, Rows: Range{h, rows}, Cols: All(cols)})
				p.alias(o.orig, Target{Layer: o.diff + suf, Kept: true, SrcRows: Range{h, rows}, Rows: Range{0, h}, Cols: All(cols)})
			} else {
				p.alias(o.orig, whole)
			}
		}
	}
	cfg := map[string]any{
		"_class_name":           "FluxTransformer2DModel",
		"attention_head_dim":    hd,
		"axes_dims_rope":        ropeAxes(hd),
		"guidance_embeds":       f.dev,
		"in_channels":           p.dim(name("x_embedder.weight", "img_in.weight"), 1),
		"joint_attention_dim":   p.dim(name("context_embedder.weight", "txt_in.weight"), 1),
		"num_attention_heads":   D / max(hd, 1),
		"num_layers":            len(double),
		"num_single_layers":     len(single),
		"out_channels":          nil,
		"patch_size":            1,
		"pooled_projection_dim": p.dim(name("time_text_embed.text_embedder.linear_1.weight", "vector_in.in_layer.weight"), 1),
	}
	if out := p.dim(name("proj_out.weight", "final_layer.linear.weight"), 0); out != cfg["in_channels"] {
		cfg["out_channels"] = out
	}
	p.plan.Config = configJSON(cfg)
	return p.finish(opt, noOutside)
}

// ropeAxes splits a head dimension into FLUX's three rotary axes
// ([16, 56, 56] for 128), keeping each even.
func ropeAxes(hd int) []int {
	if hd == 128 {
		return []int{16, 56, 56}
	}
	a := (hd / 8) &^ 1
	b := ((hd - a) / 2) &^ 1
	return []int{a, b, hd - a - b}
}

// noOutside recognises nothing: every tensor outside the declared tables
// is unknown.
func noOutside(string) (string, string, bool) { return "", "", false }

// contiguous checks that block indices run 0..n-1.
func contiguous(idx []int, stem string) error {
	for i, n := range idx {
		if n != i {
			return fmt.Errorf("blocks %s<i> are not numbered 0..%d (missing %d)", stem, len(idx)-1, i)
		}
	}
	return nil
}

// configJSON marshals a config map (keys sorted).
func configJSON(cfg map[string]any) string {
	b, err := json.Marshal(cfg)
	if err != nil {
		panic("preset: config: " + err.Error())
	}
	return string(b)
}

// Skeleton lists FLUX at scale: width 3072·scale (head dim 128), Blocks
// double and 2·Blocks single blocks (19 and 38 when 0), in the requested
// naming.
func (f *flux) Skeleton(opt SkeletonOptions) ([]TensorSpec, error) {
	D := scaled(3072, opt.Scale)
	const hd = 128
	H := 4 * D
	nd, ns := 19, 38
	if opt.Blocks > 0 {
		nd, ns = opt.Blocks, 2*opt.Blocks
	}
	var s skel
	switch opt.Naming {
	case "", "diffusers":
		s.lin("x_embedder", D, 64, true)
		s.lin("context_embedder", D, 4096, true)
		s.lin("time_text_embed.timestep_embedder.linear_1", D, 256, true)
		s.lin("time_text_embed.timestep_embedder.linear_2", D, D, true)
		if f.dev {
			s.lin("time_text_embed.guidance_embedder.linear_1", D, 256, true)
			s.lin("time_text_embed.guidance_embedder.linear_2", D, D, true)
		}
		s.lin("time_text_embed.text_embedder.linear_1", D, 768, true)
		s.lin("time_text_embed.text_embedder.linear_2", D, D, true)
		s.lin("norm_out.linear", 2*D, D, true)
		s.lin("proj_out", 64, D, true)
		for i := range nd {
			b := fmt.Sprintf("transformer_blocks.%d.", i)
			s.lin(b+"norm1.linear", 6*D, D, true)
			s.lin(b+"norm1_context.linear", 6*D, D, true)
			for _, m := range []string{"to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"} {
				s.lin(b+"attn."+m, D, D, true)
			}
			for _, m := range []string{"norm_q", "norm_k", "norm_added_q", "norm_added_k"} {
				s.norm(b+"attn."+m, hd, false)
			}
			for _, m := range []string{"ff", "ff_context"} {
				s.lin(b+m+".net.0.proj", H, D, true)
				s.lin(b+m+".net.2", D, H, true)
			}
		}
		for i := range ns {
			b := fmt.Sprintf("single_transformer_blocks.%d.", i)
			s.lin(b+"norm.linear", 3*D, D, true)
			for _, m := range []string{"to_q", "to_k", "to_v"} {
				s.lin(b+"attn."+m, D, D, true)
			}
			s.norm(b+"attn.norm_q", hd, false)
			s.norm(b+"attn.norm_k", hd, false)
			s.lin(b+"proj_mlp", H, D, true)
			s.lin(b+"proj_out", D, D+H, true)
		}
	case "bfl", "comfyui":
		s.lin("img_in", D, 64, true)
		s.lin("txt_in", D, 4096, true)
		s.lin("time_in.in_layer", D, 256, true)
		s.lin("time_in.out_layer", D, D, true)
		if f.dev {
			s.lin("guidance_in.in_layer", D, 256, true)
			s.lin("guidance_in.out_layer", D, D, true)
		}
		s.lin("vector_in.in_layer", D, 768, true)
		s.lin("vector_in.out_layer", D, D, true)
		s.lin("final_layer.adaLN_modulation.1", 2*D, D, true)
		s.lin("final_layer.linear", 64, D, true)
		for i := range nd {
			b := fmt.Sprintf("double_blocks.%d.", i)
			for _, x := range []string{"img", "txt"} {
				s.lin(b+x+"_mod.lin", 6*D, D, true)
				s.lin(b+x+"_attn.qkv", 3*D, D, true)
				s.lin(b+x+"_attn.proj", D, D, true)
				s.vec(b+x+"_attn.norm.query_norm.scale", hd)
				s.vec(b+x+"_attn.norm.key_norm.scale", hd)
				s.lin(b+x+"_mlp.0", H, D, true)
				s.lin(b+x+"_mlp.2", D, H, true)
			}
		}
		for i := range ns {
			b := fmt.Sprintf("single_blocks.%d.", i)
			s.lin(b+"linear1", 3*D+H, D, true)
			s.lin(b+"linear2", D, D+H, true)
			s.vec(b+"norm.query_norm.scale", hd)
			s.vec(b+"norm.key_norm.scale", hd)
			s.lin(b+"modulation.lin", 3*D, D, true)
		}
		if opt.Naming == "comfyui" {
			for i := range s {
				s[i].Name = "model.diffusion_model." + s[i].Name
			}
		}
	default:
		return nil, fmt.Errorf("flux naming %q: want diffusers, bfl or comfyui", opt.Naming)
	}
	return s, nil
}

// FluxConfigInChannels returns a FLUX config (the "config" metadata Plan
// writes) with in_channels set to in, out_channels following Plan's rule
// (the old output width, written only where it differs from in): FLUX.1-dev's
// config widened to 128 is the config Plan writes for FLUX.1-Canny-dev
// (in_channels 128, out_channels 64), and narrowing it back gives dev's.
func FluxConfigInChannels(config string, in int) (string, error) {
	var cfg map[string]any
	if err := json.Unmarshal([]byte(config), &cfg); err != nil || cfg == nil {
		return "", fmt.Errorf("config metadata is not a JSON object: %v", err)
	}
	old, ok := cfg["in_channels"].(float64)
	if !ok || old <= 0 || old != float64(int(old)) {
		return "", fmt.Errorf("config metadata: in_channels %v is not a positive integer", cfg["in_channels"])
	}
	out := old
	if o, set := cfg["out_channels"]; set && o != nil {
		if out, ok = o.(float64); !ok || out <= 0 || out != float64(int(out)) {
			return "", fmt.Errorf("config metadata: out_channels %v is not a positive integer", o)
		}
	}
	cfg["in_channels"] = in
	cfg["out_channels"] = nil
	if int(out) != in {
		cfg["out_channels"] = int(out)
	}
	return configJSON(cfg), nil
}

package preset

import (
	"sort"
	"strings"
)

// Target is where (part of) a source module's weight lands in the output:
// rows SrcRows and columns Cols of the module's weight W_m become rows Rows
// (all K = Cols.Len() columns) of output Layer. A LoRA ΔW_m = B·A on the
// module therefore contributes B[SrcRows, :] · A[:, Cols] to those rows.
type Target struct {
	// Layer is the quantized layer's name, or for Kept targets the output
	// tensor name of the 16-bit weight (e.g. "norm_out.linear.weight").
	Layer string
	Kept  bool
	// SrcRows, Cols: rows and columns of the module's weight.
	SrcRows, Cols Range
	// Rows: rows of the target.
	Rows Range
}

// loraPrefixes are stripped from module names before lookup: file prefixes
// and the kohya/diffusers LoRA prefixes.
var loraPrefixes = []string{"lora_unet_", "lora_transformer_", "model.diffusion_model.", "diffusion_model.", "transformer.", "unet.", "base_model.model."}

// indexModules finalises the Resolve index: targets of one module merged
// where contiguous, and the kohya flattened names (dots to underscores).
func (p *Plan) indexModules() {
	for m, ts := range p.modules {
		sort.SliceStable(ts, func(i, j int) bool {
			if ts[i].Layer != ts[j].Layer {
				return ts[i].Layer < ts[j].Layer
			}
			return ts[i].SrcRows.Lo < ts[j].SrcRows.Lo
		})
		out := ts[:0]
		for _, t := range ts {
			if n := len(out); n > 0 {
				prev := &out[n-1]
				if prev.Layer == t.Layer && prev.Kept == t.Kept && prev.Cols == t.Cols &&
					prev.SrcRows.Hi == t.SrcRows.Lo && prev.Rows.Hi == t.Rows.Lo {
					prev.SrcRows.Hi, prev.Rows.Hi = t.SrcRows.Hi, t.Rows.Hi
					continue
				}
			}
			out = append(out, t)
		}
		p.modules[m] = out
	}
	p.flat = make(map[string]string, len(p.modules))
	for m := range p.modules {
		f := flatten(m)
		if _, dup := p.flat[f]; dup {
			p.flat[f] = "" // ambiguous
		} else {
			p.flat[f] = m
		}
	}
}

// Modules returns every module name Resolve knows (both namings), sorted.
func (p *Plan) Modules() []string {
	out := make([]string, 0, len(p.modules))
	for m := range p.modules {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Resolve returns where the module named module lands in the output. The
// name may be in the diffusers naming ("transformer_blocks.0.attn.to_q"), the
// original naming ("double_blocks.0.img_attn.qkv"), either with a file or
// LoRA prefix ("transformer.", "model.diffusion_model.", "lora_unet_"), or
// kohya-flattened ("double_blocks_0_img_attn_qkv"): a flattened name is
// matched against the flattened forms of the known modules and resolves
// only when exactly one matches. ok is false for an unknown or ambiguous
// name.
func (p *Plan) Resolve(module string) ([]Target, bool) {
	module = strings.TrimSuffix(module, ".weight")
	for _, pre := range loraPrefixes {
		module = strings.TrimPrefix(module, pre)
	}
	if ts, ok := p.modules[module]; ok {
		return append([]Target(nil), ts...), true
	}
	if m := p.flat[flatten(module)]; m != "" {
		return append([]Target(nil), p.modules[m]...), true
	}
	return nil, false
}

func flatten(s string) string { return strings.ReplaceAll(s, ".", "_") }

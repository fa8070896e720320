package model

import (
	"fmt"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/preset"
)

// A control LoRA (FLUX.1-Canny-dev-lora, FLUX.1-Depth-dev-lora) widens
// the model's input embedder, a kept tensor (formats/lora widen.go):
// FuseLoRA writes x_embedder as round16([W | 0] + Σ ΔW) at the LoRA's
// width, and the config and comfy_config metadata with the new
// in_channels exactly as quantize writes them for a checkpoint of that
// shape (preset.FluxConfigInChannels, engine.ComfyFluxConfig): the output
// has the layout of a quantized FLUX.1-Canny-dev / Depth-dev. The base
// width and the base's two metadata entries are kept verbatim in the
// record (lora.BaseInput), so that taking the last widening LoRA out
// writes them back; the sidecar keeps the base weight at its own width,
// and the factors at the output's.

// inputState is the widenable input layer of a fusion.
type inputState struct {
	layer string // "" when the checkpoint has none
	inK   int    // input features of the layer in the input file
	baseK int    // … in the base checkpoint
}

// initInput finds the input layer and its widths (after the record is
// read, before anything is planned).
func (fu *fusion) initInput() {
	l := fu.ix.InputLayer()
	if l == "" {
		return
	}
	fu.in = inputState{layer: l, inK: fu.ix.Layers[l].K, baseK: fu.ix.Layers[l].K}
	if fu.prov != nil && fu.prov.Base.Input != nil && fu.prov.Base.Input.Layer == l {
		fu.in.baseK = fu.prov.Base.Input.Width
	}
}

// inputWidth is the width the record's LoRAs need of the input layer: the
// widest LoRA's, else the base's.
func (fu *fusion) inputWidth() int {
	k := fu.in.baseK
	if fu.prov != nil {
		for _, a := range fu.prov.LoRAs {
			k = max(k, a.Input)
		}
	}
	return k
}

// narrowInput sets the index's input width to what the LoRAs left after
// the removals need (the base's once none widens), so that new LoRAs map
// against it.
func (fu *fusion) narrowInput() error {
	if fu.in.layer == "" || fu.ix.Layers[fu.in.layer].K == fu.inputWidth() {
		return nil
	}
	return fu.ix.SetWidth(fu.in.layer, fu.inputWidth())
}

// widenInput handles a LoRA whose low-rank factors read more input
// features than the input layer has: it returns the width to record as
// the LoRA's Input (0 when it does not widen the base's input) and widens
// the index.
func (fu *fusion) widenInput(path string, lf *lora.File) (int, error) {
	if fu.in.layer == "" {
		return 0, nil
	}
	k := fu.ix.ModuleWidth(lf, fu.in.layer)
	w, _ := fu.ix.Widenable(fu.in.layer)
	if k != w.Wide || fu.in.baseK >= k {
		return 0, nil // Map checks every other width
	}
	if fu.opt.Kept == KeptSkip {
		return 0, fmt.Errorf("%s: widens %s from %d to %d input features (a control LoRA's input), but --kept skip leaves that 16-bit tensor alone, and the rest of the LoRA means nothing without it", path, fu.in.layer, fu.in.baseK, k)
	}
	md := fu.f.r.Metadata()
	if _, ok := md[engine.MetaConfig]; !ok {
		if b := fu.prov.Base.Input; b == nil || b.Config == nil {
			return 0, fmt.Errorf("%s: widens %s to %d input features, but %s has no %q metadata to set in_channels in (nunchaku builds x_embedder from it)", path, fu.in.layer, k, fu.opt.Model, engine.MetaConfig)
		}
	}
	if fu.ix.Layers[fu.in.layer].K < k {
		if err := fu.ix.SetWidth(fu.in.layer, k); err != nil {
			return 0, err
		}
	}
	return k, nil
}

// inputMetadata sets the output's config and comfy_config: widened (from
// the base's, recorded verbatim the first time) while a LoRA widens the
// input, the base's verbatim once none does.
func (fu *fusion) inputMetadata(md map[string]string) error {
	if fu.in.layer == "" {
		return nil
	}
	k := fu.inputWidth()
	if k == fu.in.baseK {
		if b := fu.prov.Base.Input; b != nil {
			put := func(key string, v *string) {
				if v != nil {
					md[key] = *v
				} else {
					delete(md, key)
				}
			}
			put(engine.MetaConfig, b.Config)
			put(engine.MetaComfyConfig, b.ComfyConfig)
			fu.prov.Base.Input = nil
		}
		if fu.in.inK != k {
			fu.rep.Input, fu.rep.InputFrom = k, fu.in.inK
		}
		return nil
	}
	b := fu.prov.Base.Input
	if b == nil {
		b = &lora.BaseInput{Layer: fu.in.layer, Width: fu.in.baseK}
		if v, ok := md[engine.MetaConfig]; ok {
			b.Config = &v
		}
		if v, ok := md[engine.MetaComfyConfig]; ok {
			b.ComfyConfig = &v
		}
		fu.prov.Base.Input = b
	}
	if b.Config == nil {
		return fmt.Errorf("%s: no %q metadata to set in_channels %d in", fu.opt.Model, engine.MetaConfig, k)
	}
	cfg, err := preset.FluxConfigInChannels(*b.Config, k)
	if err != nil {
		return fmt.Errorf("%s: %v", fu.opt.Model, err)
	}
	md[engine.MetaConfig] = cfg
	if b.ComfyConfig != nil {
		cc, err := engine.ComfyFluxConfig(cfg)
		if err != nil {
			return fmt.Errorf("%s: comfy_config: %v", fu.opt.Model, err)
		}
		md[engine.MetaComfyConfig] = cc
	}
	if fu.in.inK != k {
		fu.rep.Input, fu.rep.InputFrom = k, fu.in.inK
	}
	return nil
}

// keptInWidth is a kept layer's input features in the input file.
func (fu *fusion) keptInWidth(li *lora.LayerInfo) int {
	if li.Name == fu.in.layer {
		return fu.in.inK
	}
	return li.K
}

// resizeCols returns v [rows, from] as [rows, to]: zero columns appended,
// or the columns past to cut, which must be zeros (a LoRA fused before
// the input was widened has none there); what names the tensor in errors.
func resizeCols(v []float32, rows, from, to int, what string) ([]float32, error) {
	if from == to {
		return v, nil
	}
	out := make([]float32, rows*to)
	for i := range rows {
		src := v[i*from : (i+1)*from]
		if to > from {
			copy(out[i*to:], src)
			continue
		}
		copy(out[i*to:(i+1)*to], src[:to])
		for j, x := range src[to:] {
			if x != 0 {
				return nil, fmt.Errorf("%s: column %d of row %d is %v: the input cannot be narrowed back to %d features", what, to+j, i, x, to)
			}
		}
	}
	return out, nil
}

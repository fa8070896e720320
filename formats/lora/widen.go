package lora

import (
	"fmt"
	"slices"

	"github.com/svdq/svdq/formats/preset"
)

// InputWidening is a kept input embedder that a control LoRA may widen:
// its lora_A reads Wide input features where the model's weight reads
// Base. FLUX.1-Canny-dev-lora and FLUX.1-Depth-dev-lora widen FLUX.1-dev's
// x_embedder (img_in) from 64 to 128 features (the control image's
// latents, packed, follow the image's); the result has the shape of
// FLUX.1-Canny-dev / Depth-dev, which every engine loads from the file's
// config in_channels (nunchaku 3a3cc3d
// nunchaku/models/transformers/utils.py _build_model: from_config(json.
// loads(metadata["config"])); ComfyUI-nunchaku dbfd194
// nodes/models/configs/flux.1-canny-dev.json: in_channels 32).
//
// The widened weight is [W | 0] + ΔW, as diffusers 58eb52c
// src/diffusers/loaders/lora_pipeline.py
// _maybe_expand_transformer_param_shape_or_error_ (a zero Linear of the
// LoRA's in_features, the old weight copied into its first columns, the
// bias kept) and ComfyUI 02b5222 comfy/lora_convert.py
// convert_lora_bfl_control (diffusion_model.img_in.reshape_weight = [rows
// of lora_B, columns of lora_A]: the weight zero-padded to that shape
// before the patch) define it.
type InputWidening struct {
	Families   []string // svdq families (nunchaku.Meta.Family)
	Tensors    []string // kept tensor names, in every naming
	Base, Wide int      // input features before and after
}

// inputWidenings is the declared table of widenable inputs.
var inputWidenings = []InputWidening{
	{Families: []string{"flux-dev", "flux-schnell"}, Tensors: []string{"x_embedder.weight", "img_in.weight"}, Base: 64, Wide: 128},
}

// widening returns the declared widening of a kept layer of family, nil
// when there is none.
func widening(family, layer string) *InputWidening {
	for i := range inputWidenings {
		w := &inputWidenings[i]
		if !slices.Contains(w.Families, family) || !slices.Contains(w.Tensors, layer) {
			continue
		}
		return w
	}
	return nil
}

// Widenable returns the widening layer takes in this checkpoint (ok false
// when it is not a widenable input).
func (ix *Index) Widenable(layer string) (InputWidening, bool) {
	li := ix.Layers[layer]
	if li == nil || li.Kind != Kept {
		return InputWidening{}, false
	}
	w := widening(ix.family, layer)
	if w == nil {
		return InputWidening{}, false
	}
	return *w, true
}

// InputLayer returns the checkpoint's widenable input layer ("" when it
// has none).
func (ix *Index) InputLayer() string {
	for name := range ix.Layers {
		if _, ok := ix.Widenable(name); ok {
			return name
		}
	}
	return ""
}

// SetWidth sets the input features of a widenable kept layer (Base or
// Wide of its declared widening): the layer's K and the columns of every
// target naming it. It returns an error for another layer or width.
func (ix *Index) SetWidth(layer string, k int) error {
	w, ok := ix.Widenable(layer)
	if !ok || (k != w.Base && k != w.Wide) {
		return fmt.Errorf("lora: layer %s: input width %d: not a widenable input (FLUX x_embedder/img_in, 64 or 128)", layer, k)
	}
	ix.Layers[layer].K = k
	for mod, ts := range ix.modules {
		for i := range ts {
			if ts[i].Layer == layer {
				ts[i].Cols = preset.All(k)
			}
		}
		ix.modules[mod] = ts
	}
	for i := range ix.biasOf[layer] { // a kept layer's bias: all its rows, all its columns (vector.go)
		ix.biasOf[layer][i].Cols = preset.All(k)
	}
	return nil
}

// ModuleWidth returns the input features of f's low-rank module that
// resolves to layer alone (0 when there is none).
func (ix *Index) ModuleWidth(f *File, layer string) int {
	for i := range f.Modules {
		m := &f.Modules[i]
		ts, ok := ix.Resolve(m.Key)
		if ok && len(ts) == 1 && ts[0].Layer == layer && m.LowRank() {
			return m.K
		}
	}
	return 0
}

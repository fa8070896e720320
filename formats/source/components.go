package source

import (
	"fmt"
	"slices"
	"strings"

	"github.com/svdq/svdq/formats/safetensors"
)

// DiffusionPrefix is where ComfyUI's single-file checkpoints keep the
// diffusion model (comfyanonymous/ComfyUI comfy/model_detection.py
// unet_prefix_from_state_dict: "model.diffusion_model." for ldm/sgm-style
// and DiT checkpoints).
const DiffusionPrefix = "model.diffusion_model."

// componentPrefixes declares the other components of an all-in-one
// checkpoint, as ComfyUI's loaders name them (comfy/supported_models_base.py
// BASE: vae_key_prefix "first_stage_model.", text_encoder_key_prefix
// "cond_stage_model."; comfy/supported_models.py, FLUX and later models:
// "vae.", "text_encoders."; SDXL's sgm files: "conditioner.embedders.N.").
// A prefix with split set holds one component per next name segment
// ("text_encoders.clip_l.", "text_encoders.t5xxl.").
var componentPrefixes = []struct {
	prefix, name, kind string
	split              bool
}{
	{"vae.", "vae", "VAE", false},
	{"first_stage_model.", "vae", "VAE", false},
	{"text_encoders.", "", "text encoder", true},
	{"cond_stage_model.", "cond_stage_model", "text encoder", false},
	{"conditioner.embedders.", "embedders.", "text encoder", true},
	{"clip_vision.", "clip_vision", "CLIP vision encoder", false},
	{"model_ema.", "model_ema", "EMA weights", false},
}

// Component is a part of an all-in-one checkpoint.
type Component struct {
	Name    string `json:"name"`   // "vae", "clip_l", "t5xxl", "diffusion_model", …
	Kind    string `json:"kind"`   // "VAE", "text encoder", "diffusion model", "unknown"
	Prefix  string `json:"prefix"` // the tensor name prefix, e.g. "text_encoders.clip_l."
	Tensors int    `json:"tensors"`
	Bytes   int64  `json:"bytes"`
}

// componentOf names the component of a tensor outside the diffusion model.
func componentOf(name string) (comp, kind, prefix string) {
	for _, c := range componentPrefixes {
		rest, ok := strings.CutPrefix(name, c.prefix)
		if !ok {
			continue
		}
		if !c.split {
			return c.name, c.kind, c.prefix
		}
		seg, _, found := strings.Cut(rest, ".")
		if !found {
			return c.name + seg, c.kind, c.prefix
		}
		return c.name + seg, c.kind, c.prefix + seg + "."
	}
	seg, _, found := strings.Cut(name, ".")
	if !found {
		return name, "unknown", name
	}
	return seg, "unknown", seg + "."
}

// splitComponents lists the components of r when it is an all-in-one
// checkpoint (tensors under DiffusionPrefix and others outside it); nil
// otherwise. The diffusion model comes first.
func splitComponents(r safetensors.Reader) []Component {
	names := r.Names()
	in := 0
	for _, n := range names {
		if strings.HasPrefix(n, DiffusionPrefix) {
			in++
		}
	}
	if in == 0 || in == len(names) {
		return nil
	}
	out := []Component{{Name: "diffusion_model", Kind: "diffusion model", Prefix: DiffusionPrefix}}
	at := map[string]int{"diffusion_model": 0}
	for _, n := range names {
		info, _ := r.Info(n)
		comp, kind, prefix := "diffusion_model", "", DiffusionPrefix
		if !strings.HasPrefix(n, DiffusionPrefix) {
			comp, kind, prefix = componentOf(n)
		}
		i, ok := at[comp]
		if ok && out[i].Prefix != prefix { // "vae." and "first_stage_model." in one file
			comp = strings.TrimSuffix(prefix, ".")
			i, ok = at[comp]
		}
		if !ok {
			i = len(out)
			at[comp] = i
			out = append(out, Component{Name: comp, Kind: kind, Prefix: prefix})
		}
		out[i].Tensors++
		out[i].Bytes += info.End - info.Begin
	}
	slices.SortStableFunc(out[1:], func(a, b Component) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// prefixView presents the tensors of r under prefix with the prefix removed.
func prefixView(r safetensors.Reader, prefix string) *view {
	v := newView(r, r.Metadata(), func() error { return nil })
	for _, n := range r.Names() {
		if rest, ok := strings.CutPrefix(n, prefix); ok && rest != "" {
			info, _ := r.Info(n)
			v.add(rest, &entry{info: info, src: n})
		}
	}
	v.seal()
	return v
}

// findComponent returns the named component (by Name or by prefix, with or
// without its final dot).
func findComponent(comps []Component, name string) (Component, error) {
	for _, c := range comps {
		if c.Name == name || c.Prefix == name || strings.TrimSuffix(c.Prefix, ".") == name {
			return c, nil
		}
	}
	var have []string
	for _, c := range comps {
		have = append(have, c.Name)
	}
	if len(have) == 0 {
		return Component{}, fmt.Errorf("no component %q: the checkpoint is not an all-in-one file (no tensors outside %q, or none under it)", name, DiffusionPrefix)
	}
	return Component{}, fmt.Errorf("no component %q (the checkpoint has %s)", name, strings.Join(have, ", "))
}

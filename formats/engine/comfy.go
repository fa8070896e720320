package engine

import (
	"encoding/json"
	"fmt"
)

// ComfyFluxConfig returns the comfy_config metadata ComfyUI-nunchaku's
// FLUX loader reads (nodes/models/flux.py: json.loads(metadata
// ["comfy_config"]), then comfy.supported_models.Flux|FluxSchnell(
// model_config) and ComfyFluxWrapper(config=model_config)), derived from
// the diffusers FluxTransformer2DModel config svdq writes under "config".
// The fields are those of the shipped nodes/models/configs/flux.1-*.json:
// ComfyUI counts latent channels before the 2×2 patching, so in_channels
// and out_channels are the diffusers ones divided by 4 (dev, schnell,
// Kontext, Krea: 16; canny, depth: 32; fill: 96). model_class is "Flux"
// with a guidance embedder and "FluxSchnell" without (schnell,
// shuttle-jaguar). Keys are sorted like the shipped files.
func ComfyFluxConfig(diffusersConfig string) (string, error) {
	var c struct {
		AttentionHeadDim    int   `json:"attention_head_dim"`
		AxesDimsRope        []int `json:"axes_dims_rope"`
		GuidanceEmbeds      bool  `json:"guidance_embeds"`
		InChannels          int   `json:"in_channels"`
		JointAttentionDim   int   `json:"joint_attention_dim"`
		NumAttentionHeads   int   `json:"num_attention_heads"`
		NumLayers           int   `json:"num_layers"`
		NumSingleLayers     int   `json:"num_single_layers"`
		OutChannels         *int  `json:"out_channels"`
		PatchSize           int   `json:"patch_size"`
		PooledProjectionDim int   `json:"pooled_projection_dim"`
	}
	if err := json.Unmarshal([]byte(diffusersConfig), &c); err != nil {
		return "", fmt.Errorf("config metadata: %v", err)
	}
	out := c.InChannels
	if c.OutChannels != nil {
		out = *c.OutChannels
	}
	if c.InChannels <= 0 || c.InChannels%4 != 0 || out%4 != 0 || c.NumAttentionHeads <= 0 || c.AttentionHeadDim <= 0 {
		return "", fmt.Errorf("config metadata: in_channels %d, out_channels %d, %d heads of %d: not a FLUX config",
			c.InChannels, out, c.NumAttentionHeads, c.AttentionHeadDim)
	}
	class := "FluxSchnell"
	if c.GuidanceEmbeds {
		class = "Flux"
	}
	mc := map[string]any{
		"axes_dim":                    c.AxesDimsRope,
		"context_in_dim":              c.JointAttentionDim,
		"depth":                       c.NumLayers,
		"depth_single_blocks":         c.NumSingleLayers,
		"disable_unet_model_creation": true,
		"guidance_embed":              c.GuidanceEmbeds,
		"hidden_size":                 c.NumAttentionHeads * c.AttentionHeadDim,
		"image_model":                 "flux",
		"in_channels":                 c.InChannels / 4,
		"mlp_ratio":                   4.0,
		"num_heads":                   c.NumAttentionHeads,
		"out_channels":                out / 4,
		"patch_size":                  2,
		"qkv_bias":                    true,
		"theta":                       10000,
		"vec_in_dim":                  c.PooledProjectionDim,
	}
	b, err := json.Marshal(map[string]any{"model_class": class, "model_config": mc})
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// checkComfyConfig validates a file's comfy_config against what the
// loader and ComfyFluxWrapper read and against the file's own config.
func checkComfyConfig(f *File) []string {
	s, ok := f.Metadata[MetaComfyConfig]
	if !ok {
		return nil // reported as missing metadata
	}
	var c struct {
		ModelClass  string         `json:"model_class"`
		ModelConfig map[string]any `json:"model_config"`
	}
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return []string{"comfy_config is not a JSON object: " + err.Error()}
	}
	var out []string
	if c.ModelClass != "Flux" && c.ModelClass != "FluxSchnell" {
		out = append(out, fmt.Sprintf("comfy_config model_class %q (the loader asserts Flux or FluxSchnell)", c.ModelClass))
	}
	if c.ModelConfig == nil {
		return append(out, "comfy_config has no model_config")
	}
	g, ok := c.ModelConfig["guidance_embed"].(bool)
	if !ok {
		out = append(out, "comfy_config model_config has no boolean guidance_embed (ComfyFluxWrapper reads it)")
	}
	if cfg, ok := f.Metadata[MetaConfig]; ok {
		if want, err := ComfyFluxConfig(cfg); err == nil {
			var w struct {
				ModelClass  string         `json:"model_class"`
				ModelConfig map[string]any `json:"model_config"`
			}
			_ = json.Unmarshal([]byte(want), &w)
			if ok && g != w.ModelConfig["guidance_embed"] {
				out = append(out, "comfy_config guidance_embed disagrees with config guidance_embeds")
			}
			if c.ModelConfig["in_channels"] != w.ModelConfig["in_channels"] {
				out = append(out, fmt.Sprintf("comfy_config in_channels %v, config implies %v", c.ModelConfig["in_channels"], w.ModelConfig["in_channels"]))
			}
		}
	}
	return out
}

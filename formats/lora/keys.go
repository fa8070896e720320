package lora

import (
	"sort"
	"strings"
)

// role is what one key of a LoRA file holds.
type role uint8

const (
	roleA     role = iota + 1 // down projection A [r, K]
	roleB                     // up projection B [N, r]
	roleAlpha                 // α scalar
)

// suffixes maps key suffixes to roles and the style they imply ("" for
// .alpha, which every style uses). Longest suffixes are tried first.
var suffixes = []struct {
	suffix string
	role   role
	style  string
}{
	{".lora_A.weight", roleA, StylePEFT},
	{".lora_B.weight", roleB, StylePEFT},
	{".lora_down.weight", roleA, StyleKohya},
	{".lora_up.weight", roleB, StyleKohya},
	{".alpha", roleAlpha, ""},
}

// Styles a module's key can have; File.Format joins the styles found.
const (
	StylePEFT    = "peft"    // lora_A / lora_B (diffusers, PEFT)
	StyleKohya   = "kohya"   // lora_down / lora_up with lora_unet_ or lora_transformer_ names
	StyleComfyUI = "comfyui" // diffusion_model. prefix
)

// splitKey returns the module part and role of a LoRA key, ok false for a
// key no suffix matches.
func splitKey(key string) (module string, r role, style string, ok bool) {
	for _, s := range suffixes {
		if m, found := strings.CutSuffix(key, s.suffix); found && m != "" {
			return m, s.role, s.style, true
		}
	}
	return "", 0, "", false
}

// modulePrefixes are stripped (repeatedly, in any order) from module names
// before lookup: LoRA and file prefixes. "transformer." and "unet." are the
// diffusers pipeline component names.
var modulePrefixes = []string{
	"base_model.model.",
	"lora_unet_",
	"lora_transformer_",
	"model.diffusion_model.",
	"diffusion_model.",
	"transformer.",
	"unet.",
}

// StripPrefixes removes the LoRA and file prefixes of modulePrefixes from a
// module or tensor name, as many as it carries.
func StripPrefixes(name string) string {
	for {
		stripped := false
		for _, p := range modulePrefixes {
			if rest, ok := strings.CutPrefix(name, p); ok && rest != "" {
				name, stripped = rest, true
			}
		}
		if !stripped {
			return name
		}
	}
}

// moduleStyle refines a key's suffix style by its prefix.
func moduleStyle(module, suffixStyle string) string {
	switch {
	case strings.HasPrefix(module, "diffusion_model.") || strings.HasPrefix(module, "model.diffusion_model."):
		return StyleComfyUI
	case strings.HasPrefix(module, "lora_unet_") || strings.HasPrefix(module, "lora_transformer_"):
		return StyleKohya
	}
	return suffixStyle
}

// joinStyles returns the sorted distinct styles joined by "+".
func joinStyles(set map[string]bool) string {
	var s []string
	for k := range set {
		if k != "" {
			s = append(s, k)
		}
	}
	sort.Strings(s)
	return strings.Join(s, "+")
}

// flatten is the kohya form of a module name: dots become underscores.
func flatten(s string) string { return strings.ReplaceAll(s, ".", "_") }

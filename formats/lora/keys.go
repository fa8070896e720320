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
	// LyCORIS LoHa (lycoris/modules/loha.py): hada_w1_a [N, r], hada_w1_b
	// [r, K], the same for w2; with Tucker cores hada_t1/t2 [r, r] the
	// a factors are [r, N].
	roleHadaW1A
	roleHadaW1B
	roleHadaW2A
	roleHadaW2B
	roleHadaT1
	roleHadaT2
	// LyCORIS LoKr (lycoris/modules/lokr.py): w1 [a, c] (or w1_a [a, r]·
	// w1_b [r, c]) ⊗ w2 [p, q] (or w2_a [p, r]·w2_b [r, q], or the Tucker
	// form t2 [r, r], w2_a [r, p], w2_b [r, q]).
	roleLokrW1
	roleLokrW1A
	roleLokrW1B
	roleLokrW2
	roleLokrW2A
	roleLokrW2B
	roleLokrT2
	// LyCORIS full module (lycoris/modules/full.py): diff [N, K] is ΔW itself.
	roleFullDiff
	// DoRA magnitude (weight decomposition) beside any of the above:
	// LyCORIS/kohya dora_scale [N, 1] (output axis) or [1, K] (input axis),
	// PEFT lora_magnitude_vector [N].
	roleDora
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
	{".lora_A.default.weight", roleA, StylePEFT}, // PEFT with its adapter name kept (Qwen-Image LoRAs)
	{".lora_B.default.weight", roleB, StylePEFT},
	{".hada_w1_a", roleHadaW1A, StyleLyCORIS},
	{".hada_w1_b", roleHadaW1B, StyleLyCORIS},
	{".hada_w2_a", roleHadaW2A, StyleLyCORIS},
	{".hada_w2_b", roleHadaW2B, StyleLyCORIS},
	{".hada_t1", roleHadaT1, StyleLyCORIS},
	{".hada_t2", roleHadaT2, StyleLyCORIS},
	{".lokr_w1", roleLokrW1, StyleLyCORIS},
	{".lokr_w1_a", roleLokrW1A, StyleLyCORIS},
	{".lokr_w1_b", roleLokrW1B, StyleLyCORIS},
	{".lokr_w2", roleLokrW2, StyleLyCORIS},
	{".lokr_w2_a", roleLokrW2A, StyleLyCORIS},
	{".lokr_w2_b", roleLokrW2B, StyleLyCORIS},
	{".lokr_t2", roleLokrT2, StyleLyCORIS},
	{".diff", roleFullDiff, StyleLyCORIS},
	{".dora_scale", roleDora, ""},
	{".lora_magnitude_vector", roleDora, StylePEFT},
	{".lora_magnitude_vector.weight", roleDora, StylePEFT},
	{".lora_magnitude_vector.default.weight", roleDora, StylePEFT},
	{".lora_down.weight", roleA, StyleKohya},
	{".lora_up.weight", roleB, StyleKohya},
	{".alpha", roleAlpha, ""},
}

// Styles a module's key can have; File.Format joins the styles found.
const (
	StylePEFT    = "peft"    // lora_A / lora_B (diffusers, PEFT)
	StyleKohya   = "kohya"   // lora_down / lora_up with lora_unet_ or lora_transformer_ names
	StyleComfyUI = "comfyui" // diffusion_model. prefix
	StyleLyCORIS = "lycoris" // hada_* (LoHa) or lokr_* (LoKr) factors, any prefix
	StyleXLabs   = "xlabs"   // <block>.processor.{qkv,proj}_lora{1,2}.{down,up}.weight
	StyleDiff    = "diff"    // a full fine-tune's weights minus the base's (OpenDiff)
)

// Module types: how a module's ΔW is formed from its tensors.
const (
	TypeLoRA = "lora" // s·B·A, exactly low-rank
	TypeLoHa = "loha" // s·(w1a·w1b) ⊙ (w2a·w2b)
	TypeLoKr = "lokr" // s·w1 ⊗ w2
	TypeDiff = "diff" // W_finetuned − W_base
	TypeFull = "full" // LyCORIS full module: the diff tensor
)

// splitKey returns the module part and role of a LoRA key, ok false for a
// key no suffix matches. Every suffix is tried and the longest match wins,
// so ".lokr_w1_a" is never read as ".lokr_w1" of a module "…_a".
func splitKey(key string) (module string, r role, style string, ok bool) {
	best := -1
	for _, s := range suffixes {
		if m, found := strings.CutSuffix(key, s.suffix); found && m != "" && len(s.suffix) > best {
			module, r, style, ok, best = m, s.role, s.style, true, len(s.suffix)
		}
	}
	if ok {
		return module, r, style, true
	}
	if m, r, ok := xlabsKey(key); ok {
		return m, r, StyleXLabs, true
	}
	return "", 0, "", false
}

// xlabsKey reads an XLabs FLUX LoRA key, <prefix><double_blocks|single_blocks>.N.processor.<qkv|proj>_lora[12].{down,up}.weight
// (diffusers _convert_xlabs_flux_lora_to_diffusers, huggingface/diffusers@58eb52c:src/diffusers/loaders/lora_conversion_utils.py).
// The module part keeps the processor name; xlabsTargets maps it.
func xlabsKey(key string) (module string, r role, ok bool) {
	switch {
	case strings.HasSuffix(key, ".down.weight"):
		module, r = strings.TrimSuffix(key, ".down.weight"), roleA
	case strings.HasSuffix(key, ".up.weight"):
		module, r = strings.TrimSuffix(key, ".up.weight"), roleB
	default:
		return "", 0, false
	}
	if _, ok := xlabsTargets(module); !ok {
		return "", 0, false
	}
	return module, r, true
}

// xlabsPart is one module an XLabs processor LoRA stands for: the BFL or
// diffusers module name and the rows of the LoRA's B it takes.
type xlabsPart struct {
	module string
	split  int // 0: whole B; 1..3: q, k or v third of B's rows
}

// xlabsTargets maps an XLabs processor module (diffusers
// _convert_xlabs_flux_lora_to_diffusers): in double block N, qkv_lora1 →
// the image attention's q, k, v (BFL img_attn.qkv), qkv_lora2 → the text
// attention's (txt_attn.qkv), proj_lora1 → img_attn.proj, proj_lora2 →
// txt_attn.proj; in single block N, qkv_lora → attn.to_q/to_k/to_v (B's
// rows split in three equal parts, A shared), proj_lora → linear2
// (proj_out).
func xlabsTargets(module string) ([]xlabsPart, bool) {
	m := strings.TrimPrefix(strings.TrimPrefix(module, "model."), "diffusion_model.")
	block, proc, ok := strings.Cut(m, ".processor.")
	if !ok {
		return nil, false
	}
	kind, num, ok := strings.Cut(block, ".")
	if !ok || num == "" || strings.Trim(num, "0123456789") != "" {
		return nil, false
	}
	switch kind + "/" + proc {
	case "double_blocks/qkv_lora1":
		return []xlabsPart{{module: block + ".img_attn.qkv"}}, true
	case "double_blocks/qkv_lora2":
		return []xlabsPart{{module: block + ".txt_attn.qkv"}}, true
	case "double_blocks/proj_lora1":
		return []xlabsPart{{module: block + ".img_attn.proj"}}, true
	case "double_blocks/proj_lora2":
		return []xlabsPart{{module: block + ".txt_attn.proj"}}, true
	case "single_blocks/qkv_lora":
		d := "single_transformer_blocks." + num + ".attn."
		return []xlabsPart{{d + "to_q", 1}, {d + "to_k", 2}, {d + "to_v", 3}}, true
	case "single_blocks/proj_lora":
		return []xlabsPart{{module: block + ".linear2"}}, true
	}
	return nil, false
}

// isControlKey reports whether a key is one of a BFL control LoRA's
// non-factor tensors: a bias delta <module>.lora_B.bias (or lora_A.bias)
// or a norm scale <…>.query_norm.scale / .key_norm.scale (diffusers
// _convert_bfl_flux_control_lora_to_diffusers).
// A LyCORIS full module's bias delta (.diff_b) is listed with them.
func isControlKey(key string) bool {
	return strings.HasSuffix(key, ".lora_B.bias") || strings.HasSuffix(key, ".lora_A.bias") ||
		isNormKey(key) || strings.HasSuffix(key, ".diff_b")
}

// diffusersNormKeys end the norm weights a diffusers-converted control
// LoRA carries (lora_pipeline.py FluxLoraLoaderMixin
// _control_lora_supported_norm_keys: norm_q, norm_k, norm_added_q,
// norm_added_k, as attn.<key>.weight).
var diffusersNormKeys = []string{".norm_q.weight", ".norm_k.weight", ".norm_added_q.weight", ".norm_added_k.weight"}

// isNormKey reports whether a key is a control LoRA's norm weight: BFL
// <…>_norm.scale or diffusers <…>.norm_q.weight etc.
func isNormKey(key string) bool {
	if strings.HasSuffix(key, "_norm.scale") {
		return true
	}
	for _, s := range diffusersNormKeys {
		if strings.HasSuffix(key, s) {
			return true
		}
	}
	return false
}

// textEncoderPrefixes start the module names of text-encoder LoRA parts
// (kohya lora_te_, lora_te1_, lora_te2_, lora_te3_; diffusers
// text_encoder., text_encoder_2.; ComfyUI text_encoders.): svdq files hold
// no text encoder, so these keys are reported and skipped.
var textEncoderPrefixes = []string{"lora_te", "text_encoder", "text_encoders.", "te1.", "te2."}

// isTextEncoder reports whether a LoRA key belongs to a text encoder.
func isTextEncoder(key string) bool {
	for _, p := range textEncoderPrefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	return false
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
	case suffixStyle == StyleLyCORIS || suffixStyle == StyleXLabs:
		return suffixStyle
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

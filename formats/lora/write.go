package lora

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// Factors is one module of a LoRA to write: ΔW = (Alpha/Rank)·B·A with
// A [Rank, K] and B [N, Rank] row-major.
type Factors struct {
	Module  string // module name, dotted, without prefix (e.g. "double_blocks.0.img_attn.qkv")
	Rank    int
	N, K    int
	A, B    []float32
	Alpha   float64
	NoAlpha bool // write no .alpha key (the reader then takes α = Rank)
}

// WriteOptions choose the style of a written LoRA file.
type WriteOptions struct {
	// Style is StylePEFT (<prefix><module>.lora_A.weight / .lora_B.weight),
	// StyleKohya (<prefix><module with dots as underscores>.lora_down.weight
	// / .lora_up.weight) or StyleComfyUI (<prefix><module>.lora_down.weight
	// / .lora_up.weight).
	Style string
	// Prefix defaults to "transformer." (PEFT), "lora_unet_" (kohya) or
	// "diffusion_model." (ComfyUI); "-" means none.
	Prefix string
	// DType of the factors: F32 (default), F16, BF16, F8_E4M3 or F8_E5M2.
	// Alphas are written as 0-dimensional tensors in the factors' dtype
	// (F32 for the FP8 types).
	DType safetensors.DType
}

// Write stores modules as a LoRA file in the chosen style, values rounded
// to the dtype (FP8 E4M3 saturates at ±448). It is the inverse of Open for
// the tests and for converting between styles. Errors name the path and
// module: inconsistent factor lengths, an unknown style or dtype, two
// modules with the same key.
func Write(path string, mods []Factors, opt WriteOptions) error {
	dt := opt.DType
	if dt == "" {
		dt = safetensors.F32
	}
	alphaDT := dt
	switch dt {
	case safetensors.F32, safetensors.F16, safetensors.BF16:
	case safetensors.F8E4M3, safetensors.F8E5M2:
		alphaDT = safetensors.F32
	default:
		return fmt.Errorf("%s: lora dtype %s: want F32, F16, BF16, F8_E4M3 or F8_E5M2", path, dt)
	}
	var sa, sb, prefix string
	flat := false
	switch opt.Style {
	case StylePEFT:
		sa, sb, prefix = ".lora_A.weight", ".lora_B.weight", "transformer."
	case StyleKohya:
		sa, sb, prefix, flat = ".lora_down.weight", ".lora_up.weight", "lora_unet_", true
	case StyleComfyUI:
		sa, sb, prefix = ".lora_down.weight", ".lora_up.weight", "diffusion_model."
	default:
		return fmt.Errorf("%s: lora style %q: want %s, %s or %s", path, opt.Style, StylePEFT, StyleKohya, StyleComfyUI)
	}
	switch opt.Prefix {
	case "":
	case "-":
		prefix = ""
	default:
		prefix = opt.Prefix
	}
	var ts []safetensors.Tensor
	seen := map[string]bool{}
	for _, m := range mods {
		if m.Rank <= 0 || m.N <= 0 || m.K <= 0 || len(m.A) != m.Rank*m.K || len(m.B) != m.N*m.Rank {
			return fmt.Errorf("%s: module %s: A has %d values, B %d, for rank %d, [%d %d]", path, m.Module, len(m.A), len(m.B), m.Rank, m.N, m.K)
		}
		key := m.Module
		if flat {
			key = flatten(key)
		}
		key = prefix + key
		if seen[key] {
			return fmt.Errorf("%s: module %s written twice", path, key)
		}
		seen[key] = true
		ts = append(ts,
			safetensors.Tensor{Spec: safetensors.Spec{Name: key + sa, DType: dt, Shape: []int64{int64(m.Rank), int64(m.K)}}, Data: encode(m.A, dt)},
			safetensors.Tensor{Spec: safetensors.Spec{Name: key + sb, DType: dt, Shape: []int64{int64(m.N), int64(m.Rank)}}, Data: encode(m.B, dt)})
		if !m.NoAlpha {
			ts = append(ts, safetensors.Tensor{Spec: safetensors.Spec{Name: key + ".alpha", DType: alphaDT, Shape: []int64{}},
				Data: encode([]float32{float32(m.Alpha)}, alphaDT)})
		}
	}
	return safetensors.WriteFile(path, ts, map[string]string{"format": "pt"})
}

// encode converts v to the little-endian bytes of dt.
func encode(v []float32, dt safetensors.DType) []byte {
	switch dt {
	case safetensors.BF16:
		return quant.BF16.Encode(v)
	case safetensors.F16:
		return quant.F16.Encode(v)
	case safetensors.F8E4M3:
		out := make([]byte, len(v))
		for i, f := range v {
			out[i] = quant.F32ToE4M3Sat(f)
		}
		return out
	case safetensors.F8E5M2:
		out := make([]byte, len(v))
		for i, f := range v {
			out[i] = quant.F32ToE5M2(f)
		}
		return out
	}
	out := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(f))
	}
	return out
}

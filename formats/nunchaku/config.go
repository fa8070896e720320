package nunchaku

import (
	"encoding/json"
	"fmt"

	"github.com/svdq/svdq/quant"
)

// Safetensors __metadata__ keys of a nunchaku checkpoint (all values are
// strings).
const (
	MetaConfig             = "config"              // the diffusers config.json text
	MetaModelClass         = "model_class"         // e.g. "NunchakuFluxTransformer2dModel"
	MetaQuantizationConfig = "quantization_config" // QuantizationConfig
	MetaSVDQ               = "svdq"                // our per-layer record (Meta)
	MetaSVDQLoras          = "svdq_loras"          // provenance of fused LoRAs (defined by formats/lora)
)

// QuantizationConfig returns the quantization_config metadata string nunchaku
// reads, byte for byte what nunchaku/merge_safetensors.py writes (Python
// json.dumps with its default ", " and ": " separators):
//
//	{"method": "svdquant", "weight": {"dtype": "int4", "scale_dtype": null, "group_size": 64}, "activation": {"dtype": "int4", "scale_dtype": null, "group_size": 64}, "rank": 32}
//
// and for NVFP4 weight dtype "fp4_e2m1_all", weight scale_dtype
// [null, "fp8_e4m3_nan"], activation scale_dtype "fp8_e4m3_nan", group 16.
// (The workspace spec prints the compact spelling and does not give the
// NVFP4 activation entry; we follow merge_safetensors.py, and readers parse
// JSON, so the spacing does not matter to them.)
// rank is rounded up to a multiple of 16, the rank the tensors store (nunchaku
// builds its modules with this rank, so it must match lora_down's width).
// It panics on an unknown precision or a negative rank.
func QuantizationConfig(p quant.Precision, rank int) string {
	if rank < 0 {
		panic(fmt.Sprintf("nunchaku: negative rank %d", rank))
	}
	rank = ceilTo(rank, rankTile)
	switch p {
	case quant.INT4:
		return fmt.Sprintf(`{"method": "svdquant", "weight": {"dtype": "int4", "scale_dtype": null, "group_size": 64}, `+
			`"activation": {"dtype": "int4", "scale_dtype": null, "group_size": 64}, "rank": %d}`, rank)
	case quant.NVFP4:
		return fmt.Sprintf(`{"method": "svdquant", "weight": {"dtype": "fp4_e2m1_all", "scale_dtype": [null, "fp8_e4m3_nan"], "group_size": 16}, `+
			`"activation": {"dtype": "fp4_e2m1_all", "scale_dtype": "fp8_e4m3_nan", "group_size": 16}, "rank": %d}`, rank)
	}
	panic(fmt.Sprintf("nunchaku: unknown precision %v", p))
}

// ParseQuantizationConfig reads the precision and rank from a
// quantization_config string (ours or nunchaku's, any JSON spacing; extra
// keys such as "skip_refiners" are ignored). The precision comes from
// weight.dtype: "int4" or "fp4_e2m1_all". Missing rank reads as 0.
func ParseQuantizationConfig(s string) (quant.Precision, int, error) {
	var c struct {
		Method string `json:"method"`
		Weight struct {
			DType     string `json:"dtype"`
			GroupSize int    `json:"group_size"`
		} `json:"weight"`
		Rank int `json:"rank"`
	}
	if err := json.Unmarshal([]byte(s), &c); err != nil {
		return 0, 0, fmt.Errorf("nunchaku: quantization_config: %v", err)
	}
	if c.Method != "svdquant" {
		return 0, 0, fmt.Errorf("nunchaku: quantization_config: method %q, want \"svdquant\"", c.Method)
	}
	var p quant.Precision
	switch c.Weight.DType {
	case "int4":
		p = quant.INT4
	case "fp4_e2m1_all":
		p = quant.NVFP4
	default:
		return 0, 0, fmt.Errorf("nunchaku: quantization_config: weight dtype %q, want int4 or fp4_e2m1_all", c.Weight.DType)
	}
	if c.Weight.GroupSize != 0 && c.Weight.GroupSize != p.GroupSize() {
		return 0, 0, fmt.Errorf("nunchaku: quantization_config: group size %d for %v, want %d", c.Weight.GroupSize, p, p.GroupSize())
	}
	if c.Rank < 0 {
		return 0, 0, fmt.Errorf("nunchaku: quantization_config: negative rank %d", c.Rank)
	}
	return p, c.Rank, nil
}

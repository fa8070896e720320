package engine

import (
	"fmt"
	"sort"
	"strings"
)

// Engine names, as --target takes them.
const (
	// CPP is nunchaku's C++ engine behind its Python wrappers
	// (NunchakuFluxTransformer2dModel, "V1"; NunchakuSanaTransformer2DModel).
	CPP = "nunchaku-cpp"
	// Python is nunchaku's pure-Python model classes built of
	// SVDQW4A4Linear / AWQW4A16Linear (FLUX "V2", Qwen-Image, SDXL, Z-Image)
	// or W4Linear (the T5 text encoder).
	Python = "nunchaku-python"
	// ComfyUI is ComfyUI-nunchaku's loader nodes.
	ComfyUI = "comfyui"
)

// Engines lists the engine names in display order.
var Engines = []string{CPP, Python, ComfyUI}

// Commits are the loader sources the table was read from.
var Commits = map[string]string{
	"nunchaku":         "3a3cc3d (2025-12-30)",
	"ComfyUI-nunchaku": "dbfd194 (2025-11-08)",
}

// Naming is the set of tensor names a W4A4 layer carries in the file.
type Naming uint8

const (
	// CPPNames: smooth, smooth_orig, lora_down, lora_up.
	CPPNames Naming = iota + 1
	// PythonNames: smooth_factor, smooth_factor_orig, proj_down, proj_up.
	PythonNames
)

// String returns "C++ names" or "Python names".
func (n Naming) String() string {
	switch n {
	case CPPNames:
		return "C++ names (smooth, lora_down, lora_up)"
	case PythonNames:
		return "Python names (smooth_factor, proj_down, proj_up)"
	}
	return fmt.Sprintf("Naming(%d)", uint8(n))
}

// Need says what a loader does with an optional kind of tensor or key.
type Need uint8

const (
	// Ignored: the loader never reads it; present or not, the load passes.
	Ignored Need = iota
	// Optional: read when present, defaulted when absent.
	Optional
	// Required: the load fails (or reads garbage) without it.
	Required
	// Forbidden: a strict load fails on it (an unexpected key).
	Forbidden
)

// RankRule is how a loader sizes a W4A4 layer's low-rank branch.
type RankRule uint8

const (
	// RankPerLayer: each layer's rank is its lora_down's width; it must be
	// a multiple of 16, and where the engine fuses an MLP (C++ FLUX) both
	// linears of the pair must have the same rank.
	RankPerLayer RankRule = iota + 1
	// RankUniform: every W4A4 module is built with quantization_config's
	// "rank" (32 when absent) and loaded strictly, so every layer's stored
	// rank must equal it.
	RankUniform
)

// DTypeRule is how a loader treats the file's 16-bit dtype.
type DTypeRule uint8

const (
	// DTypeCast: BF16/F16 tensors are cast to the pipeline's dtype on load.
	DTypeCast DTypeRule = iota + 1
	// DTypeExact: every float tensor must have the pipeline's dtype
	// (patch_scale_key asserts it), so the file must be all BF16 or all F16.
	DTypeExact
	// DTypeBF16: as DTypeExact, and only BF16 loads (FLUX V2 builds its
	// AWQ W4A16 modules in BF16 whatever torch_dtype is).
	DTypeBF16
)

// MetaNeed is one safetensors metadata key a loader reads.
type MetaNeed struct {
	Key  string
	Need Need   // Required or Optional
	Why  string // what the loader does with it
	// Value, when set, is the plain string the key must hold (the loader
	// compares it; ComfyUI-nunchaku's model_class). Keys without a Value
	// hold JSON.
	Value string
}

// Fixed is an architecture the engine hard-codes instead of reading the
// config (nunchaku's C++ FluxModel: 19 double and 38 single blocks of
// width 3072).
type Fixed struct {
	Width  int            // W4A4 in-features of the attention projections
	Blocks map[string]int // block stem → count
}

// Contract is what one engine's loader of one family reads.
type Contract struct {
	Engine string
	Family string   // the family's layer table (Families)
	Loader string   // the class or node a user loads the file with
	Source []string // "repo path function" where each rule was read
	Naming Naming
	// Strict: tensors the loader does not build fail the load (PyTorch
	// load_state_dict strict=True). The C++ engine looks up only the names
	// it registered (Module::loadParams), so extra tensors pass there.
	Strict bool
	// Padded: W4A4 shapes are N, K rounded up to 128 (C++ GEMM_W4A4). The
	// Python modules are built with the model's exact widths.
	Padded bool
	// Bias: true when every W4A4 layer has a bias tensor in the loader
	// (C++ FLUX/SANA modules are built with bias); false when the loader
	// builds a bias only where the family's LayerSpec says so.
	BiasAlways bool
	Rank       RankRule
	DType      DTypeRule
	// SmoothOrig: what the loader does with smooth_orig / smooth_factor_orig.
	SmoothOrig Need
	// WTScale and WCScales: what an NVFP4 layer may carry. INT4 layers of a
	// strict loader must have neither (the modules have no such parameter).
	WTScale, WCScales Need
	// W4A16Branch: what the loader does with lora_down/lora_up on an AWQ
	// W4A16 layer (C++ GEMV_AWQ reads them; AWQW4A16Linear has none).
	W4A16Branch Need
	// Reserved: what the loader does with svdq's top-level svdq_lora.*
	// tensors (fuse-lora's old provenance tensors).
	Reserved string
	Meta     []MetaNeed
	Fixed    *Fixed
	// Precisions the engine runs (both unless the loader refuses one).
	Notes string
}

// Key names the contract: "nunchaku-cpp/flux".
func (c *Contract) Key() string { return c.Engine + "/" + c.Family }

// Contracts returns every contract, sorted by family then engine order.
func Contracts() []*Contract {
	out := append([]*Contract(nil), table...)
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Family != out[j].Family {
			return out[i].Family < out[j].Family
		}
		return engineIndex(out[i].Engine) < engineIndex(out[j].Engine)
	})
	return out
}

func engineIndex(e string) int {
	for i, x := range Engines {
		if x == e {
			return i
		}
	}
	return len(Engines)
}

// For returns the contracts of the engines that run the preset family
// (e.g. "flux-dev"), in engine order; none for a family nunchaku does not
// run (PixArt-Σ, generic, ...).
func For(presetFamily string) []*Contract {
	fam := tableFamily(presetFamily)
	if fam == "" {
		return nil
	}
	var out []*Contract
	for _, c := range Contracts() {
		if c.Family == fam {
			out = append(out, c)
		}
	}
	return out
}

// Select returns the contracts of presetFamily for target: "" or "all"
// for every engine that runs the family, else one engine name. It fails
// when the family has no such engine.
func Select(presetFamily, target string) ([]*Contract, error) {
	all := For(presetFamily)
	if target == "" || target == "all" {
		return all, nil
	}
	if engineIndex(target) == len(Engines) {
		return nil, fmt.Errorf("unknown target %q (known: all, %s)", target, strings.Join(Engines, ", "))
	}
	for _, c := range all {
		if c.Engine == target {
			return []*Contract{c}, nil
		}
	}
	var have []string
	for _, c := range all {
		have = append(have, c.Engine)
	}
	if len(have) == 0 {
		return nil, fmt.Errorf("no engine loads family %s", presetFamily)
	}
	return nil, fmt.Errorf("%s does not load family %s (engines that do: %s)", target, presetFamily, strings.Join(have, ", "))
}

// tableFamily maps a preset family ("flux-dev") or a table family
// ("flux") to the table family ("" when neither).
func tableFamily(name string) string {
	if f, ok := familyOf[name]; ok {
		return f
	}
	if _, ok := Families[name]; ok {
		return name
	}
	return ""
}

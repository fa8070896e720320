package lora

import (
	"fmt"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// Kind is the form of a layer a LoRA lands on.
type Kind uint8

const (
	W4A4  Kind = iota + 1 // SVDQuant layer: the branch grows
	W4A16                 // weight-only adaLN layer: unpacked 16-bit branch
	Kept                  // 16-bit tensor: merged into the weight
)

// String returns "w4a4", "w4a16" or "kept".
func (k Kind) String() string {
	switch k {
	case W4A4:
		return "w4a4"
	case W4A16:
		return "w4a16"
	case Kept:
		return "kept"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// ParseKind is the inverse of String.
func ParseKind(s string) (Kind, error) {
	for _, k := range []Kind{W4A4, W4A16, Kept} {
		if k.String() == s {
			return k, nil
		}
	}
	return 0, fmt.Errorf("unknown layer kind %q", s)
}

// Target is where part of a module's ΔW [N_m, K_m] lands: rows SrcRows and
// columns Cols of it become rows Rows (all K = Cols.Len() columns) of Layer.
type Target struct {
	Layer               string
	SrcRows, Cols, Rows preset.Range
}

// LayerInfo describes a layer LoRAs can land on.
type LayerInfo struct {
	Name   string
	Kind   Kind
	N, K   int // logical shape of the weight
	R      int // logical rank of the branch now in the file (W4A4: svdq metadata)
	Chunks int // W4A16 output chunks (row interleave of the packed layer)
	// DType of the layer's 16-bit values. Kept tensors may also be F32
	// (Float32 true).
	DType   quant.Float16
	Float32 bool
}

// Index maps module names, in every naming the checkpoint's family knows,
// to targets in one checkpoint.
type Index struct {
	Layers map[string]*LayerInfo
	// Aliases says where names beyond the file's own came from: the family
	// whose preset tables were used, or why none could be ("" when the file
	// names are the only ones).
	Aliases string

	modules map[string][]Target // module (prefixes stripped) → targets
	flat    map[string]string   // kohya-flattened module → module ("" when ambiguous)

	// vector.go: the file's 1-D tensors, the layer rows that have a bias,
	// and norm weights by source name in every naming.
	vectors  map[string]*VectorInfo
	biasOf   map[string][]biasRows
	vecAlias map[string]string

	family string // the svdq entry's (widen.go)
}

// NewIndex builds the index of a quantized checkpoint from its svdq
// metadata and its tensor headers:
//
//   - every source of every quantized layer (the module names of the file it
//     was quantized from, with row and column ranges);
//   - every 2-D float tensor "<m>.weight" outside the quantized layers and
//     the reserved names, as module m (kept 16-bit tensors: embedders, final
//     layers, cross-attention K/V, …);
//   - the names of the family's other naming (BFL ↔ diffusers for FLUX),
//     taken from formats/preset's tables (see presetAliases), where the
//     file's own names do not already resolve them.
//
// Kohya-flattened names resolve against the flattened forms of all of these
// when exactly one matches.
func NewIndex(meta *nunchaku.Meta, infos []safetensors.Info) (*Index, error) {
	ix := &Index{Layers: map[string]*LayerInfo{}, modules: map[string][]Target{}}
	quantized := map[string]bool{}
	for i := range meta.Layers {
		lm := &meta.Layers[i]
		dt, err := float16(lm.DType)
		if err != nil {
			return nil, fmt.Errorf("svdq metadata: layer %s: %v", lm.Name, err)
		}
		li := &LayerInfo{Name: lm.Name, N: lm.N, K: lm.K, R: lm.R, DType: dt, Chunks: lm.Chunks}
		switch lm.Kind {
		case nunchaku.KindW4A4:
			li.Kind = W4A4
		case nunchaku.KindW4A16:
			li.Kind = W4A16
		default:
			return nil, fmt.Errorf("svdq metadata: layer %s: kind %q", lm.Name, lm.Kind)
		}
		ix.Layers[lm.Name] = li
		quantized[lm.Name] = true
		for _, s := range lm.Sources {
			mod := StripPrefixes(strings.TrimSuffix(s.Tensor, ".weight"))
			ix.add(mod, Target{Layer: lm.Name,
				SrcRows: preset.Range{Lo: s.SrcRows[0], Hi: s.SrcRows[1]},
				Cols:    preset.Range{Lo: s.SrcCols[0], Hi: s.SrcCols[1]},
				Rows:    preset.Range{Lo: s.Rows[0], Hi: s.Rows[1]}})
		}
	}
	names := make([]string, len(infos))
	for i, in := range infos {
		names[i] = in.Name
	}
	inLayer := map[string]bool{}
	for _, g := range nunchaku.Layers(names) {
		for _, s := range g.Suffixes {
			inLayer[g.Name+"."+s] = true
		}
	}
	for _, in := range infos {
		if inLayer[in.Name] || strings.HasPrefix(in.Name, ReservedPrefix) || len(in.Shape) != 2 {
			continue
		}
		mod, ok := strings.CutSuffix(in.Name, ".weight")
		if !ok {
			continue
		}
		li := &LayerInfo{Name: in.Name, Kind: Kept, N: int(in.Shape[0]), K: int(in.Shape[1])}
		switch in.DType {
		case safetensors.BF16:
			li.DType = quant.BF16
		case safetensors.F16:
			li.DType = quant.F16
		case safetensors.F32:
			li.Float32 = true
		default:
			continue
		}
		ix.Layers[in.Name] = li
		ix.add(StripPrefixes(mod), Target{Layer: in.Name, SrcRows: preset.All(li.N), Cols: preset.All(li.K), Rows: preset.All(li.N)})
	}
	ix.family = meta.Family
	ix.Aliases = ix.presetAliases(meta, infos)
	ix.indexVectors(meta, infos)
	ix.flat = map[string]string{}
	for m := range ix.modules {
		f := flatten(m)
		if _, dup := ix.flat[f]; dup {
			ix.flat[f] = ""
		} else {
			ix.flat[f] = m
		}
	}
	return ix, nil
}

func float16(dt string) (quant.Float16, error) {
	switch dt {
	case "BF16":
		return quant.BF16, nil
	case "F16":
		return quant.F16, nil
	}
	return 0, fmt.Errorf("dtype %q is not BF16 or F16", dt)
}

func (ix *Index) add(module string, t Target) {
	ix.modules[module] = append(ix.modules[module], t)
}

// Modules returns every module name the index resolves, sorted.
func (ix *Index) Modules() []string {
	out := make([]string, 0, len(ix.modules))
	for m := range ix.modules {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}

// Resolve returns the targets of a LoRA module name: prefixes stripped
// (StripPrefixes), then an exact match, then the kohya-flattened form when
// exactly one known module flattens to it. ok is false for an unknown or
// ambiguous name.
func (ix *Index) Resolve(module string) ([]Target, bool) {
	m := StripPrefixes(module)
	if ts, ok := ix.modules[m]; ok {
		return append([]Target(nil), ts...), true
	}
	if full := ix.flat[flatten(m)]; full != "" {
		return append([]Target(nil), ix.modules[full]...), true
	}
	return nil, false
}

package engine

import (
	"bytes"
	"fmt"
	"math"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant"
)

// Layout is how a writer lays out quantized layers so that a file loads
// in a set of engines: the merge of their contracts.
type Layout struct {
	Family  string   // table family
	Engines []string // the target engines
	Naming  Naming
	// BiasAlways: every W4A4 layer carries a bias (zeros where the source
	// has none); otherwise exactly the layers whose LayerSpec.Bias is set.
	BiasAlways bool
	// Strict: some target rejects tensors its modules do not have.
	Strict bool
	// NVFP4 per-tensor scale handling.
	NoWTScale   bool // no target accepts wtscale: it must be 1 and is dropped
	NeedWCScale bool // some target requires wcscales: ones are written
	// NoW4A16Branch: some target has no LoRA branch on W4A16 layers.
	NoW4A16Branch bool
	// UniformRank: some target builds every W4A4 module with one rank.
	UniformRank bool
	// Comfy: a target reads comfy_config.
	Comfy bool
	// DType: the 16-bit dtype rule of the strictest target.
	DType DTypeRule
}

// LayoutFor merges contracts (all of one family). It fails when two
// engines need different tensor names, naming both: then a file can load in
// only one of them, and --target must choose.
func LayoutFor(cs []*Contract) (*Layout, error) {
	if len(cs) == 0 {
		return nil, nil
	}
	l := &Layout{Family: cs[0].Family, Naming: cs[0].Naming, DType: DTypeCast}
	for _, c := range cs {
		if c.Family != l.Family {
			panic("engine: LayoutFor: contracts of two families")
		}
		if c.Naming != l.Naming {
			return nil, fmt.Errorf("%s reads %s but %s reads %s: pass --target to choose one",
				cs[0].Engine, cs[0].Naming, c.Engine, c.Naming)
		}
		l.Engines = append(l.Engines, c.Engine)
		l.BiasAlways = l.BiasAlways || c.BiasAlways
		l.Strict = l.Strict || c.Strict
		l.NoWTScale = l.NoWTScale || c.WTScale == Forbidden
		l.NeedWCScale = l.NeedWCScale || c.WCScales == Required
		l.NoW4A16Branch = l.NoW4A16Branch || c.W4A16Branch == Forbidden
		l.UniformRank = l.UniformRank || c.Rank == RankUniform
		l.DType = max(l.DType, c.DType)
		for _, m := range c.Meta {
			if m.Key == MetaComfyConfig {
				l.Comfy = true
			}
		}
	}
	if l.BiasAlways && l.Strict {
		// A strict target that builds some module without a bias and a
		// target that needs every bias cannot both be served.
		for _, b := range Families[l.Family].Blocks {
			for _, s := range b.Layers {
				if s.Kind == w4a4 && !s.Bias {
					return nil, fmt.Errorf("engines %s disagree on the bias of %s.%s: pass --target", strings.Join(l.Engines, ", "), b.Stem, s.Name)
				}
			}
		}
	}
	return l, nil
}

// canonical maps Python tensor names to the C++ ones (nunchaku.Tensor
// suffixes are C++ names inside svdq).
var canonical = map[string]string{
	"smooth_factor":      nunchaku.SuffixSmooth,
	"smooth_factor_orig": nunchaku.SuffixSmoothOrig,
	"proj_down":          nunchaku.SuffixLoraDown,
	"proj_up":            nunchaku.SuffixLoraUp,
}

// Canonical returns the C++ name of a layer tensor suffix.
func Canonical(suffix string) string {
	if c, ok := canonical[suffix]; ok {
		return c
	}
	return suffix
}

// FileSuffix returns the name the layout gives a C++ suffix in the file.
func (l *Layout) FileSuffix(suffix string) string {
	if l != nil && l.Naming == PythonNames {
		for py, cpp := range canonical {
			if cpp == suffix {
				return py
			}
		}
	}
	return suffix
}

// Adapt returns the tensors of quantized layer `layer` (C++ or Python
// suffixes, as a packer or a file gives them) laid out for l: the bias
// dropped where the targets build none (it must be zero) or added as zeros
// where they need one (W4A4, and a W4Linear's where its module has one),
// W4A16 scale rows trimmed to ceil(K/64), an NVFP4
// wtscale of 1 dropped or wcscales of ones added where a target demands,
// and the W4A4 tensors renamed to l.Naming. Tensors whose Data is nil
// (shape-only specs) are adapted without value checks. The input is not
// modified. A nil Layout returns ts unchanged.
func (l *Layout) Adapt(presetFamily, layer string, ts []nunchaku.Tensor) ([]nunchaku.Tensor, error) {
	if l == nil {
		return ts, nil
	}
	spec, ok := LayerSpecOf(presetFamily, layer)
	if !ok {
		return nil, fmt.Errorf("layer %s is not a module of the %s loaders", layer, strings.Join(l.Engines, ", "))
	}
	by := map[string]nunchaku.Tensor{}
	var order []string
	for _, t := range ts {
		t.Suffix = Canonical(t.Suffix)
		if _, dup := by[t.Suffix]; !dup {
			order = append(order, t.Suffix)
		}
		by[t.Suffix] = t
	}
	qw, ok := by[nunchaku.SuffixQWeight]
	if !ok || len(qw.Shape) != 2 {
		return nil, fmt.Errorf("layer %s: no 2-D qweight", layer)
	}
	add := func(t nunchaku.Tensor) {
		if _, ok := by[t.Suffix]; !ok {
			order = append(order, t.Suffix)
		}
		by[t.Suffix] = t
	}
	switch spec.Kind {
	case w4a16g128:
		// W4Linear (nunchaku's T5): nothing to rename or trim; no branch;
		// a bias only where the module has one.
		if _, ok := by[nunchaku.SuffixLoraDown]; ok {
			return nil, fmt.Errorf("layer %s: a low-rank branch on a W4Linear layer, which the %s loaders do not have",
				layer, strings.Join(l.Engines, ", "))
		}
		sc, ok := by[nunchaku.SuffixScales]
		if !ok || len(sc.Shape) != 2 {
			return nil, fmt.Errorf("layer %s: no 2-D scales tensor", layer)
		}
		if b, ok := by[nunchaku.SuffixBias]; ok && !spec.Bias && l.Strict {
			if b.Data != nil && !allZero(b.Data) {
				return nil, fmt.Errorf("layer %s: the %s loaders build it without a bias, but its bias is not zero",
					layer, strings.Join(l.Engines, ", "))
			}
			delete(by, nunchaku.SuffixBias)
		} else if !ok && spec.Bias {
			np := int(sc.Shape[len(sc.Shape)-1])
			add(nunchaku.Tensor{Suffix: nunchaku.SuffixBias, DType: sc.DType, Shape: []int64{int64(np)}, Data: zeros(sc.Data, np*2)})
		}
	case w4a16:
		if l.NoW4A16Branch {
			if _, ok := by[nunchaku.SuffixLoraDown]; ok {
				return nil, fmt.Errorf("layer %s: a low-rank branch on a W4A16 layer, which the %s loaders do not have",
					layer, strings.Join(l.Engines, ", "))
			}
		}
		k := 2 * int(qw.Shape[1])
		rows := (k + 63) / 64
		for _, s := range []string{nunchaku.SuffixWScales, nunchaku.SuffixWZeros} {
			t, ok := by[s]
			if !ok || len(t.Shape) != 2 || int(t.Shape[0]) <= rows {
				continue
			}
			cut := int64(rows) * t.Shape[1] * 2
			if t.Data != nil && !allZero(t.Data[cut:]) {
				return nil, fmt.Errorf("layer %s: %s rows past ceil(K/64) = %d are not zero", layer, s, rows)
			}
			t.Shape = []int64{int64(rows), t.Shape[1]}
			if t.Data != nil {
				t.Data = t.Data[:cut]
			}
			by[s] = t
		}
	default:
		sm, ok := by[nunchaku.SuffixSmooth]
		if !ok {
			return nil, fmt.Errorf("layer %s: no smooth tensor", layer)
		}
		np := qw.Shape[0]
		wantBias := l.BiasAlways || spec.Bias
		if b, ok := by[nunchaku.SuffixBias]; ok && !wantBias {
			// A non-strict loader (C++) never reads it: kept, so that the
			// file still holds the source's bias for svdq's own tools.
			if l.Strict {
				if b.Data != nil && !allZero(b.Data) {
					return nil, fmt.Errorf("layer %s: the %s loaders build it without a bias, but its bias is not zero",
						layer, strings.Join(l.Engines, ", "))
				}
				delete(by, nunchaku.SuffixBias)
			}
		} else if !ok && wantBias {
			add(nunchaku.Tensor{Suffix: nunchaku.SuffixBias, DType: sm.DType, Shape: []int64{np}, Data: zeros(sm.Data, int(np)*2)})
		}
		if ws := by[nunchaku.SuffixWScales]; ws.DType == "F8_E4M3" {
			// A loader without wtscale (SDXL) takes a power-of-two tensor
			// scale as uniform wcscales: the kernel multiplies its 16-bit
			// output by wcscales[n], the same value rounded the same way
			// (a power of two commutes with rounding, short of the 16-bit
			// range's ends).
			cs := 1.0
			if t, ok := by[nunchaku.SuffixWTScale]; ok && l.NoWTScale {
				if t.Data != nil {
					cs = scalar(t)
					if cs != 1 && (!l.NeedWCScale || !pow2In16(cs, sm.DType)) {
						return nil, fmt.Errorf("layer %s: NVFP4 tensor scale %v, but the %s loader reads no wtscale (it must be 1, or a power of two it can take as wcscales)",
							layer, cs, strings.Join(l.Engines, ", "))
					}
				}
				delete(by, nunchaku.SuffixWTScale)
			}
			if _, ok := by[nunchaku.SuffixWCScales]; !ok && l.NeedWCScale {
				var data []byte
				if sm.Data != nil {
					data = fill16(sm.DType, int(np), cs)
				}
				add(nunchaku.Tensor{Suffix: nunchaku.SuffixWCScales, DType: sm.DType, Shape: []int64{np}, Data: data})
			}
		}
	}
	out := make([]nunchaku.Tensor, 0, len(by))
	for _, s := range order {
		t, ok := by[s]
		if !ok {
			continue
		}
		if spec.Kind == w4a4 {
			t.Suffix = l.FileSuffix(s)
		}
		out = append(out, t)
	}
	return out, nil
}

func allZero(b []byte) bool {
	return len(b) == 0 || (b[0] == 0 && bytes.Equal(b, make([]byte, len(b))))
}

// zeros returns n zero bytes, or nil in shape-only mode (like nil).
func zeros(like []byte, n int) []byte {
	if like == nil {
		return nil
	}
	return make([]byte, n)
}

// float16Of maps "BF16"/"F16" to quant's type.
func float16Of(dtype string) quant.Float16 {
	if dtype == "F16" {
		return quant.F16
	}
	return quant.BF16
}

// fill16 returns n 16-bit values v of dtype ("BF16" or "F16"); v must be
// exact in it (pow2In16).
func fill16(dtype string, n int, v float64) []byte {
	vs := make([]float32, n)
	for i := range vs {
		vs[i] = float32(v)
	}
	return float16Of(dtype).Encode(vs)
}

// pow2In16 reports whether v is a power of two that dtype holds exactly.
func pow2In16(v float64, dtype string) bool {
	fr, _ := math.Frexp(v)
	f := float32(v)
	return fr == 0.5 && float64(f) == v && float16Of(dtype).Round(f) == f
}

// scalar reads the first element of an F32/BF16/F16 tensor (NaN when
// unreadable).
func scalar(t nunchaku.Tensor) float64 {
	size := map[string]int{"F32": 4, "BF16": 2, "F16": 2}[t.DType]
	v := make([]float32, 1)
	if size == 0 || len(t.Data) < size || quant.Decode(v, t.DType, t.Data[:size]) != nil {
		return math.NaN()
	}
	return float64(v[0])
}

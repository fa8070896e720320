package nunchaku

import (
	"sort"
	"strings"

	"github.com/svdq/svdq/quant"
)

// knownSuffixes are the tensor suffixes of quantized layers, C++ and Python
// names alike.
var knownSuffixes = func() map[string]bool {
	m := map[string]bool{}
	for _, s := range []string{SuffixQWeight, SuffixWScales, SuffixWTScale, SuffixWCScales, SuffixWZeros,
		SuffixBias, SuffixSmooth, SuffixSmoothOrig, SuffixLoraDown, SuffixLoraUp, SuffixScales, SuffixScaledZeros} {
		m[s] = true
	}
	for _, a := range aliases {
		m[a] = true
	}
	return m
}()

// Group is one quantized layer found among a file's tensor names.
type Group struct {
	Name     string   // tensor prefix, e.g. "transformer_blocks.0.qkv_proj"
	Kind     string   // KindW4A4, KindW4A16 or KindW4A16G128
	Suffixes []string // suffixes of its tensors, sorted
}

// Layers groups the tensor names of a file into quantized layers by suffix:
// prefix p is a W4A16 layer when p.qweight, p.wscales and p.wzeros exist,
// a W4A4 layer when p.qweight, p.wscales and p.smooth (or p.smooth_factor)
// exist, and a W4Linear (KindW4A16G128, nunchaku's T5) when p.qweight,
// p.scales and p.scaled_zeros exist. Names that belong to no such layer
// (16-bit tensors, norms) are left out. The result is sorted by name, digit runs
// compared as numbers.
func Layers(names []string) []Group {
	bySuffix := map[string]map[string]bool{}
	for _, n := range names {
		i := strings.LastIndexByte(n, '.')
		if i <= 0 || !knownSuffixes[n[i+1:]] {
			continue
		}
		p := n[:i]
		if bySuffix[p] == nil {
			bySuffix[p] = map[string]bool{}
		}
		bySuffix[p][n[i+1:]] = true
	}
	var out []Group
	for p, s := range bySuffix {
		if !s[SuffixQWeight] {
			continue
		}
		g := Group{Name: p}
		switch {
		case s[SuffixWScales] && s[SuffixWZeros]:
			g.Kind = KindW4A16
		case s[SuffixWScales] && (s[SuffixSmooth] || s[aliases[SuffixSmooth]]):
			g.Kind = KindW4A4
		case s[SuffixScales] && s[SuffixScaledZeros]:
			g.Kind = KindW4A16G128
		default:
			continue
		}
		for suf := range s {
			g.Suffixes = append(g.Suffixes, suf)
		}
		sort.Strings(g.Suffixes)
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return naturalLess(out[i].Name, out[j].Name) })
	return out
}

// TensorInfo is a tensor's header entry as Describe needs it.
type TensorInfo struct {
	Name  string
	DType string // safetensors dtype name
	Shape []int64
}

// LayerSummary describes one quantized layer of a file for display.
type LayerSummary struct {
	Group
	Precision string // "int4" or "nvfp4" (weight-only kinds: "int4")
	N, K, R   int    // sizes as stored (padded); 0 where a shape is not as expected
	DType     string // model dtype of its 16-bit tensors
	Bytes     int64  // total bytes of its tensors
}

// Describe groups a file's tensors into quantized layers (see Layers) and
// reads each layer's precision (from the wscales dtype), stored sizes
// (from qweight and lora_down) and byte count from the headers alone.
func Describe(ts []TensorInfo) []LayerSummary {
	names := make([]string, len(ts))
	byName := make(map[string]TensorInfo, len(ts))
	for i, t := range ts {
		names[i] = t.Name
		byName[t.Name] = t
	}
	groups := Layers(names)
	out := make([]LayerSummary, 0, len(groups))
	for _, g := range groups {
		s := LayerSummary{Group: g}
		tensor := func(suffix string) (TensorInfo, bool) {
			if t, ok := byName[g.Name+"."+suffix]; ok {
				return t, true
			}
			t, ok := byName[g.Name+"."+aliases[suffix]]
			return t, ok && aliases[suffix] != ""
		}
		for _, suf := range g.Suffixes {
			t := byName[g.Name+"."+suf]
			s.Bytes += elems(t.Shape) * int64(fileDTypeSize(t.DType))
		}
		q, _ := tensor(SuffixQWeight)
		w, _ := tensor(SuffixWScales)
		switch g.Kind {
		case KindW4A16G128:
			sc, _ := tensor(SuffixScales)
			s.Precision = quant.INT4.String()
			s.DType = sc.DType
			if len(q.Shape) == 2 {
				s.N, s.K = int(4*q.Shape[0]), int(q.Shape[1])
			}
		case KindW4A16:
			s.Precision = quant.INT4.String()
			s.DType = w.DType
			if len(q.Shape) == 2 {
				s.N, s.K = int(4*q.Shape[0]), int(2*q.Shape[1])
			}
		default:
			s.Precision = quant.INT4.String()
			if w.DType == dtE4M3 {
				s.Precision = quant.NVFP4.String()
			}
			if sm, ok := tensor(SuffixSmooth); ok {
				s.DType = sm.DType
			}
			if len(q.Shape) == 2 {
				s.N, s.K = int(q.Shape[0]), int(2*q.Shape[1])
			}
			if d, ok := tensor(SuffixLoraDown); ok && len(d.Shape) == 2 {
				s.R = int(d.Shape[1])
			}
		}
		out = append(out, s)
	}
	return out
}

func elems(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// fileDTypeSize is the element size of every safetensors dtype.
func fileDTypeSize(dt string) int {
	switch dt {
	case "F64", "I64", "U64":
		return 8
	case "F32", "I32", "U32":
		return 4
	case "F16", "BF16", "I16", "U16":
		return 2
	case "F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL":
		return 1
	}
	return 0
}

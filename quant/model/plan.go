package model

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	input "github.com/svdq/svdq/formats/source"
	"github.com/svdq/svdq/quant"
)

// PlanOptions choose the family and the layer forms of a plan.
type PlanOptions struct {
	Model     string          // checkpoint: file, sharded index or diffusers folder
	Arch      string          // family name; "" or "auto": detect from the tensor names
	Precision quant.Precision // W4A4 format; 0: INT4
	Rank      int             // low-rank size; 0: quant.DefaultRank; negative: none
	// Include and Exclude select layers of the generic family.
	Include, Exclude []*regexp.Regexp
	// PassUnknown keeps tensors a family does not know as 16-bit.
	PassUnknown bool
	// AllowMissingBias quantizes a linear without the bias every real
	// checkpoint of its family has (preset.Options.AllowMissingBias).
	AllowMissingBias bool
	// Target names the engine the file must load in (engine.CPP,
	// engine.Python, engine.ComfyUI); "" or "all": every engine that runs
	// the family (formats/engine). Naming an engine for a family no engine
	// runs is an error (engine.Select).
	Target string
	// DType is the output's 16-bit type; 0: the first quantized layer's
	// source dtype (F16 sources stay F16, others become BF16). Kept float
	// tensors of another dtype are converted when DType was asked for or
	// a target loader requires one dtype.
	DType quant.Float16
}

// PlannedLayer is one layer of a plan with its output form and sizes.
type PlannedLayer struct {
	preset.Layer
	Precision string // "int4", "nvfp4", "w4a16" or "w4a16g128"
	R         int    // rank of the branch (min(rank, N, K)); 0 for the weight-only forms
	DType     string // dtype of the first source tensor ("BF16", ...)
	InBytes   int64  // bytes of the source rows read
	OutBytes  int64  // bytes of the packed tensors
	// specs are the packed tensors (shapes and dtypes; no data).
	specs []nunchaku.Tensor
}

// PlannedKept is a 16-bit tensor of a plan with its dtype and size.
type PlannedKept struct {
	preset.Kept
	DType    safetensors.DType // as written
	SrcDType safetensors.DType // as read (differs when the plan converts it)
	// SrcForm is how the checkpoint stores a dequantized tensor ("Q8_0",
	// "F8_E4M3 × scale_weight"; formats/source), "" when read as stored.
	SrcForm string
	Bytes   int64
}

// Plan is what QuantizePlan finds: the family, every layer with its form
// and every tensor kept 16-bit, with exact output sizes.
type Plan struct {
	Model string // path as given
	// Input says how the checkpoint was read (formats/source): all-in-one
	// components left out, dequantizations, input dtypes as found.
	Input      *input.Input `json:"-"`
	Family     string
	ModelClass string
	Naming     string
	Precision  quant.Precision
	Rank       int // requested rank (DefaultRank when 0 was asked)
	// DType is the 16-bit type of every quantized layer's tensors.
	DType quant.Float16
	// Layout lays the layers out for the target engines (nil when no
	// engine runs the family: the C++ names, every W4A4 bias written).
	Layout *engine.Layout
	Layers []PlannedLayer
	Kept   []PlannedKept
	// InBytes is the size of every tensor of the checkpoint; OutBytes the
	// size of every tensor of the output (header excluded).
	InBytes, OutBytes int64
	// QuantParams is Σ N·K over the quantized layers; QuantBytes their
	// packed bytes.
	QuantParams, QuantBytes int64

	preset    *preset.Plan
	contracts []*engine.Contract // the target engines' (Layout's merge)
}

// HasW4A4 reports whether the plan has an SVDQuant (W4A4) layer; without
// one (the t5-xxl family) precision and rank do not apply.
func (p *Plan) HasW4A4() bool {
	return slices.ContainsFunc(p.Layers, func(l PlannedLayer) bool { return l.Role == preset.W4A4 })
}

// BitsPerWeight returns the packed bits per weight of the quantized layers
// (low-rank branch, scales, smoothing and bias included).
func (p *Plan) BitsPerWeight() float64 {
	if p.QuantParams == 0 {
		return 0
	}
	return float64(p.QuantBytes) * 8 / float64(p.QuantParams)
}

// KeptReasons returns the kept tensors grouped by reason: reason → count,
// and the reasons sorted by decreasing count, then name.
func (p *Plan) KeptReasons() (count map[string]int, order []string) {
	count = map[string]int{}
	for _, k := range p.Kept {
		if count[k.Reason] == 0 {
			order = append(order, k.Reason)
		}
		count[k.Reason]++
	}
	sort.Slice(order, func(i, j int) bool {
		if count[order[i]] != count[order[j]] {
			return count[order[i]] > count[order[j]]
		}
		return order[i] < order[j]
	})
	return count, order
}

// table adapts a safetensors.Reader to preset.Table.
type table struct{ r safetensors.Reader }

func (t table) Names() []string { return t.r.Names() }
func (t table) Shape(name string) ([]int64, bool) {
	i, ok := t.r.Info(name)
	return i.Shape, ok
}

// QuantizePlan opens opt.Model and derives its quantization plan without
// quantizing anything (what `svdq quantize --dry-run` prints). The returned
// reader stays open for the caller (Quantize uses it); close it when done.
func QuantizePlan(opt PlanOptions) (*Plan, safetensors.Reader, error) {
	r, err := input.Open(opt.Model)
	if err != nil {
		return nil, nil, err
	}
	p, err := planFor(r, opt)
	if err != nil {
		r.Close()
		return nil, nil, err
	}
	p.Input = r
	return p, r, nil
}

// dequantized returns the stored form of a tensor r computes by
// dequantization (formats/source.Input.Dequantized); "" otherwise.
func dequantized(r safetensors.Reader, name string) string {
	if in, ok := r.(*input.Input); ok {
		if s, ok := in.Dequantized(name); ok {
			return s
		}
	}
	return ""
}

// storedPerElem is the stored bytes per element of a tensor: its dtype's
// size, or for a dequantized tensor (formats/source) its stored form's
// (a Q4_K block's 144 bytes / 256).
func storedPerElem(r safetensors.Reader, name string, info safetensors.Info) float64 {
	if in, ok := r.(*input.Input); ok && info.Elems() > 0 {
		if sz, ok := in.StoredSize(name); ok {
			return float64(sz) / float64(info.Elems())
		}
	}
	return float64(info.DType.Size())
}

// planFor plans the open checkpoint r.
func planFor(r safetensors.Reader, opt PlanOptions) (*Plan, error) {
	file := opt.Model
	var fam preset.Family
	var err error
	if opt.Arch == "" || opt.Arch == "auto" {
		fam, err = preset.Detect(table{r})
	} else {
		fam, err = preset.Lookup(opt.Arch)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	pp, err := fam.Plan(table{r}, preset.Options{Include: opt.Include, Exclude: opt.Exclude, PassUnknown: opt.PassUnknown,
		AllowMissingBias: opt.AllowMissingBias})
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	prec := opt.Precision
	if prec == 0 {
		prec = quant.INT4
	}
	rank := opt.Rank
	switch {
	case rank == 0:
		rank = quant.DefaultRank
	case rank < 0:
		rank = 0
	}
	cs, err := engine.Select(pp.Family, opt.Target)
	if err != nil { // only a named target fails
		return nil, fmt.Errorf("%s: --target: %v", file, err)
	}
	layout, err := engine.LayoutFor(cs)
	if err != nil {
		return nil, fmt.Errorf("%s: family %s: %v", file, pp.Family, err)
	}
	if layout != nil && layout.NoWTScale && !layout.NeedWCScale && prec == quant.NVFP4 {
		return nil, fmt.Errorf("%s: family %s: %s loads neither an NVFP4 per-tensor scale (wtscale) nor per-channel scales, which svdq's NVFP4 layers need; use --precision int4",
			file, pp.Family, strings.Join(layout.Engines, ", "))
	}
	p := &Plan{Model: file, Family: pp.Family, ModelClass: pp.ModelClass, Naming: pp.Naming,
		Precision: prec, Rank: rank, Layout: layout, DType: opt.DType, preset: pp, contracts: cs}
	if in, ok := r.(*input.Input); ok {
		p.InBytes = in.StoredBytes // as stored: GGUF blocks, FP8 with its scales
	} else {
		for _, name := range r.Names() {
			info, _ := r.Info(name)
			p.InBytes += info.End - info.Begin
		}
	}
	cache := map[specKey][]nunchaku.Tensor{}
	for _, l := range pp.Layers {
		pl := PlannedLayer{Layer: l}
		if len(l.Sources) == 0 {
			return nil, fmt.Errorf("%s: layer %s has no source tensor", file, l.Name)
		}
		first, ok := r.Info(l.Sources[0].Tensor)
		if !ok {
			return nil, fmt.Errorf("%s: no tensor %q (layer %s)", file, l.Sources[0].Tensor, l.Name)
		}
		pl.DType = string(first.DType)
		if form := dequantized(r, l.Sources[0].Tensor); form != "" { // "Q4_K", "F8_E4M3×s"
			pl.DType, _, _ = strings.Cut(form, " ")
			if form != pl.DType {
				pl.DType += "×s"
			}
		}
		if p.DType == 0 {
			p.DType = quant.BF16
			if first.DType == safetensors.F16 {
				p.DType = quant.F16
			}
		}
		dt := p.DType
		for _, s := range l.Sources {
			info, ok := r.Info(s.Tensor)
			if !ok {
				return nil, fmt.Errorf("%s: no tensor %q (layer %s)", file, s.Tensor, l.Name)
			}
			if _, _, err := matrixShape(info); err != nil {
				return nil, fmt.Errorf("%s: tensor %q: %v", file, s.Tensor, err)
			}
			pl.InBytes += int64(float64(s.SrcRows.Len()*s.Cols.Len()) * storedPerElem(r, s.Tensor, info))
			if s.Bias != "" {
				if b, ok := r.Info(s.Bias); ok {
					pl.InBytes += int64(s.SrcRows.Len()) * int64(b.DType.Size())
				}
			}
		}
		key := specKey{n: l.N, k: l.K, dt: dt}
		switch l.Role {
		case preset.W4A4:
			pl.Precision = prec.String()
			pl.R = min(rank, l.N, l.K)
			key.prec, key.r = prec, pl.R
			key.unsigned = l.Shifted && prec == quant.INT4
		case preset.W4A16:
			pl.Precision = "w4a16"
			key.w4a16, key.chunks = true, max(l.Chunks, 1)
		case preset.W4A16G128:
			pl.Precision = nunchaku.KindW4A16G128
			key.w4linear, key.bias = true, hasBias(&l)
		default:
			return nil, fmt.Errorf("%s: layer %s has role %v", file, l.Name, l.Role)
		}
		specs, ok := cache[key]
		if !ok {
			if specs, err = key.specs(); err != nil {
				return nil, fmt.Errorf("%s: layer %s: %v", file, l.Name, err)
			}
			cache[key] = specs
		}
		if specs, err = layout.Adapt(pp.Family, l.Name, specs); err != nil {
			return nil, fmt.Errorf("%s: %v", file, err)
		}
		pl.specs = specs
		for _, s := range specs {
			pl.OutBytes += tensorBytes(s.DType, s.Shape)
		}
		p.Layers = append(p.Layers, pl)
		p.OutBytes += pl.OutBytes
		p.QuantBytes += pl.OutBytes
		p.QuantParams += int64(l.N) * int64(l.K)
	}
	if opt.Precision == quant.NVFP4 && len(p.Layers) > 0 && !p.HasW4A4() {
		return nil, fmt.Errorf("%s: family %s has no W4A4 layer (its %d layers are weight-only, %s): --precision nvfp4 does not apply",
			file, pp.Family, len(p.Layers), p.Layers[0].Precision)
	}
	for _, k := range pp.Kept {
		info, ok := r.Info(k.Tensor)
		if !ok {
			return nil, fmt.Errorf("%s: no tensor %q (kept as %s)", file, k.Tensor, k.Name)
		}
		pk := PlannedKept{Kept: k, DType: info.DType, SrcDType: info.DType}
		for _, t := range keptTensors(&k) {
			if s := dequantized(r, t); s != "" {
				pk.SrcForm = s
			}
		}
		// FP8 inputs are always widened (exactly) to the model's 16-bit
		// type, and dequantized ones (GGUF blocks, scaled FP8, read as
		// F32) rounded to it: the output's non-4-bit tensors are 16-bit.
		fp8 := info.DType == safetensors.F8E4M3 || info.DType == safetensors.F8E5M2
		if isFloat(info.DType) && (fp8 || pk.SrcForm != "" || opt.DType != 0 || (layout != nil && layout.DType != engine.DTypeCast)) {
			pk.DType = safetensors.DType(p.DType.String())
		}
		if k.Transform == "" {
			pk.Shape = info.Shape
		}
		pk.Bytes = k.Elems() * int64(pk.DType.Size())
		p.Kept = append(p.Kept, pk)
		p.OutBytes += pk.Bytes
	}
	return p, nil
}

// specKey identifies the packed tensor shapes of a layer.
type specKey struct {
	n, k, r  int
	prec     quant.Precision
	dt       quant.Float16
	chunks   int
	w4a16    bool
	unsigned bool
	w4linear bool // W4A16G128: nunchaku's T5 W4Linear
	bias     bool // W4Linear with a bias tensor
}

// hasBias reports whether a preset layer has a source bias.
func hasBias(l *preset.Layer) bool {
	return slices.ContainsFunc(l.Sources, func(s preset.Source) bool { return s.Bias != "" })
}

// specs packs an all-zero layer of the key's shape and returns its tensors'
// names, dtypes and shapes (data dropped), so that the layout stays the
// packer's business.
func (key specKey) specs() ([]nunchaku.Tensor, error) {
	var ts []nunchaku.Tensor
	var err error
	if key.w4linear {
		g := key.k / nunchaku.W4LinearGroup
		ts, err = nunchaku.PackW4Linear(&quant.WeightOnly{N: key.n, K: key.k, Group: nunchaku.W4LinearGroup, Codes: make([]uint8, key.n*key.k),
			Scales: make([]float32, key.n*g), Zeros: make([]float32, key.n*g), Bias: make([]float32, key.n), DType: key.dt}, key.bias)
	} else if key.w4a16 {
		g := (key.k + 63) / 64
		ts, err = nunchaku.PackW4A16(&quant.WeightOnly{N: key.n, K: key.k, Codes: make([]uint8, key.n*key.k),
			Scales: make([]float32, key.n*g), Zeros: make([]float32, key.n*g), Bias: make([]float32, key.n), DType: key.dt}, key.chunks)
	} else {
		l := &quant.Layer{Precision: key.prec, N: key.n, K: key.k, R: key.r, TensorScale: 1, DType: key.dt,
			Unsigned: key.unsigned}
		l.Codes = make([]int8, key.n*key.k)
		l.Scales = make([]float32, key.n*l.Groups())
		l.Smooth = make([]float32, key.k)
		for i := range l.Smooth {
			l.Smooth[i] = 1
		}
		l.Down = make([]float32, key.r*key.k)
		l.Up = make([]float32, key.n*key.r)
		l.Bias = make([]float32, key.n)
		ts, err = nunchaku.PackW4A4(l)
	}
	if err != nil {
		return nil, err
	}
	for i := range ts {
		ts[i].Data = nil
	}
	return ts, nil
}

// tensorBytes is the byte size of a tensor of the given dtype and shape.
func tensorBytes(dtype string, shape []int64) int64 {
	n := int64(safetensors.DType(dtype).Size())
	for _, d := range shape {
		n *= d
	}
	return n
}

// Conversions counts the kept tensors the plan writes in another dtype
// than the checkpoint's, by "FROM → TO".
func (p *Plan) Conversions() map[string]int {
	out := map[string]int{}
	for _, k := range p.Kept {
		if k.DType != k.SrcDType || k.SrcForm != "" {
			out[cmp.Or(k.SrcForm, string(k.SrcDType))+" → "+string(k.DType)]++
		}
	}
	return out
}

// OutputFile returns the header and metadata the output of p will have,
// as engine.Check reads them (smoothing exponents and layer hashes are
// placeholders of the final length), so that a dry run can say where the
// file will load before anything is quantized.
func (p *Plan) OutputFile(tool string) (*engine.File, error) {
	metas := make([]nunchaku.LayerMeta, len(p.Layers))
	for i := range p.Layers {
		metas[i] = p.layerMeta(&p.Layers[i], 0, 0)
	}
	md, err := p.metadata(tool, metas, map[string]CalibRef{})
	if err != nil {
		return nil, err
	}
	return specFile(p.outSpecs(), md), nil
}

// Verdicts checks the planned output against the target engines (every
// engine that runs the family when the plan has no target).
func (p *Plan) Verdicts(tool string) ([]engine.Verdict, error) {
	f, err := p.OutputFile(tool)
	if err != nil {
		return nil, err
	}
	return engine.Verdicts(p.contracts, f), nil
}

package tinydit

import (
	"fmt"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// Whole-model quantized variants: a map from logical layer name to its
// quantized implementation, for Run.Layers. The SVDQuant variants are read
// back from the checkpoints the real quantize job wrote (what nunchaku
// would load); the baselines are built in memory from the same plan,
// weights and calibration statistics.

// Emulation selects how a quantized layer is evaluated.
type Emulation uint8

const (
	// Fast evaluates W4A4 layers with quant.Layer.ForwardFast (the kernel's
	// activation quantization, float32 products) and W4A16 layers with
	// quant.WeightOnly.Forward (float32).
	Fast Emulation = iota
	// Exact evaluates W4A4 layers with quant.Layer.Forward (the kernel's
	// arithmetic, 16-bit accumulator included) and W4A16 layers with
	// quant.WeightOnly.ForwardKernel: slower, several seconds per variant.
	Exact
)

type w4a4Fast struct{ l *quant.Layer }

func (f w4a4Fast) Forward(y, x []float32, m int) { f.l.ForwardFast(y, x, m) }

type w4a16Kernel struct{ w *quant.WeightOnly }

func (f w4a16Kernel) Forward(y, x []float32, m int) { f.w.ForwardKernel(y, x, m) }

func wrapW4A4(l *quant.Layer, e Emulation) Linear {
	if e == Exact {
		return l
	}
	return w4a4Fast{l}
}

func wrapW4A16(w *quant.WeightOnly, e Emulation) Linear {
	if e == Exact {
		return w4a16Kernel{w}
	}
	return w
}

// Variant is a whole-model quantized form of the model: the layers to
// replace, with their size.
type Variant struct {
	Layers map[string]Linear // for Run.Layers
	// LayerError is the mean relative output error of the W4A4 layers on
	// their calibration rows (quant.Result.RelError's measure).
	LayerError float64
	// Bytes is the packed size (formats/nunchaku) of every quantized layer,
	// Params their Σ N·K: Bits() = 8·Bytes/Params.
	Bytes, Params int64
}

// Bits returns the packed bits per weight of the quantized layers (branch,
// scales, smoothing vector and bias included).
func (v *Variant) Bits() float64 { return 8 * float64(v.Bytes) / float64(max(v.Params, 1)) }

// addPacked adds the packed size of one layer (chunks: the W4A16 output
// chunk count, 0 for none).
func (v *Variant) addPacked(l *quant.Layer, w *quant.WeightOnly, chunks int) error {
	var ts []nunchaku.Tensor
	var err error
	if l != nil {
		ts, err = nunchaku.PackW4A4(l)
		v.Params += int64(l.N) * int64(l.K)
	} else {
		ts, err = nunchaku.PackW4A16(w, max(chunks, 1))
		v.Params += int64(w.N) * int64(w.K)
	}
	if err != nil {
		return err
	}
	for _, t := range ts {
		v.Bytes += int64(len(t.Data))
	}
	return nil
}

// LoadQuantized reads every quantized layer of an SVDQuant checkpoint
// written by `svdq quantize` (its svdq metadata entry lists them) through
// formats/nunchaku's unpackers, keyed by layer name.
func LoadQuantized(path string, e Emulation) (*Variant, error) {
	r, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	s, ok := r.Metadata()[nunchaku.MetaSVDQ]
	if !ok {
		return nil, fmt.Errorf("%s: no %q metadata entry", path, nunchaku.MetaSVDQ)
	}
	meta, err := nunchaku.ParseMeta(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	v := &Variant{Layers: make(map[string]Linear, len(meta.Layers))}
	for i := range meta.Layers {
		lm := &meta.Layers[i]
		var readErr error
		get := func(suffix string) (string, []int64, []byte, bool) {
			info, ok := r.Info(lm.Name + "." + suffix)
			if !ok {
				return "", nil, nil, false
			}
			b, err := r.Bytes(info.Name)
			if err != nil {
				readErr = err
				return "", nil, nil, false
			}
			return string(info.DType), info.Shape, b, true
		}
		v.Params += int64(lm.N) * int64(lm.K)
		for _, suffix := range layerSuffixes {
			if info, ok := r.Info(lm.Name + "." + suffix); ok {
				v.Bytes += info.End - info.Begin
			}
		}
		switch lm.Kind {
		case nunchaku.KindW4A4:
			l, err := nunchaku.UnpackW4A4(get, lm.W4A4Options(path))
			if readErr != nil {
				return nil, readErr
			}
			if err != nil {
				return nil, err
			}
			v.Layers[lm.Name] = wrapW4A4(l, e)
		case nunchaku.KindW4A16:
			w, err := nunchaku.UnpackW4A16(get, lm.W4A16Options(path))
			if readErr != nil {
				return nil, readErr
			}
			if err != nil {
				return nil, err
			}
			v.Layers[lm.Name] = wrapW4A16(w, e)
		default:
			return nil, fmt.Errorf("%s: layer %s: unknown kind %q", path, lm.Name, lm.Kind)
		}
	}
	return v, nil
}

// layerSuffixes are the tensors a packed layer may have (nunchaku-format.md).
var layerSuffixes = []string{"qweight", "wscales", "wtscale", "wcscales", "wzeros", "bias", "smooth", "smooth_orig", "lora_down", "lora_up"}

// Baseline names a whole-model baseline built in memory.
type Baseline uint8

const (
	// NaiveW4A4: round-to-nearest INT4 weights and activations, no
	// smoothing (λ = 1), no low-rank branch.
	NaiveW4A4 Baseline = iota + 1
	// SmoothQuantW4A4: the smoothing search of the pipeline (same
	// candidates, same objective) with no low-rank branch.
	SmoothQuantW4A4
	// W4A16: every W4A4 layer of the plan as a 4-bit weight-only layer
	// (quant.QuantizeWeightOnly), activations in 16 bits.
	W4A16
)

// unit is one group of W4A4 layers quantized together (one smoothing
// vector): a smoothing group, or a single layer.
type unit struct {
	layers  []preset.Layer
	shifted bool
}

// planUnits groups the W4A4 layers of a plan by smoothing group, in plan
// order.
func planUnits(p *preset.Plan) []unit {
	var out []unit
	idx := map[string]int{}
	for _, l := range p.Layers {
		if l.Role != preset.W4A4 {
			continue
		}
		if l.SmoothGroup != "" {
			if i, ok := idx[l.SmoothGroup]; ok {
				out[i].layers = append(out[i].layers, l)
				continue
			}
			idx[l.SmoothGroup] = len(out)
		}
		out = append(out, unit{layers: []preset.Layer{l}, shifted: l.Shifted})
	}
	return out
}

// layerCalib returns the quant.Calib of a plan layer from the collected
// statistics: its first calibration key present, restricted to its columns.
func layerCalib(stats map[string]*calib.Stats, l preset.Layer) (quant.Calib, error) {
	for _, key := range l.Calib {
		st, ok := stats[key]
		if !ok {
			continue
		}
		if l.CalibCols.Len() != st.K {
			st = st.Cols(l.CalibCols.Lo, l.CalibCols.Hi)
		}
		if st.K != l.K {
			return quant.Calib{}, fmt.Errorf("layer %s: calibration %s has %d columns, want %d", l.Name, key, st.K, l.K)
		}
		return quant.Calib{X: st.Samples, S: st.S, AbsMax: st.AbsMax}, nil
	}
	return quant.Calib{}, fmt.Errorf("layer %s: no calibration statistics for any of %v", l.Name, l.Calib)
}

// BuildBaseline quantizes every layer of plan p (the model's flux plan) as
// baseline b: W4A4 layers as described by b, W4A16 (adaLN) layers with
// quant.QuantizeWeightOnly as in every SVDQuant checkpoint. opt supplies
// the precision (naive and SmoothQuant), search mode, dtype, seed and
// calibration rows. LayerError is measured on the calibration rows as
// quant.Result.RelError (ForwardFast), for W4A16 with float32 activations.
func (m *Model) BuildBaseline(p *preset.Plan, stats map[string]*calib.Stats, b Baseline, opt quant.Options, e Emulation) (*Variant, error) {
	v := &Variant{Layers: map[string]Linear{}}
	out := v.Layers
	wo := map[string]*quant.WeightOnly{}
	if opt.DType == 0 {
		opt.DType = quant.BF16
	}
	for _, l := range p.Layers {
		if l.Role != preset.W4A16 && !(b == W4A16 && l.Role == preset.W4A4) {
			continue
		}
		d := m.layers[l.Name]
		if d == nil {
			return nil, fmt.Errorf("tinydit: plan layer %s is not a layer of the model", l.Name)
		}
		wo[l.Name] = quant.QuantizeWeightOnly(d.W, d.N, d.K, d.B, opt.DType)
		out[l.Name] = wrapW4A16(wo[l.Name], e)
		if err := v.addPacked(nil, wo[l.Name], l.Chunks); err != nil {
			return nil, fmt.Errorf("layer %s: %v", l.Name, err)
		}
	}
	var sum float64
	var count int
	for _, u := range planUnits(p) {
		ins := make([]quant.Input, len(u.layers))
		for i, l := range u.layers {
			d := m.layers[l.Name]
			if d == nil {
				return nil, fmt.Errorf("tinydit: plan layer %s is not a layer of the model", l.Name)
			}
			ins[i] = quant.Input{Name: l.Name, W: d.W, N: d.N, K: d.K, Bias: d.B}
		}
		c, err := layerCalib(stats, u.layers[0])
		if err != nil {
			return nil, err
		}
		switch b {
		case NaiveW4A4:
			for _, in := range ins {
				l := naiveLayer(in, u.shifted, opt.Precision, opt.DType)
				e2, err := relError(w4a4Fast{l}, in, c, opt.MaxRows) // as quant.Result.RelError: ForwardFast
				if err != nil {
					return nil, err
				}
				out[in.Name] = wrapW4A4(l, e)
				if err := v.addPacked(l, nil, 0); err != nil {
					return nil, fmt.Errorf("layer %s: %v", in.Name, err)
				}
				sum += e2
				count++
			}
		case SmoothQuantW4A4:
			o := opt
			o.Rank, o.Iters, o.GPTQ = -1, -1, false
			res, err := quant.QuantizeGroup(ins, u.shifted, c, o)
			if err != nil {
				return nil, err
			}
			for i, r := range res {
				out[ins[i].Name] = wrapW4A4(r.Layer, e)
				if err := v.addPacked(r.Layer, nil, 0); err != nil {
					return nil, fmt.Errorf("layer %s: %v", ins[i].Name, err)
				}
				sum += r.RelError
				count++
			}
		case W4A16:
			for _, in := range ins {
				e2, err := relError(wo[in.Name], in, c, opt.MaxRows) // float32 activations, as quant.Baselines
				if err != nil {
					return nil, err
				}
				sum += e2
				count++
			}
		default:
			panic(fmt.Sprintf("tinydit: bad baseline %d", b))
		}
	}
	v.LayerError = sum / float64(max(count, 1))
	return v, nil
}

// naiveLayer quantizes in round-to-nearest with λ = 1 and no branch: the
// weights to INT4 (group 64, absmax/7) or NVFP4, activations as the kernel
// quantizes them at run time. A shifted INT4 input keeps the kernel's
// unsigned shifted path (the kernel applies it to every MLP second linear),
// with the bias correction −deq(W)·0.171875.
func naiveLayer(in quant.Input, shifted bool, prec quant.Precision, dt quant.Float16) *quant.Layer {
	if prec == 0 {
		prec = quant.INT4
	}
	n, k := in.N, in.K
	l := &quant.Layer{Precision: prec, N: n, K: k, TensorScale: 1, DType: dt,
		Unsigned: shifted && prec == quant.INT4, Codes: make([]int8, n*k), Smooth: make([]float32, k),
		Bias: make([]float32, n)}
	l.Scales = make([]float32, n*l.Groups())
	for i := range l.Smooth {
		l.Smooth[i] = 1
	}
	if prec == quant.NVFP4 {
		l.TensorScale = quant.NVFP4TensorScale(in.W)
		quant.QuantizeNVFP4(l.Codes, l.Scales, in.W, n, k, l.TensorScale)
	} else {
		quant.QuantizeInt4(l.Codes, l.Scales, in.W, n, k, dt.Round)
	}
	if in.Bias != nil {
		copy(l.Bias, in.Bias)
	}
	if l.Unsigned {
		deq := l.DequantizeWeight()
		for i := range n {
			var s float64
			for _, w := range deq[i*k : (i+1)*k] {
				s += float64(w)
			}
			l.Bias[i] = float32(float64(l.Bias[i]) - s*quant.ShiftINT4)
		}
	}
	for i, v := range l.Bias {
		l.Bias[i] = dt.Round(v)
	}
	return l
}

// relError returns ‖Y_q − (X·Wᵀ + b)‖_F / ‖X·Wᵀ‖_F of layer f on at most
// maxRows (0: quant.DefaultMaxRows) evenly spaced calibration rows.
func relError(f Linear, in quant.Input, c quant.Calib, maxRows int) (float64, error) {
	if maxRows <= 0 {
		maxRows = quant.DefaultMaxRows
	}
	s := min(c.S, maxRows)
	x := make([]float32, s*in.K)
	for i := range s {
		r := i * c.S / s
		copy(x[i*in.K:(i+1)*in.K], c.X[r*in.K:(r+1)*in.K])
	}
	yref := make([]float64, s*in.N)
	quant.RefOutput(yref, x, s, in.K, in.W, in.N, nil)
	yq := make([]float32, s*in.N)
	f.Forward(yq, x, s)
	if in.Bias != nil {
		for i := range s {
			for j, b := range in.Bias {
				yq[i*in.N+j] -= b
			}
		}
	}
	e := quant.RelError(yq, yref)
	if e != e {
		return 0, fmt.Errorf("layer %s: quantized output is not finite", in.Name)
	}
	return e, nil
}

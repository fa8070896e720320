package lora

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/formats/safetensors"
)

// DoRA (weight-decomposed LoRA) rescales the updated weight to a learned
// magnitude. Read from
//
//	huggingface/peft@5d602fd:src/peft/tuners/lora/dora.py  magnitude [N] (lora_magnitude_vector),
//	                                                        ‖W + s·B·A‖ per output row (dim=1)
//	KohakuBlueleaf/LyCORIS@f49d30d:lycoris/modules/loha.py  dora_scale [N, 1] (wd_on_out) or [1, K]:
//	                                                        apply_weight_decompose, ‖W + ΔW‖ along that axis
//	comfyanonymous/ComfyUI@9c0cf36:comfy/weight_adapter/base.py  weight_decompose: the strength applied
//	                                                        as W + strength·(W_dora − W)
//
// so with Wc = W + (α/r)·ΔW_module and m the magnitude,
//
//	W_dora = Wc ⊙ m / ‖Wc‖   (per output row, or per input column)
//	ΔW     = strength · (W_dora − W)
//
// The norm is PEFT's and LyCORIS's (of Wc, plus float32's ε as LyCORIS
// adds). ComfyUI's output-axis branch divides by the norm of W instead of
// Wc, which differs from how these files were trained; svdq follows the
// trainers.

// doraEps is LyCORIS's torch.finfo(float32).eps added to the norms.
const doraEps = 1.1920928955078125e-07

// parseDora checks a module's DoRA magnitude tensor (name "" for none).
func (m *Module) parseDora(r safetensors.Reader, path, name string) error {
	if name == "" {
		return nil
	}
	info, _ := r.Info(name)
	if !floatDType(info.DType) {
		return fmt.Errorf("%s: tensor %q: dtype %s is not a float type", path, name, info.DType)
	}
	s := info.Shape
	switch {
	case len(s) == 1 && int(s[0]) == m.N, len(s) == 2 && int(s[0]) == m.N && s[1] == 1:
		m.DoraOut = true
	case len(s) == 2 && s[0] == 1 && int(s[1]) == m.K:
		m.DoraOut = false
	default:
		return fmt.Errorf("%s: tensor %q: DoRA magnitude %v fits neither the output [%d] / [%d 1] nor the input axis [1 %d] of module %s",
			path, name, s, m.N, m.N, m.K, m.Key)
	}
	m.Dora = name
	return nil
}

// DenseDoRA returns a DoRA module's ΔW before the strength, W_dora − W
// (see above), given the module's base weight w [N, K] (float64). Errors
// come from reading the tensors and name a zero-norm row or column.
func (m *Module) DenseDoRA(w []float64) ([]float64, error) {
	if m.Dora == "" || len(w) != m.N*m.K {
		panic(fmt.Sprintf("lora: Module.DenseDoRA of %s: dora %q, %d weights for [%d %d]", m.Key, m.Dora, len(w), m.N, m.K))
	}
	var own []float64
	if m.Type == TypeLoRA {
		a, b, err := m.Factors()
		if err != nil {
			return nil, err
		}
		own = matmul(widen64(b), widen64(a), m.N, m.Rank, m.K)
	} else {
		d, err := m.denseProduct()
		if err != nil {
			return nil, err
		}
		own = d
	}
	size := m.K
	if m.DoraOut {
		size = m.N
	}
	mag, err := m.f.decode(m.Dora, size, size)
	if err != nil {
		return nil, err
	}
	s := m.ownScale()
	wc := make([]float64, len(w))
	for i := range wc {
		wc[i] = w[i] + s*own[i]
	}
	norm := make([]float64, size)
	for i := 0; i < m.N; i++ {
		for j := 0; j < m.K; j++ {
			v := wc[i*m.K+j]
			if m.DoraOut {
				norm[i] += v * v
			} else {
				norm[j] += v * v
			}
		}
	}
	for i := range norm {
		norm[i] = math.Sqrt(norm[i]) + doraEps
	}
	d := make([]float64, len(w))
	for i := 0; i < m.N; i++ {
		for j := 0; j < m.K; j++ {
			at := j
			if m.DoraOut {
				at = i
			}
			d[i*m.K+j] = wc[i*m.K+j]*float64(mag[at])/norm[at] - w[i*m.K+j]
		}
	}
	return d, nil
}

// WeightSource returns the base weight [N, K] (float64, row-major) of a
// layer of the index, for DoRA.
type WeightSource func(layer string) ([]float64, error)

// moduleWeight assembles a module's base weight [N_m, K_m] from its
// targets' layers; every element must be covered.
func moduleWeight(m *Module, all []Target, src WeightSource, ix map[string]*LayerInfo) ([]float64, error) {
	w := make([]float64, m.N*m.K)
	covered := 0
	for _, t := range all {
		li := ix[t.Layer]
		lw, err := src(t.Layer)
		if err != nil {
			return nil, err
		}
		for i := 0; i < t.Rows.Len(); i++ {
			copy(w[(t.SrcRows.Lo+i)*m.K+t.Cols.Lo:(t.SrcRows.Lo+i)*m.K+t.Cols.Hi], lw[(t.Rows.Lo+i)*li.K:(t.Rows.Lo+i+1)*li.K])
			covered += t.Cols.Len()
		}
	}
	if covered != m.N*m.K {
		return nil, fmt.Errorf("%s: module %s (DoRA): the checkpoint holds %d of its %d weights, and DoRA's norm needs all of them", m.f.Path, m.Key, covered, m.N*m.K)
	}
	return w, nil
}

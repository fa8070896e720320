package model

import (
	"fmt"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
)

// loraCheck is what `svdq check --lora` adds to a check: per quantized
// layer, the LoRAs' ΔW to merge into the reference weight in full
// precision, and the fused file's record (for W4A16 branch ranks).
type loraCheck struct {
	delta map[string]*lora.Branch // layer → Σ of the LoRAs' blocks, float32 unrounded
	// bias: quantized layer → Σ of the LoRAs' bias deltas (BFL control
	// LoRAs' lora_B.bias, logical row order), as fuse-lora adds them.
	bias map[string][]float64
	prov *lora.Provenance
}

// newLoRACheck prepares the LoRA part of a check of file f. A file with
// fused LoRAs always gets its W4A16 branches added to the emulated output
// (they are part of what the file computes). With specs, the given LoRAs
// must be exactly those the record lists (same SHA-256 and strength), and
// their ΔW goes into the reference, so the file is measured against what it
// claims to approximate. Modules that match no layer are ignored here
// (fuse-lora refused or reported them). It returns nil for a file without
// LoRAs checked without specs.
//
// weights gives a quantized layer's reference weight, which a DoRA
// module's ΔW depends on.
func newLoRACheck(f *qfile, specs []LoRASpec, weights lora.WeightSource) (*loraCheck, error) {
	s, ok := f.r.Metadata()[lora.MetaKey]
	if !ok {
		if len(specs) == 0 {
			return nil, nil
		}
		return nil, fmt.Errorf("%s: %v", f.path, lora.ErrNotFused)
	}
	prov, err := lora.ParseProvenance(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", f.path, err)
	}
	lc := &loraCheck{delta: map[string]*lora.Branch{}, bias: map[string][]float64{}, prov: prov}
	if len(specs) == 0 {
		return lc, nil
	}
	if f.meta == nil {
		return nil, fmt.Errorf("%s: no %s metadata", f.path, nunchaku.MetaSVDQ)
	}
	infos := make([]safetensors.Info, 0, len(f.r.Names()))
	for _, n := range f.r.Names() {
		i, _ := f.r.Info(n)
		infos = append(infos, i)
	}
	ix, err := lora.NewIndex(f.meta, infos)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", f.path, err)
	}
	want := map[string]int{}
	for _, a := range prov.LoRAs {
		want[fmt.Sprintf("%s strength %g", a.SHA256, a.Strength)]++
	}
	for _, spec := range specs {
		lf, err := spec.open()
		if err != nil {
			return nil, err
		}
		key := fmt.Sprintf("%s strength %g", lf.SHA256, spec.Strength)
		if want[key] == 0 {
			lf.Close()
			var have []string
			for _, a := range prov.LoRAs {
				have = append(have, fmt.Sprintf("%s (%s, strength %g)", a.Name, a.File, a.Strength))
			}
			return nil, fmt.Errorf("%s at strength %g is not fused in %s (fused: %s)", spec.Path, spec.Strength, f.path, strings.Join(have, "; "))
		}
		want[key]--
		err = lc.add(lf, ix, spec.Strength, weights)
		lf.Close()
		if err != nil {
			return nil, err
		}
	}
	var missing []string
	for k, n := range want {
		if n > 0 {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return nil, fmt.Errorf("%s: fused LoRAs not given to --lora (sha256, strength): %s", f.path, strings.Join(missing, "; "))
	}
	return lc, nil
}

// loraWeight is the reference weight of a quantized layer, for DoRA.
func (in *checkInputs) loraWeight(layer string) ([]float64, error) {
	lm, ok := in.f.meta.Layer(layer)
	if !ok {
		return nil, fmt.Errorf("%s: DoRA module on %s, which is not a quantized layer: check measures quantized layers only", in.model, layer)
	}
	w, _, _, err := in.referenceWeight(lm)
	if err != nil {
		return nil, err
	}
	out := make([]float64, len(w))
	for i, v := range w {
		out[i] = float64(v)
	}
	return out, nil
}

// add accumulates one LoRA's ΔW on the quantized layers: plain LoRA blocks
// as factors, a dense ΔW (LoHa, LoKr) exactly (lora.ExactBranch), so the
// check measures a truncated branch against the full ΔW.
func (lc *loraCheck) add(lf *lora.File, ix *lora.Index, strength float64, weights lora.WeightSource) error {
	if in := ix.InputLayer(); in != "" { // a control LoRA's widened input: a kept tensor, not measured
		if w, _ := ix.Widenable(in); ix.ModuleWidth(lf, in) == w.Wide && ix.Layers[in].K < w.Wide {
			if err := ix.SetWidth(in, w.Wide); err != nil {
				return err
			}
		}
	}
	mp, err := lora.Map(lf, ix, strength)
	if err != nil {
		return err
	}
	vm, err := lora.MapVectors(lf, ix, strength)
	if err != nil {
		return err
	}
	for _, o := range vm.Ops { // norm scales change no quantized layer's weight: not measured here
		if o.Info.Layer == "" || o.Replace {
			continue
		}
		b := lc.bias[o.Info.Layer]
		if b == nil {
			b = make([]float64, len(o.Values))
			lc.bias[o.Info.Layer] = b
		}
		for i, v := range o.Values {
			b[i] += float64(v)
		}
	}
	for i := range mp.Layers {
		lp := &mp.Layers[i]
		if lp.Info.Kind == lora.Kept {
			continue
		}
		b, err := lp.Build()
		if err != nil {
			return err
		}
		dense, err := lp.Dense(weights) // LoHa, LoKr, DoRA: their full ΔW, whatever rank the file kept
		if err != nil {
			return err
		}
		if dense != nil {
			b.Append(lora.ExactBranch(dense, lp.Info.N, lp.Info.K))
		}
		if d := lc.delta[lp.Info.Name]; d != nil {
			d.Append(b)
		} else {
			lc.delta[lp.Info.Name] = b
		}
	}
	return nil
}

// merge adds the LoRAs' ΔW of layer into the reference weight w [N, K]
// (float64 sums, one rounding to float32).
func (lc *loraCheck) merge(layer string, w []float32) {
	if lc == nil || lc.delta[layer] == nil {
		return
	}
	d := lc.delta[layer].Delta()
	for i, v := range d {
		w[i] = float32(float64(w[i]) + v)
	}
}

// mergeBias returns the reference bias [n] of layer with the LoRAs' bias
// deltas added (float64 sums, one rounding to float32); a nil bias is
// zeros. It returns bias itself when no LoRA changes it.
func (lc *loraCheck) mergeBias(layer string, bias []float32, n int) []float32 {
	if lc == nil || lc.bias[layer] == nil {
		return bias
	}
	out := make([]float32, n)
	for i, d := range lc.bias[layer] {
		var b float64
		if bias != nil {
			b = float64(bias[i])
		}
		out[i] = float32(b + d)
	}
	return out
}

// addW4A16 adds the fused W4A16 layer's branch output (x·Downᵀ)·Upᵀ to
// y [m, N] for the [m, K] input x (float64 sums): WeightOnly.Forward does
// not see the branch tensors.
func (lc *loraCheck) addW4A16(f *qfile, lm *nunchaku.LayerMeta, y, x []float32, m int) error {
	if lc == nil {
		return nil
	}
	r := 0
	if _, ok := lc.prov.Layers[lm.Name]; ok {
		r = lc.prov.Rank(lm.Name)
	}
	if r == 0 {
		return nil
	}
	get, errp := f.getter(lm.Name)
	b, err := lora.UnpackW4A16Branch(get, f.path+": "+lm.Name, lm.N, lm.K, max(lm.Chunks, 1), r)
	if *errp != nil {
		return *errp
	}
	if err != nil {
		return err
	}
	t := make([]float64, r)
	for i := 0; i < m; i++ {
		row := x[i*lm.K : (i+1)*lm.K]
		for q := 0; q < r; q++ {
			var s float64
			for k, v := range b.Down[q*lm.K : (q+1)*lm.K] {
				s += float64(v) * float64(row[k])
			}
			t[q] = s
		}
		for n := 0; n < lm.N; n++ {
			var s float64
			for q, v := range b.Up[n*r : (n+1)*r] {
				s += float64(v) * t[q]
			}
			y[i*lm.N+n] = float32(float64(y[i*lm.N+n]) + s)
		}
	}
	return nil
}

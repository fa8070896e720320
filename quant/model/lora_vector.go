package model

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// A BFL control LoRA's bias deltas and norm scales change 1-D tensors
// (formats/lora vector.go): a kept norm weight or bias, or a quantized
// layer's stored bias (whose bytes the layer's svdq hash covers). Each
// such tensor is a KindVector entry of the record, each LoRA one op on it
// ([i, i+1)); the output value is always recomputed from the base bytes,
// which the sidecar keeps with the ops (lora.ReservedBase,
// lora.ReservedVector), so that removing the last LoRA restores the
// base bytes exactly and fusing at once or one after another agree.

// vecOut is one 1-D tensor the output rewrites.
type vecOut struct {
	info *lora.VectorInfo
	spec safetensors.Spec // as in the input
	out  []byte           // the output's bytes
	// base, ops: the sidecar's entries (ops nil when no LoRA is left).
	base []byte
	ops  []float32 // [2·n, Stored]: mask and value rows per op
	n    int
}

// isVector reports whether a record entry is a 1-D tensor.
func (fu *fusion) isVector(name string) bool {
	if fu.base[name].Kind == lora.KindVector || len(fu.vadds[name]) > 0 {
		return true
	}
	return fu.prov != nil && fu.prov.Layers[name].Kind == lora.KindVector
}

// addVectors plans one LoRA's ops on 1-D tensors (after the --kept and
// --w4a16 skip policies) and records their ranges. It returns the tensors
// skipped by a policy.
func (fu *fusion) addVectors(path string, vm *lora.VectorMapping, applied *lora.Applied) ([]string, error) {
	var skipped []string
	for i := range vm.Ops {
		o := &vm.Ops[i]
		name := o.Info.Name
		if (o.Info.Kind == lora.Kept && fu.opt.Kept == KeptSkip) || (o.Info.Kind == lora.W4A16 && fu.opt.W4A16 == W4A16Skip) {
			skipped = append(skipped, name)
			continue
		}
		if j := quant.FirstNonFinite(o.Values); j >= 0 {
			return nil, fmt.Errorf("%s: tensor %s: the scaled bias delta is %v at [%d] (from %v)", path, name, o.Values[j], j, o.From)
		}
		if !o.Replace && allZero(o.Values) {
			continue
		}
		if _, ok := fu.prov.Layers[name]; !ok {
			st, known := fu.base[name]
			if !known {
				st = lora.Layer{Kind: lora.KindVector}
			}
			fu.prov.Layers[name] = st
		}
		cur := fu.prov.Rank(name)
		applied.Ranges[name] = [2]int{cur, cur + 1}
		fu.vadds[name] = append(fu.vadds[name], o)
	}
	return skipped, nil
}

// planVectors computes every 1-D tensor the output rewrites: those the
// input's record lists and those new LoRAs change, each the base bytes
// with the remaining ops (input's, minus the removed LoRAs', plus the
// new ones) applied in LoRA order.
func (fu *fusion) planVectors() ([]*vecOut, error) {
	set := map[string]bool{}
	for n := range fu.vadds {
		set[n] = true
	}
	for n, st := range fu.base {
		if st.Kind == lora.KindVector {
			set[n] = true
		}
	}
	var out []*vecOut
	for _, name := range slices.Sorted(maps.Keys(set)) {
		v, ok := fu.ix.Vector(name)
		in, ok2 := fu.f.r.Info(name)
		if !ok || !ok2 {
			return nil, fmt.Errorf("%s: the %s record names tensor %s, which the file does not have as a vector", fu.opt.Model, lora.MetaKey, name)
		}
		vo := &vecOut{info: v, spec: in.Spec()}
		var masks, values [][]float32
		inOps := 0
		if fu.base[name].Kind == lora.KindVector {
			inOps = fu.old[name]
		}
		if inOps > 0 {
			bi, ok := fu.sideInfo(lora.ReservedBase(name))
			if !ok || bi.DType != in.DType || len(bi.Shape) != 1 || bi.Shape[0] != in.Shape[0] {
				return nil, fmt.Errorf("%s: tensor %q: want %s %v, the base of %s (the %s record lists LoRAs that change it)", fu.sideName(), lora.ReservedBase(name), in.DType, in.Shape, name, lora.MetaKey)
			}
			var err error
			if vo.base, err = fu.side.Bytes(lora.ReservedBase(name)); err != nil {
				return nil, err
			}
			rows, err := fu.readF32(lora.ReservedVector(name), 2*inOps, v.Stored)
			if err != nil {
				return nil, err
			}
			dropped := map[int]bool{}
			for _, rg := range fu.drops[name] {
				if rg[0] < 0 || rg[1] > inOps || rg[0] >= rg[1] {
					return nil, fmt.Errorf("%s: tensor %s: recorded range %v outside its %d ops", fu.opt.Model, name, rg, inOps)
				}
				for i := rg[0]; i < rg[1]; i++ {
					dropped[i] = true
				}
			}
			for i := 0; i < inOps; i++ {
				if !dropped[i] {
					masks = append(masks, rows[2*i*v.Stored:(2*i+1)*v.Stored])
					values = append(values, rows[(2*i+1)*v.Stored:(2*i+2)*v.Stored])
				}
			}
		} else {
			var err error
			if vo.base, err = fu.f.r.Bytes(name); err != nil {
				return nil, err
			}
		}
		for _, o := range fu.vadds[name] {
			m, x := o.Stored()
			masks, values = append(masks, m), append(values, x)
		}
		want := 0
		if _, ok := fu.prov.Layers[name]; ok {
			want = fu.prov.Rank(name)
		}
		if len(masks) != want {
			return nil, fmt.Errorf("lora: tensor %s: %d ops, the record says %d", name, len(masks), want)
		}
		vo.n = len(masks)
		if vo.n == 0 {
			vo.out = vo.base
			out = append(out, vo)
			continue
		}
		base := make([]float32, v.Stored)
		if err := quant.Decode(base, string(in.DType), vo.base); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %v", fu.sideName(), name, err)
		}
		b64 := make([]float64, len(base))
		for i, x := range base {
			b64[i] = float64(x)
		}
		vo.out = v.Encode(lora.ApplyVector(b64, masks, values))
		back := make([]float32, v.Stored)
		if err := quant.Decode(back, string(in.DType), vo.out); err != nil {
			return nil, err
		}
		if i := quant.FirstNonFinite(back); i >= 0 {
			return nil, fmt.Errorf("%s: tensor %q: the LoRAs' bias deltas give %v at [%d] in %s", fu.opt.Out, name, back[i], i, in.DType)
		}
		vo.ops = make([]float32, 0, 2*vo.n*v.Stored)
		for i := range masks {
			vo.ops = append(append(vo.ops, masks[i]...), values[i]...)
		}
		out = append(out, vo)
	}
	return out, nil
}

// vectorLayers returns the quantized layers whose bias the output
// rewrites, sorted.
func vectorLayers(vs []*vecOut) []string {
	set := map[string]bool{}
	for _, v := range vs {
		if v.info.Layer != "" {
			set[v.info.Layer] = true
		}
	}
	out := make([]string, 0, len(set))
	for l := range set {
		out = append(out, l)
	}
	sort.Strings(out)
	return out
}

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

// BFL control LoRAs (FLUX.1-Canny-dev-lora, FLUX.1-Depth-dev-lora) carry,
// besides their factors, 1-D tensors the fusion writes into the model's
// 1-D tensors, read from their sources:
//
//   - <module>.lora_B.bias [N]: PEFT's lora_B is a Linear with a bias
//     (lora_bias=True), so the module adds scaling·bias to the layer's
//     output, and merging adds it to the base bias:
//     bias ← bias + lora_B.bias·scaling (peft 5d602fd
//     src/peft/tuners/lora/layer.py Linear.merge). diffusers keeps the key
//     as lora_B.bias under the converted module, splitting a BFL qkv's
//     rows in three and a single block's linear1 into q, k, v, mlp like
//     the weight (diffusers 58eb52c
//     src/diffusers/loaders/lora_conversion_utils.py
//     _convert_bfl_flux_control_lora_to_diffusers). ComfyUI adds it as a
//     diff_b patch, strength·bias (ComfyUI 02b5222 comfy/lora_convert.py
//     convert_lora_bfl_control: ".lora_B.bias" → ".diff_b"), the same for
//     these files, which have no alpha. svdq adds Scale(strength)·bias
//     (strength·α/r, α = r without an alpha), in the rows the module's B
//     feeds, to the bias of the layers the model gives those rows' bias.
//   - <…>.query_norm.scale / .key_norm.scale [head dim]: the RMSNorm
//     weights of the attention's q/k norms, replaced, not added to, and
//     not scaled by the strength: diffusers maps them to attn.norm_q.weight
//     etc. and loads them into the transformer with load_state_dict
//     (lora_pipeline.py FluxLoraLoaderMixin._load_norm_into_transformer,
//     keys _control_lora_supported_norm_keys); ComfyUI turns them into
//     "set" patches (…_norm.set_weight), which calculate_weight applies
//     as weight.copy_(v), without the strength.
//
// An img_in LoRA that widens the input to 128 channels widens FLUX's
// x_embedder (widen.go; quant/model lora_input.go).

// VectorInfo is a 1-D tensor of the svdq file a LoRA can change: a norm
// weight, a kept layer's bias, or a quantized layer's stored bias.
type VectorInfo struct {
	Name string // tensor name in the file
	// Layer is the quantized layer the tensor is the bias of ("" for a
	// 16-bit tensor); Kind is that layer's kind (Kept otherwise).
	Layer  string
	Kind   Kind
	Chunks int // W4A16: output chunks (row interleave)
	N      int // logical length
	Stored int // stored length (W4A4: padded)
	DType  safetensors.DType
}

// StoredIndex returns, for each stored position, the logical row it
// holds (-1 for padding): W4A4 vectors are in the packed INT4 scale order
// (nunchaku.W4A4VectorIndex), W4A16 rows interleaved by chunk
// (nunchaku.W4A16Row), others as they are.
func (v *VectorInfo) StoredIndex() []int {
	idx := make([]int, v.Stored)
	for i := range idx {
		idx[i] = -1
	}
	for n := 0; n < v.N; n++ {
		switch v.Kind {
		case W4A4:
			idx[nunchaku.W4A4VectorIndex(n)] = n
		case W4A16:
			idx[n] = nunchaku.W4A16Row(n, v.N, max(v.Chunks, 1))
		default:
			idx[n] = n
		}
	}
	return idx
}

// biasRows is a block of a layer's rows whose bias the file holds: rows
// Rows of the layer, fed by the source columns Cols.
type biasRows struct {
	Rows, Cols preset.Range
}

// indexVectors records the file's 1-D tensors, which layer rows have a
// bias, and the norm weights' names in every naming the family's preset
// knows (called by NewIndex).
func (ix *Index) indexVectors(meta *nunchaku.Meta, infos []safetensors.Info) {
	ix.vectors, ix.biasOf, ix.vecAlias = map[string]*VectorInfo{}, map[string][]biasRows{}, map[string]string{}
	byName := map[string]safetensors.Info{}
	for _, in := range infos {
		byName[in.Name] = in
	}
	vec := func(name string) (safetensors.Info, bool) {
		in, ok := byName[name]
		ok = ok && len(in.Shape) == 1 && in.Shape[0] > 0 && (in.DType == safetensors.BF16 || in.DType == safetensors.F16 || in.DType == safetensors.F32)
		return in, ok
	}
	inLayer := map[string]bool{} // every tensor of a quantized layer (smooth, wtscale, …)
	names := make([]string, len(infos))
	for i, in := range infos {
		names[i] = in.Name
	}
	for _, g := range nunchaku.Layers(names) {
		for _, s := range g.Suffixes {
			inLayer[g.Name+"."+s] = true
		}
	}
	for i := range meta.Layers {
		lm := &meta.Layers[i]
		li := ix.Layers[lm.Name]
		name := lm.Name + "." + nunchaku.SuffixBias
		inLayer[name] = true
		in, ok := vec(name)
		if !ok || li == nil {
			continue
		}
		ix.vectors[name] = &VectorInfo{Name: name, Layer: lm.Name, Kind: li.Kind, Chunks: lm.Chunks, N: lm.N, Stored: int(in.Shape[0]), DType: in.DType}
		for _, s := range lm.Sources {
			if s.Bias != "" {
				ix.biasOf[lm.Name] = append(ix.biasOf[lm.Name], biasRows{Rows: preset.Range{Lo: s.Rows[0], Hi: s.Rows[1]}, Cols: preset.Range{Lo: s.SrcCols[0], Hi: s.SrcCols[1]}})
			}
		}
	}
	for _, in := range infos {
		if inLayer[in.Name] || strings.HasPrefix(in.Name, ReservedPrefix) {
			continue
		}
		if _, ok := vec(in.Name); !ok {
			continue
		}
		v := &VectorInfo{Name: in.Name, Kind: Kept, N: int(in.Shape[0]), Stored: int(in.Shape[0]), DType: in.DType}
		ix.vectors[in.Name] = v
		ix.vecAlias[StripPrefixes(in.Name)] = in.Name
		if mod, ok := strings.CutSuffix(in.Name, ".bias"); ok {
			if li := ix.Layers[mod+".weight"]; li != nil && li.Kind == Kept && li.N == v.N {
				ix.biasOf[li.Name] = []biasRows{{Rows: preset.All(li.N), Cols: preset.All(li.K)}}
			}
		}
	}
	ix.presetVectorAliases(meta)
}

// presetVectorAliases adds, for every 1-D tensor the family's preset keeps
// unchanged (norm weights), its source names in every naming (BFL
// double_blocks.0.img_attn.norm.query_norm.scale, diffusers
// transformer_blocks.0.attn.norm_q.weight) as aliases of the file's tensor.
func (ix *Index) presetVectorAliases(meta *nunchaku.Meta) {
	if _, err := preset.Lookup(meta.Family); err != nil || meta.Family == "generic" {
		return
	}
	fam, _ := preset.Lookup(meta.Family)
	blocks := 1
	for _, l := range meta.Layers {
		blocks = max(blocks, maxNumber(l.Name)+1)
	}
	blocks = min(blocks, maxSkeletonBlocks)
	groups := map[string][]string{} // output name → source names
	for _, naming := range []string{"diffusers", "bfl", "comfyui"} {
		specs, err := preset.Skeleton(meta.Family, preset.SkeletonOptions{Scale: 1, Blocks: blocks, Naming: naming})
		if err != nil {
			continue
		}
		plan, err := fam.Plan(preset.SkeletonTable(specs), preset.Options{})
		if err != nil {
			continue
		}
		for _, k := range plan.Kept {
			if k.Transform == "" && len(k.Shape) == 1 {
				groups[k.Name] = append(groups[k.Name], StripPrefixes(k.Tensor))
			}
		}
	}
	for out, srcs := range groups {
		all := append([]string{out}, srcs...)
		file := ""
		for _, n := range all {
			if f, ok := ix.vecAlias[n]; ok {
				file = f
				break
			}
		}
		if file == "" {
			continue
		}
		for _, n := range all {
			if _, taken := ix.vecAlias[n]; !taken {
				ix.vecAlias[n] = file
			}
		}
	}
}

// Vector returns the file's 1-D tensor of that name.
func (ix *Index) Vector(name string) (*VectorInfo, bool) {
	v, ok := ix.vectors[name]
	return v, ok
}

// VectorOp is one LoRA's change to one 1-D tensor: Values (logical order,
// length Info.N) are added to it, or, when Replace, replace it. Deltas
// are float32(Scale(strength)·bias), summed over the LoRA's modules that
// feed the tensor's rows.
type VectorOp struct {
	Info    *VectorInfo
	Replace bool
	Values  []float32
	From    []string // the LoRA tensors, sorted
}

// Stored returns the op in stored order: mask (1 where the op replaces
// the value, 0 where it adds) and value; padding positions are 0, 0.
func (op *VectorOp) Stored() (mask, value []float32) {
	idx := op.Info.StoredIndex()
	mask, value = make([]float32, len(idx)), make([]float32, len(idx))
	for i, n := range idx {
		if n < 0 {
			continue
		}
		value[i] = op.Values[n]
		if op.Replace {
			mask[i] = 1
		}
	}
	return mask, value
}

// ApplyVector applies ops, each a mask and a value row in stored order,
// to base in order: x ← x·(1 − mask) + value (float64). It panics when a
// row's length is not len(base).
func ApplyVector(base []float64, masks, values [][]float32) []float64 {
	out := append([]float64(nil), base...)
	for i := range masks {
		if len(masks[i]) != len(out) || len(values[i]) != len(out) {
			panic(fmt.Sprintf("lora: ApplyVector: row of %d/%d, vector of %d", len(masks[i]), len(values[i]), len(out)))
		}
		for j := range out {
			if masks[i][j] != 0 {
				out[j] = 0
			}
			out[j] += float64(values[i][j])
		}
	}
	return out
}

// VectorMapping is what MapVectors found: one op per changed tensor
// (sorted by tensor name), and the norm scales that match no tensor of
// the model.
type VectorMapping struct {
	Ops       []VectorOp
	Unmatched []string
}

// MapVectors maps a LoRA's bias deltas and norm scales onto the model's
// 1-D tensors. A module's bias delta goes to the bias of the rows its B
// feeds, in the layers that hold a bias for them (a BFL single block's
// linear2 bias: mlp_fc2's, as the quantizer put it). Errors name the file
// and the tensor: a bias delta whose rows some layer has no bias for, a
// norm scale whose length differs from the norm's, a non-finite value.
// Norm scales of no known tensor are listed in Unmatched.
func MapVectors(f *File, ix *Index, strength float64) (*VectorMapping, error) {
	ops := map[string]*VectorOp{}
	op := func(v *VectorInfo, replace bool, from string) (*VectorOp, error) {
		o := ops[v.Name]
		if o == nil {
			o = &VectorOp{Info: v, Replace: replace, Values: make([]float32, v.N)}
			ops[v.Name] = o
		} else if o.Replace || replace {
			return nil, fmt.Errorf("%s: tensor %q: %s is also changed by %s", f.Path, from, v.Name, strings.Join(o.From, ", "))
		}
		o.From = append(o.From, from)
		return o, nil
	}
	vm := &VectorMapping{}
	for i := range f.Modules {
		m := &f.Modules[i]
		if m.Bias == "" {
			continue
		}
		ts, ok := ix.Resolve(m.Key)
		if !ok {
			continue // the module is Unmatched in Map
		}
		b, err := f.decode(m.Bias, m.N, m.N)
		if err != nil {
			return nil, err
		}
		s := m.Scale(strength)
		covered := make([]int, m.N)
		for _, t := range ts {
			for _, br := range ix.biasOf[t.Layer] {
				lo, hi := max(t.Rows.Lo, br.Rows.Lo), min(t.Rows.Hi, br.Rows.Hi)
				if br.Cols != t.Cols || lo >= hi {
					continue
				}
				v := ix.vectors[biasName(t.Layer, ix.Layers[t.Layer])]
				if v == nil {
					return nil, fmt.Errorf("%s: tensor %q: layer %s has no 1-D bias tensor in the model", f.Path, m.Bias, t.Layer)
				}
				o, err := op(v, false, m.Bias)
				if err != nil {
					return nil, err
				}
				for r := lo; r < hi; r++ {
					src := t.SrcRows.Lo + r - t.Rows.Lo
					o.Values[r] += float32(s * float64(b[src]))
					covered[src]++
				}
			}
		}
		for r, c := range covered {
			if c != 1 {
				layers := make([]string, 0, len(ts))
				for _, t := range ts {
					layers = append(layers, t.Layer)
				}
				return nil, fmt.Errorf("%s: tensor %q: row %d goes to %d biases of %s (want 1: the model has no bias for it)", f.Path, m.Bias, r, c, strings.Join(uniq(layers), ", "))
			}
		}
	}
	for _, key := range f.Norms {
		name, ok := ix.vecAlias[StripPrefixes(key)]
		v := ix.vectors[name]
		if !ok || v == nil || v.Kind != Kept {
			vm.Unmatched = append(vm.Unmatched, key)
			continue
		}
		info, _ := f.r.Info(key)
		if int(info.Elems()) != v.N {
			return nil, fmt.Errorf("%s: tensor %q: %d values, but %s has %d", f.Path, key, info.Elems(), v.Name, v.N)
		}
		vals, err := f.decode(key, v.N, v.N)
		if err != nil {
			return nil, err
		}
		o, err := op(v, true, key)
		if err != nil {
			return nil, err
		}
		copy(o.Values, vals)
	}
	for _, o := range ops {
		sort.Strings(o.From)
		vm.Ops = append(vm.Ops, *o)
	}
	sort.Slice(vm.Ops, func(i, j int) bool { return vm.Ops[i].Info.Name < vm.Ops[j].Info.Name })
	return vm, nil
}

// biasName is the bias tensor of a layer: <layer>.bias for a quantized
// layer, <module>.bias for a kept <module>.weight.
func biasName(layer string, li *LayerInfo) string {
	if li != nil && li.Kind == Kept {
		return strings.TrimSuffix(layer, ".weight") + ".bias"
	}
	return layer + "." + nunchaku.SuffixBias
}

// parseControl attaches bias deltas to their modules and collects norm
// scales from f.Control; the keys it does not use stay there. Errors
// name the file and tensor: a bias delta that is not a float vector of
// its module's N, a norm scale that is not a float vector.
func (f *File) parseControl() error {
	byKey := map[string]*Module{}
	for i := range f.Modules {
		if m := &f.Modules[i]; m.Style != StyleXLabs && m.Type == TypeLoRA && m.Dora == "" {
			byKey[m.Key] = m
		}
	}
	var rest []string
	for _, key := range f.Control {
		switch {
		case strings.HasSuffix(key, ".lora_B.bias") && byKey[strings.TrimSuffix(key, ".lora_B.bias")] != nil:
			m := byKey[strings.TrimSuffix(key, ".lora_B.bias")]
			if err := vectorShape(f.r, f.Path, key, m.N); err != nil {
				return err
			}
			m.Bias = key
		case isNormKey(key):
			if err := vectorShape(f.r, f.Path, key, -1); err != nil {
				return err
			}
			f.Norms = append(f.Norms, key)
		default:
			rest = append(rest, key)
		}
	}
	f.Control = rest
	sort.Strings(f.Norms)
	return nil
}

// vectorShape checks that a tensor is a float vector [n] (any n > 0 when
// n < 0).
func vectorShape(r safetensors.Reader, path, name string, n int) error {
	info, _ := r.Info(name)
	if !floatDType(info.DType) {
		return fmt.Errorf("%s: tensor %q: dtype %s is not a float type", path, name, info.DType)
	}
	if len(info.Shape) != 1 || info.Shape[0] <= 0 || (n >= 0 && info.Shape[0] != int64(n)) {
		want := "[n]"
		if n >= 0 {
			want = fmt.Sprintf("[%d] (the rows of its lora_B)", n)
		}
		return fmt.Errorf("%s: tensor %q: shape %v, want %s", path, name, info.Shape, want)
	}
	return nil
}

// Encode rounds x to the vector's dtype (through float32, as
// Branch.Merge rounds weights) and encodes it.
func (v *VectorInfo) Encode(x []float64) []byte {
	f := make([]float32, len(x))
	for i, y := range x {
		f[i] = float32(y)
	}
	switch v.DType {
	case safetensors.F32:
		return EncodeF32(f)
	case safetensors.F16:
		return quant.F16.Encode(f)
	}
	return quant.BF16.Encode(f)
}

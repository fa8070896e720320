package model

import (
	"fmt"
	"sort"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// touched is one layer whose branch the operation rewrites.
type touched struct {
	info    *lora.LayerInfo
	oldRank int // logical rank in the input
	newRank int
	// names of the tensors this layer's branch lives in (input and output).
	down, up string
	// sum is the layer's integrity hash in the output (set by writeLayer
	// for quantized layers whose input records one).
	sum string
}

// touchedLayers lists the layers with drops or additions, sorted by name,
// with their input and output ranks.
func (fu *fusion) touchedLayers() ([]*touched, error) {
	set := map[string]bool{}
	for l := range fu.drops {
		set[l] = true
	}
	for l := range fu.adds {
		set[l] = true
	}
	names := make([]string, 0, len(set))
	for l := range set {
		names = append(names, l)
	}
	sort.Strings(names)
	out := make([]*touched, 0, len(names))
	for _, l := range names {
		li := fu.ix.Layers[l]
		if li == nil {
			return nil, fmt.Errorf("%s: the %s record names layer %s, which the file does not have", fu.opt.Model, lora.MetaKey, l)
		}
		t := &touched{info: li, oldRank: fu.inputRank(li)}
		t.newRank = t.oldRank
		for _, rg := range fu.drops[l] {
			t.newRank -= rg[1] - rg[0]
		}
		for _, a := range fu.adds[l] {
			t.newRank += a.rank
		}
		switch li.Kind {
		case lora.W4A4:
			t.down, t.up = fu.suffixName(l, nunchaku.SuffixLoraDown, "proj_down"), fu.suffixName(l, nunchaku.SuffixLoraUp, "proj_up")
		case lora.W4A16:
			t.down, t.up = l+"."+nunchaku.SuffixLoraDown, l+"."+nunchaku.SuffixLoraUp
		case lora.Kept:
			t.down, t.up = lora.ReservedDown(l), lora.ReservedUp(l)
		}
		out = append(out, t)
	}
	return out, nil
}

// suffixName returns layer.suffix, or layer.alias when the file uses the
// Python name.
func (fu *fusion) suffixName(layer, suffix, alias string) string {
	if _, ok := fu.f.r.Info(layer + "." + suffix); !ok {
		if _, ok := fu.f.r.Info(layer + "." + alias); ok {
			return layer + "." + alias
		}
	}
	return layer + "." + suffix
}

// write builds the output's specs and metadata, then streams every tensor:
// untouched ones copied byte for byte, touched branches rebuilt; last, the
// svdq entry gets the rewritten layers' hashes (same length as the
// input's, which sized the header).
func (fu *fusion) write() error {
	layers, err := fu.touchedLayers()
	if err != nil {
		return err
	}
	replaced := map[string]bool{}
	var specs []safetensors.Spec
	meta := *fu.f.meta
	meta.Layers = append([]nunchaku.LayerMeta(nil), fu.f.meta.Layers...)
	for _, t := range layers {
		li := t.info
		for _, n := range []string{t.down, t.up} {
			replaced[n] = true
		}
		switch li.Kind {
		case lora.W4A4:
			dinfo, ok1 := fu.f.r.Info(t.down)
			uinfo, ok2 := fu.f.r.Info(t.up)
			if !ok1 || !ok2 || len(dinfo.Shape) != 2 || len(uinfo.Shape) != 2 {
				return fmt.Errorf("%s: layer %s: no 2-D %s / %s", fu.opt.Model, li.Name, t.down, t.up)
			}
			rp := int64(lora.PadRank(t.newRank))
			specs = append(specs, safetensors.Spec{Name: t.down, DType: dinfo.DType, Shape: []int64{dinfo.Shape[0], rp}},
				safetensors.Spec{Name: t.up, DType: uinfo.DType, Shape: []int64{uinfo.Shape[0], rp}})
			for i := range meta.Layers {
				if meta.Layers[i].Name == li.Name {
					meta.Layers[i].R = t.newRank
				}
			}
		case lora.W4A16:
			if t.newRank > 0 {
				rp := int64(lora.PadRank(t.newRank))
				dt := safetensors.DType(li.DType.String())
				specs = append(specs, safetensors.Spec{Name: t.down, DType: dt, Shape: []int64{rp, int64(li.K)}},
					safetensors.Spec{Name: t.up, DType: dt, Shape: []int64{int64(li.N), rp}})
			}
		case lora.Kept:
			main, _ := fu.f.r.Info(li.Name)
			replaced[li.Name] = true
			replaced[lora.ReservedBase(li.Name)] = true
			specs = append(specs, main.Spec())
			if t.newRank > 0 {
				b := main.Spec()
				b.Name = lora.ReservedBase(li.Name)
				specs = append(specs, b,
					safetensors.Spec{Name: t.down, DType: safetensors.F32, Shape: []int64{int64(t.newRank), int64(li.K)}},
					safetensors.Spec{Name: t.up, DType: safetensors.F32, Shape: []int64{int64(li.N), int64(t.newRank)}})
			}
		}
		fu.rep.Layers = append(fu.rep.Layers, FuseLayer{Name: li.Name, Kind: li.Kind.String(),
			Base: fu.prov.Layers[li.Name].Base, From: t.oldRank, Rank: t.newRank})
		if _, ok := fu.prov.Layers[li.Name]; !ok { // every LoRA of the layer removed
			fu.rep.Layers[len(fu.rep.Layers)-1].Base = t.newRank
		}
	}
	var copied []string
	for _, n := range fu.f.r.Names() {
		if replaced[n] {
			continue
		}
		info, _ := fu.f.r.Info(n)
		specs = append(specs, info.Spec())
		copied = append(copied, n)
	}

	fu.rewritten = map[string]*safetensors.Spec{}
	for n := range replaced {
		fu.rewritten[n] = nil // not in the output unless specified
	}
	for i := range specs {
		if replaced[specs[i].Name] {
			fu.rewritten[specs[i].Name] = &specs[i]
		}
	}

	// The svdq entry is written with the input's hashes of the touched
	// layers (placeholders of the same length) and completed once their
	// tensors are: a hash covers the layer's bytes in the output.
	md := fu.f.r.Metadata()
	verbatim := len(fu.prov.LoRAs) == 0 && fu.prov.Base.SVDQ != ""
	svdqEntry := func() (string, error) {
		if verbatim {
			return fu.prov.Base.SVDQ, nil
		}
		return meta.Marshal()
	}
	opts := []safetensors.Option{}
	if md[nunchaku.MetaSVDQ], err = svdqEntry(); err != nil {
		return err
	}
	if len(fu.prov.LoRAs) == 0 {
		delete(md, lora.MetaKey)
		opts = append(opts, safetensors.ReserveHeader(fu.prov.Base.HeaderPad))
	} else if md[lora.MetaKey], err = fu.prov.Marshal(); err != nil {
		return err
	}
	if fu.opt.DryRun {
		return nil
	}
	w, err := safetensors.Create(fu.opt.Out, specs, md, opts...)
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, n := range copied {
		if err := w.Copy(n, fu.f.r, n); err != nil {
			return err
		}
	}
	if err := eachParallel(len(layers), func(i int) error { return fu.writeLayer(w, layers[i]) }); err != nil {
		return err
	}
	for _, t := range layers {
		if t.sum == "" {
			continue
		}
		for i := range meta.Layers {
			if meta.Layers[i].Name == t.info.Name {
				meta.Layers[i].SHA256 = t.sum
			}
		}
	}
	if md[nunchaku.MetaSVDQ], err = svdqEntry(); err != nil {
		return err
	}
	if err := w.SetMetadata(md); err != nil {
		return err
	}
	return w.Close()
}

// outputHash returns the integrity hash of a quantized layer's tensors in
// the output when its input entry records one ("" otherwise): the input's
// tensors, except the rewritten ones, which are the bytes in written (full
// name → bytes) with the dtype and shape of their output spec, or absent
// (a removed branch).
func (fu *fusion) outputHash(layer string, written map[string][]byte) (string, error) {
	lm, ok := fu.f.meta.Layer(layer)
	if !ok || lm.SHA256 == "" {
		return "", nil
	}
	get, errp := fu.f.getter(layer)
	sum := nunchaku.LayerHash(func(suffix string) (string, []int64, []byte, bool) {
		name := layer + "." + suffix
		if sp, ok := fu.rewritten[name]; ok {
			data, has := written[name]
			if sp == nil || !has {
				return "", nil, nil, false
			}
			return string(sp.DType), sp.Shape, data, true
		}
		return get(suffix)
	})
	if *errp != nil {
		return "", *errp
	}
	return sum, nil
}

// branch returns the layer's new branch: the input's, minus the dropped
// columns, plus the added LoRAs (rounded to the model dtype except for
// kept tensors).
func (fu *fusion) branch(t *touched, cur *lora.Branch) (*lora.Branch, error) {
	if cur.R != t.oldRank {
		return nil, fmt.Errorf("%s: layer %s: branch of rank %d, the record says %d", fu.opt.Model, t.info.Name, cur.R, t.oldRank)
	}
	drops := append([][2]int(nil), fu.drops[t.info.Name]...)
	sort.Slice(drops, func(i, j int) bool { return drops[i][0] > drops[j][0] })
	for _, rg := range drops {
		if rg[0] < 0 || rg[1] > cur.R || rg[0] >= rg[1] {
			return nil, fmt.Errorf("%s: layer %s: recorded range %v outside its rank %d", fu.opt.Model, t.info.Name, rg, cur.R)
		}
		cur.Drop(rg[0], rg[1])
	}
	for _, a := range fu.adds[t.info.Name] {
		b, err := a.plan.Build()
		if err != nil {
			return nil, err
		}
		if t.info.Kind != lora.Kept {
			b.Round(t.info.DType)
		}
		cur.Append(b)
	}
	if cur.R != t.newRank {
		return nil, fmt.Errorf("lora: layer %s: built rank %d, planned %d", t.info.Name, cur.R, t.newRank)
	}
	return cur, nil
}

// writeLayer rewrites one touched layer's tensors.
func (fu *fusion) writeLayer(w *safetensors.Writer, t *touched) error {
	li := t.info
	switch li.Kind {
	case lora.W4A4:
		lm, ok := fu.f.meta.Layer(li.Name)
		if !ok {
			return fmt.Errorf("%s: no svdq entry for layer %s", fu.opt.Model, li.Name)
		}
		ql, err := fu.f.unpackW4A4(lm)
		if err != nil {
			return err
		}
		br, err := fu.branch(t, lora.LayerBranch(ql))
		if err != nil {
			return err
		}
		br.SetOn(ql)
		ts, err := nunchaku.PackW4A4(ql)
		if err != nil {
			return fmt.Errorf("%s: layer %s: %v", fu.opt.Out, li.Name, err)
		}
		written := map[string][]byte{}
		for _, x := range ts {
			switch x.Suffix {
			case nunchaku.SuffixLoraDown:
				written[t.down] = x.Data
			case nunchaku.SuffixLoraUp:
				written[t.up] = x.Data
			}
		}
		for _, n := range []string{t.down, t.up} {
			if err := w.Write(n, written[n]); err != nil {
				return err
			}
		}
		if t.sum, err = fu.outputHash(li.Name, written); err != nil {
			return err
		}
	case lora.W4A16:
		get, errp := fu.f.getter(li.Name)
		cur, err := lora.UnpackW4A16Branch(get, fu.opt.Model+": "+li.Name, li.N, li.K, max(li.Chunks, 1), t.oldRank)
		if *errp != nil {
			return *errp
		}
		if err != nil {
			return err
		}
		br, err := fu.branch(t, cur)
		if err != nil {
			return err
		}
		written := map[string][]byte{}
		if br.R > 0 {
			ts, err := lora.PackW4A16Branch(br, max(li.Chunks, 1), li.DType)
			if err != nil {
				return fmt.Errorf("%s: layer %s: %v", fu.opt.Out, li.Name, err)
			}
			written[t.down], written[t.up] = ts[0].Data, ts[1].Data
			for _, n := range []string{t.down, t.up} {
				if err := w.Write(n, written[n]); err != nil {
					return err
				}
			}
		}
		t.sum, err = fu.outputHash(li.Name, written)
		return err
	case lora.Kept:
		return fu.writeKept(w, t)
	}
	return nil
}

// writeKept rewrites a 16-bit tensor LoRAs are merged into: the merged
// weight recomputed from the base, and the base and factors alongside.
func (fu *fusion) writeKept(w *safetensors.Writer, t *touched) error {
	li := t.info
	baseName := li.Name
	if _, ok := fu.f.r.Info(lora.ReservedBase(li.Name)); ok {
		baseName = lora.ReservedBase(li.Name)
	}
	info, _ := fu.f.r.Info(baseName)
	baseRaw, err := fu.f.r.Bytes(baseName)
	if err != nil {
		return err
	}
	cur := lora.NewBranch(li.N, li.K)
	if t.oldRank > 0 {
		if cur.Down, err = fu.readF32(t.down, t.oldRank, li.K); err != nil {
			return err
		}
		if cur.Up, err = fu.readF32(t.up, li.N, t.oldRank); err != nil {
			return err
		}
		cur.R = t.oldRank
	}
	br, err := fu.branch(t, cur)
	if err != nil {
		return err
	}
	if br.R == 0 {
		return w.Write(li.Name, baseRaw)
	}
	base := make([]float32, li.N*li.K)
	if err := quant.Decode(base, string(info.DType), baseRaw); err != nil {
		return fmt.Errorf("%s: tensor %q: %v", fu.opt.Model, baseName, err)
	}
	merged := br.Merge(base, li.DType, li.Float32)
	if i := quant.FirstNonFinite(merged); i >= 0 {
		return fmt.Errorf("%s: tensor %q: merging the LoRAs gives %v at [%d, %d]", fu.opt.Out, li.Name, merged[i], i/li.K, i%li.K)
	}
	var data []byte
	if li.Float32 {
		data = lora.EncodeF32(merged)
	} else {
		data = li.DType.Encode(merged)
	}
	for _, x := range []struct {
		name string
		data []byte
	}{{li.Name, data}, {lora.ReservedBase(li.Name), baseRaw}, {t.down, lora.EncodeF32(br.Down)}, {t.up, lora.EncodeF32(br.Up)}} {
		if err := w.Write(x.name, x.data); err != nil {
			return err
		}
	}
	return nil
}

// readF32 reads an F32 [rows, cols] reserved tensor.
func (fu *fusion) readF32(name string, rows, cols int) ([]float32, error) {
	info, ok := fu.f.r.Info(name)
	if !ok || info.DType != safetensors.F32 || len(info.Shape) != 2 || info.Shape[0] != int64(rows) || info.Shape[1] != int64(cols) {
		return nil, fmt.Errorf("%s: tensor %q: want F32 [%d %d] (the %s record), got %s %v", fu.opt.Model, name, rows, cols, lora.MetaKey, info.DType, info.Shape)
	}
	raw, err := fu.f.r.Bytes(name)
	if err != nil {
		return nil, err
	}
	v := make([]float32, rows*cols)
	if err := quant.Decode(v, "F32", raw); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %v", fu.opt.Model, name, err)
	}
	return v, nil
}

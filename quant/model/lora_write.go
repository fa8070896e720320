package model

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

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
	// for W4A16 layers whose input records one).
	sum string
	// plan is a W4A4 layer's stored widths.
	plan *w4a4Plan
}

// w4a4Plan is one W4A4 layer's branch in the input and in the output.
// Every W4A4 layer of a fused file stores one rank, the largest any layer
// needs (nunchaku's Python loaders build every module with
// quantization_config's rank and load strictly): the columns past a
// layer's logical rank are zeros, added to the packed tensors by
// nunchaku.PadRank and cut again by lora.NarrowRank, exactly. Once no
// LoRA is left, every layer goes back to its base width.
type w4a4Plan struct {
	name     string
	down, up string // tensor names (C++ or Python)
	// inRank, outRank: logical ranks in the input and the output;
	// inStored, outStored: the stored widths.
	inRank, inStored   int
	outRank, outStored int
	// metaR is the svdq entry's r in the output: the logical rank, or the
	// stored width where that is more than the rank rounded up to 16
	// (the entry's r must pad to the stored width).
	metaR int
	t     *touched // the layer's drops and additions; nil when only resized
	sum   string   // integrity hash in the output (set when rewritten)
}

// rewritten reports whether the layer's branch tensors change.
func (p *w4a4Plan) rewritten() bool { return p.t != nil || p.outStored != p.inStored }

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
		if fu.isVector(l) {
			continue // lora_vector.go
		}
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

// planRanks plans every W4A4 layer's branch width (see w4a4Plan), records
// the widened layers no LoRA occupies in the provenance, and sets the
// report's Rank and Resized.
func (fu *fusion) planRanks(layers []*touched) ([]*w4a4Plan, error) {
	byName := map[string]*touched{}
	for _, t := range layers {
		if t.info.Kind == lora.W4A4 {
			byName[t.info.Name] = t
		}
	}
	var plans []*w4a4Plan
	one := 0
	for i := range fu.f.meta.Layers {
		lm := &fu.f.meta.Layers[i]
		if lm.Kind != nunchaku.KindW4A4 {
			continue
		}
		li := fu.ix.Layers[lm.Name]
		p := &w4a4Plan{name: lm.Name, down: fu.suffixName(lm.Name, nunchaku.SuffixLoraDown, "proj_down"),
			up: fu.suffixName(lm.Name, nunchaku.SuffixLoraUp, "proj_up")}
		d, okd := fu.f.r.Info(p.down)
		u, oku := fu.f.r.Info(p.up)
		if !okd || !oku || len(d.Shape) != 2 || len(u.Shape) != 2 || d.Shape[1] != u.Shape[1] {
			return nil, fmt.Errorf("%s: layer %s: no 2-D %s / %s of one rank", fu.opt.Model, lm.Name, p.down, p.up)
		}
		p.inStored, p.inRank = int(d.Shape[1]), fu.inputRank(li)
		if lora.PadRank(p.inRank) > p.inStored {
			return nil, fmt.Errorf("%s: layer %s: rank %d recorded, %d stored", fu.opt.Model, lm.Name, p.inRank, p.inStored)
		}
		p.outRank = p.inRank
		if t := byName[lm.Name]; t != nil {
			p.t, t.plan, p.outRank = t, p, t.newRank
		}
		one = max(one, lora.PadRank(p.outRank))
		plans = append(plans, p)
	}
	fused := len(fu.prov.LoRAs) > 0
	fu.prov.Widened = nil
	for _, p := range plans {
		p.outStored, p.metaR = lora.PadRank(p.outRank), p.outRank
		if fused {
			p.outStored = one
		}
		if p.outStored != lora.PadRank(p.outRank) {
			p.metaR = p.outStored
			if _, occupied := fu.prov.Layers[p.name]; !occupied {
				if fu.prov.Widened == nil {
					fu.prov.Widened = map[string]int{}
				}
				fu.prov.Widened[p.name] = p.outRank
			}
		}
		if p.t == nil && p.outStored != p.inStored {
			fu.rep.Resized++
		}
	}
	if fused {
		fu.rep.Rank = one
	}
	return plans, nil
}

// quantConfig sets the output's quantization_config: the base's while it
// records the rank every W4A4 layer stores (and once no LoRA is left),
// else the base's with that rank (nunchaku.QuantizationConfig when the
// base's is in that form, precision kept; otherwise the base's JSON with
// "rank" replaced), the base's kept verbatim in the record.
func (fu *fusion) quantConfig(md map[string]string, rank int) error {
	const key = nunchaku.MetaQuantizationConfig
	base, had := md[key]
	if q := fu.prov.Base.QuantizationConfig; q != nil {
		base, had = *q, *q != ""
	}
	fu.prov.Base.QuantizationConfig = nil
	put := func(v string, ok bool) {
		if ok {
			md[key] = v
		} else {
			delete(md, key)
		}
	}
	if len(fu.prov.LoRAs) == 0 {
		put(base, had)
		return nil
	}
	var want string
	switch {
	case !had && rank == 32: // the loaders' default
		put(base, had)
		return nil
	case !had:
		p, err := quant.ParsePrecision(fu.f.meta.Precision)
		if err != nil {
			return fmt.Errorf("%s: svdq entry: %v", fu.opt.Model, err)
		}
		want = nunchaku.QuantizationConfig(p, rank)
	default:
		p, r, err := nunchaku.ParseQuantizationConfig(base)
		switch {
		case err == nil && r == rank:
			put(base, true)
			return nil
		case err == nil && base == nunchaku.QuantizationConfig(p, r):
			want = nunchaku.QuantizationConfig(p, rank)
		default:
			var m map[string]json.RawMessage
			if err := json.Unmarshal([]byte(base), &m); err != nil || m == nil {
				return fmt.Errorf("%s: metadata %s is not a JSON object, so its rank cannot be set to %d", fu.opt.Model, key, rank)
			}
			m["rank"] = json.RawMessage(strconv.Itoa(rank))
			b, err := json.Marshal(m)
			if err != nil {
				return err
			}
			want = string(b)
		}
	}
	md[key] = want
	if !had {
		base = ""
	}
	fu.prov.Base.QuantizationConfig = &base
	return nil
}

// write builds the output's specs and metadata, checks that the output
// loads wherever the input does, then streams every tensor: untouched
// ones copied byte for byte, touched branches rebuilt, W4A4 branches
// widened or narrowed to the file's one rank, the kept tensors' bases and
// factors into the sidecar; last, the sidecar's hash goes into the record
// and the svdq entry gets the rewritten layers' hashes (same lengths as
// the placeholders that sized the header).
func (fu *fusion) write() error {
	layers, err := fu.touchedLayers()
	if err != nil {
		return err
	}
	plans, err := fu.planRanks(layers)
	if err != nil {
		return err
	}
	vecs, err := fu.planVectors()
	if err != nil {
		return err
	}
	fu.prov.Version = lora.ProvenanceVersion
	replaced := map[string]bool{}
	var specs, sideSpecs []safetensors.Spec
	meta := *fu.f.meta
	meta.Layers = append([]nunchaku.LayerMeta(nil), fu.f.meta.Layers...)
	metaOf := map[string]*nunchaku.LayerMeta{}
	for i := range meta.Layers {
		metaOf[meta.Layers[i].Name] = &meta.Layers[i]
	}
	for _, p := range plans {
		metaOf[p.name].R = p.metaR
		if !p.rewritten() {
			continue
		}
		dinfo, _ := fu.f.r.Info(p.down)
		uinfo, _ := fu.f.r.Info(p.up)
		replaced[p.down], replaced[p.up] = true, true
		specs = append(specs, safetensors.Spec{Name: p.down, DType: dinfo.DType, Shape: []int64{dinfo.Shape[0], int64(p.outStored)}},
			safetensors.Spec{Name: p.up, DType: uinfo.DType, Shape: []int64{uinfo.Shape[0], int64(p.outStored)}})
	}
	for _, t := range layers {
		li := t.info
		switch li.Kind {
		case lora.W4A16:
			replaced[t.down], replaced[t.up] = true, true
			if t.newRank > 0 {
				rp := int64(lora.PadRank(t.newRank))
				dt := safetensors.DType(li.DType.String())
				specs = append(specs, safetensors.Spec{Name: t.down, DType: dt, Shape: []int64{rp, int64(li.K)}},
					safetensors.Spec{Name: t.up, DType: dt, Shape: []int64{int64(li.N), rp}})
			}
		case lora.Kept:
			main, _ := fu.f.r.Info(li.Name)
			replaced[li.Name] = true
			sp := main.Spec()
			sp.Shape = []int64{int64(li.N), int64(li.K)} // an input layer's width may change (lora_input.go)
			specs = append(specs, sp)
		}
		fu.rep.Layers = append(fu.rep.Layers, FuseLayer{Name: li.Name, Kind: li.Kind.String(),
			Base: fu.prov.Layers[li.Name].Base, From: t.oldRank, Rank: t.newRank})
		if _, ok := fu.prov.Layers[li.Name]; !ok { // every LoRA of the layer removed
			fu.rep.Layers[len(fu.rep.Layers)-1].Base = t.newRank
		}
	}
	// The sidecar: every kept tensor that still has LoRAs merged in, its
	// base and factors rebuilt (touched) or copied from the input's.
	touchedKept := map[string]*touched{}
	for _, t := range layers {
		if t.info.Kind == lora.Kept {
			touchedKept[t.info.Name] = t
		}
	}
	var keptCopied []string
	for _, l := range slices.Sorted(maps.Keys(fu.prov.Layers)) {
		if fu.prov.Layers[l].Kind != lora.Kept.String() {
			continue
		}
		li, r := fu.ix.Layers[l], fu.prov.Rank(l)
		if li == nil {
			return fmt.Errorf("%s: the %s record names layer %s, which the file does not have", fu.opt.Model, lora.MetaKey, l)
		}
		if touchedKept[l] == nil {
			keptCopied = append(keptCopied, l)
		}
		main, _ := fu.f.r.Info(l)
		if si, ok := fu.sideInfo(lora.ReservedBase(l)); ok {
			main = si // the base's shape: a widened input's is narrower
		}
		b := main.Spec()
		b.Name = lora.ReservedBase(l)
		sideSpecs = append(sideSpecs, b,
			safetensors.Spec{Name: lora.ReservedDown(l), DType: safetensors.F32, Shape: []int64{int64(r), int64(li.K)}},
			safetensors.Spec{Name: lora.ReservedUp(l), DType: safetensors.F32, Shape: []int64{int64(li.N), int64(r)}})
	}
	for _, v := range vecs {
		replaced[v.info.Name] = true
		specs = append(specs, v.spec)
		fu.vecOut[v.info.Name] = v.out
		fu.rep.Vectors = append(fu.rep.Vectors, FuseVector{Name: v.info.Name, Layer: v.info.Layer, Ops: v.n})
		if v.n > 0 {
			b := v.spec
			b.Name = lora.ReservedBase(v.info.Name)
			sideSpecs = append(sideSpecs, b, safetensors.Spec{Name: lora.ReservedVector(v.info.Name), DType: safetensors.F32, Shape: []int64{int64(2 * v.n), int64(v.info.Stored)}})
		}
	}
	var copied []string
	for _, n := range fu.f.r.Names() {
		if replaced[n] || strings.HasPrefix(n, lora.ReservedPrefix) { // reserved tensors: sidecar only
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

	// Metadata. The svdq entry is written with the input's hashes of the
	// rewritten layers (placeholders of the same length) and completed
	// once their tensors are: a hash covers the layer's bytes in the
	// output. The sidecar's hash is a placeholder until it is written.
	md := fu.f.r.Metadata()
	if err := fu.quantConfig(md, fu.rep.Rank); err != nil {
		return err
	}
	if err := fu.inputMetadata(md); err != nil {
		return err
	}
	sidePath := ""
	fu.prov.Sidecar = nil
	if len(sideSpecs) > 0 {
		sidePath = sidecarOf(fu.opt.Out)
		fu.prov.Sidecar = &lora.Sidecar{File: filepath.Base(sidePath), SHA256: nunchaku.PlaceholderHash}
		fu.rep.Sidecar = sidePath
	}
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
	if err := fu.checkEngines(specs, md); err != nil {
		return err
	}
	if fu.opt.DryRun {
		return nil
	}

	var ws *safetensors.Writer
	if sidePath != "" {
		if ws, err = safetensors.Create(sidePath, sideSpecs, map[string]string{lora.SidecarMetaKey: fu.prov.Base.SHA256}); err != nil {
			return err
		}
		defer ws.Abort()
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
	for _, l := range keptCopied {
		for _, n := range []string{lora.ReservedBase(l), lora.ReservedDown(l), lora.ReservedUp(l)} {
			if _, ok := fu.sideInfo(n); !ok {
				return fmt.Errorf("%s: tensor %q: missing (the %s record lists a LoRA merged into %s)", fu.sidePath, n, lora.MetaKey, l)
			}
			if err := ws.Copy(n, fu.side, n); err != nil {
				return err
			}
		}
	}
	for _, v := range vecs {
		if err := w.Write(v.info.Name, v.out); err != nil {
			return err
		}
		if v.n > 0 {
			if err := ws.Write(lora.ReservedBase(v.info.Name), v.base); err != nil {
				return err
			}
			if err := ws.Write(lora.ReservedVector(v.info.Name), lora.EncodeF32(v.ops)); err != nil {
				return err
			}
		}
	}
	var jobs []func() error
	for _, p := range plans {
		if p.rewritten() {
			jobs = append(jobs, func() error { return fu.writeW4A4(w, p) })
		}
	}
	for _, t := range layers {
		switch t.info.Kind {
		case lora.W4A16:
			jobs = append(jobs, func() error { return fu.writeW4A16(w, t) })
		case lora.Kept:
			jobs = append(jobs, func() error { return fu.writeKept(w, ws, t) })
		}
	}
	if err := eachParallel(len(jobs), func(i int) error { return jobs[i]() }); err != nil {
		return err
	}
	for _, p := range plans {
		if p.sum != "" {
			metaOf[p.name].SHA256 = p.sum
		}
	}
	for _, t := range layers {
		if t.sum != "" {
			metaOf[t.info.Name].SHA256 = t.sum
		}
	}
	rehashed := map[string]bool{}
	for _, p := range plans {
		rehashed[p.name] = p.rewritten()
	}
	for _, t := range layers {
		rehashed[t.info.Name] = rehashed[t.info.Name] || t.info.Kind == lora.W4A16
	}
	for _, l := range vectorLayers(vecs) { // a bias rewritten, the branch not
		if rehashed[l] {
			continue
		}
		sum, err := fu.outputHash(l, nil)
		if err != nil {
			return err
		}
		if sum != "" {
			metaOf[l].SHA256 = sum
		}
	}
	if md[nunchaku.MetaSVDQ], err = svdqEntry(); err != nil {
		return err
	}
	if ws != nil {
		if err := ws.Close(); err != nil {
			return err
		}
		if fu.prov.Sidecar.SHA256, err = hashFile(sidePath); err != nil {
			return err
		}
		if md[lora.MetaKey], err = fu.prov.Marshal(); err != nil {
			return err
		}
	}
	if err := w.SetMetadata(md); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	if ws == nil {
		fu.removeStaleSidecar()
	}
	return nil
}

// sideInfo looks a reserved tensor up in the input's reserved source.
func (fu *fusion) sideInfo(name string) (safetensors.Info, bool) {
	if fu.side == nil {
		return safetensors.Info{}, false
	}
	return fu.side.Info(name)
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
			if !has {
				data, has = fu.vecOut[name]
			}
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
	if cur.K != t.info.K { // a kept input layer widened or narrowed back (lora_input.go)
		d, err := resizeCols(cur.Down, cur.R, cur.K, t.info.K, fmt.Sprintf("%s: tensor %q", fu.sideName(), t.down))
		if err != nil {
			return nil, err
		}
		cur.Down, cur.K = d, t.info.K
	}
	for _, a := range fu.adds[t.info.Name] {
		b, err := a.branch()
		if err != nil {
			return nil, err
		}
		cur.Append(b)
	}
	if cur.R != t.newRank {
		return nil, fmt.Errorf("lora: layer %s: built rank %d, planned %d", t.info.Name, cur.R, t.newRank)
	}
	return cur, nil
}

// writeW4A4 writes a W4A4 layer's branch at its output width: a touched
// layer's rebuilt (the input's branch cut to its logical rank, minus the
// dropped columns, plus the added LoRAs, packed, then widened with zero
// columns), an untouched one's widened or narrowed as stored.
func (fu *fusion) writeW4A4(w *safetensors.Writer, p *w4a4Plan) error {
	var down, up nunchaku.Tensor
	if t := p.t; t != nil {
		lm, ok := fu.f.meta.Layer(p.name)
		if !ok {
			return fmt.Errorf("%s: no svdq entry for layer %s", fu.opt.Model, p.name)
		}
		ql, err := fu.f.unpackW4A4(lm)
		if err != nil {
			return err
		}
		cur := lora.LayerBranch(ql)
		if cur.R > t.oldRank { // zero columns up to the file's one rank
			if pad := cur.Slice(t.oldRank, cur.R); pad.FirstNonZero() != "" {
				return fmt.Errorf("%s: layer %s: branch columns past its rank %d are not zero (%s)", fu.opt.Model, p.name, t.oldRank, pad.FirstNonZero())
			}
			cur.Drop(t.oldRank, cur.R)
		}
		br, err := fu.branch(t, cur)
		if err != nil {
			return err
		}
		br.SetOn(ql)
		ts, err := nunchaku.PackW4A4(ql)
		if err != nil {
			return fmt.Errorf("%s: layer %s: %v", fu.opt.Out, p.name, err)
		}
		for _, x := range ts {
			switch x.Suffix {
			case nunchaku.SuffixLoraDown:
				down = x
			case nunchaku.SuffixLoraUp:
				up = x
			}
		}
	} else {
		var err error
		if down, err = fu.rawTensor(p.down); err != nil {
			return err
		}
		if up, err = fu.rawTensor(p.up); err != nil {
			return err
		}
	}
	written := map[string][]byte{}
	for _, x := range []struct {
		name string
		t    nunchaku.Tensor
	}{{p.down, down}, {p.up, up}} {
		t, err := x.t, error(nil)
		switch have := int(t.Shape[1]); {
		case have < p.outStored:
			t, err = nunchaku.PadRank(t, p.outStored)
		case have > p.outStored:
			t, err = lora.NarrowRank(t, p.outStored)
		}
		if err != nil {
			return fmt.Errorf("%s: layer %s: %v", fu.opt.Model, p.name, err)
		}
		written[x.name] = t.Data
		if err := w.Write(x.name, t.Data); err != nil {
			return err
		}
	}
	var err error
	p.sum, err = fu.outputHash(p.name, written)
	return err
}

// rawTensor reads a tensor of the input as stored.
func (fu *fusion) rawTensor(name string) (nunchaku.Tensor, error) {
	info, _ := fu.f.r.Info(name)
	b, err := fu.f.r.Bytes(name)
	if err != nil {
		return nunchaku.Tensor{}, err
	}
	return nunchaku.Tensor{Suffix: name, DType: string(info.DType), Shape: info.Shape, Data: b}, nil
}

// writeW4A16 rewrites a touched W4A16 layer's unpacked branch.
func (fu *fusion) writeW4A16(w *safetensors.Writer, t *touched) error {
	li := t.info
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
}

// writeKept rewrites a 16-bit tensor LoRAs are merged into: the merged
// weight, recomputed from the base, into the fused file; the base and the
// factors into the sidecar (ws).
func (fu *fusion) writeKept(w, ws *safetensors.Writer, t *touched) error {
	li := t.info
	src, baseName := fu.f.r, li.Name
	if _, ok := fu.sideInfo(lora.ReservedBase(li.Name)); ok {
		src, baseName = fu.side, lora.ReservedBase(li.Name)
	} else if t.oldRank > 0 {
		return fmt.Errorf("%s: no tensor %q, the base of %s (the %s record lists LoRAs merged into it)", fu.sideName(), lora.ReservedBase(li.Name), li.Name, lora.MetaKey)
	}
	info, _ := src.Info(baseName)
	baseRaw, err := src.Bytes(baseName)
	if err != nil {
		return err
	}
	cur := lora.NewBranch(li.N, fu.keptInWidth(li)) // fu.branch widens or narrows it to li.K
	if t.oldRank > 0 {
		if cur.Down, err = fu.readF32(t.down, t.oldRank, cur.K); err != nil {
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
	if len(info.Shape) != 2 || info.Shape[0] != int64(li.N) || info.Shape[1] > int64(li.K) {
		return fmt.Errorf("%s: tensor %q: shape %v, layer %s is [%d %d]", fu.sideName(), baseName, info.Shape, li.Name, li.N, li.K)
	}
	bk := int(info.Shape[1]) // narrower than li.K for a widened input: [W | 0]
	base := make([]float32, li.N*bk)
	if err := quant.Decode(base, string(info.DType), baseRaw); err != nil {
		return fmt.Errorf("%s: tensor %q: %v", fu.sideName(), baseName, err)
	}
	base, _ = resizeCols(base, li.N, bk, li.K, "")
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
	if err := w.Write(li.Name, data); err != nil {
		return err
	}
	for _, x := range []struct {
		name string
		data []byte
	}{{lora.ReservedBase(li.Name), baseRaw}, {t.down, lora.EncodeF32(br.Down)}, {t.up, lora.EncodeF32(br.Up)}} {
		if err := ws.Write(x.name, x.data); err != nil {
			return err
		}
	}
	return nil
}

// sideName names the input's reserved source in messages.
func (fu *fusion) sideName() string {
	if fu.sidePath != "" {
		return fu.sidePath
	}
	return fu.opt.Model
}

// readF32 reads an F32 [rows, cols] reserved tensor from the input's
// sidecar (or, for a version-1 record, the input itself).
func (fu *fusion) readF32(name string, rows, cols int) ([]float32, error) {
	info, ok := fu.sideInfo(name)
	if !ok || info.DType != safetensors.F32 || len(info.Shape) != 2 || info.Shape[0] != int64(rows) || info.Shape[1] != int64(cols) {
		return nil, fmt.Errorf("%s: tensor %q: want F32 [%d %d] (the %s record), got %s %v", fu.sideName(), name, rows, cols, lora.MetaKey, info.DType, info.Shape)
	}
	raw, err := fu.side.Bytes(name)
	if err != nil {
		return nil, err
	}
	v := make([]float32, rows*cols)
	if err := quant.Decode(v, "F32", raw); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %v", fu.sideName(), name, err)
	}
	return v, nil
}

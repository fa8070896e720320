package model

import (
	"fmt"
	"maps"
	"slices"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
)

// outline is everything of a quantized output file but its layers' bytes
// and their svdq metadata entries: what the final writer (assembly)
// needs, whether the layers come from this run, from journal records
// (resume) or from parts (merge). Parts carry it in their header, so that
// merge writes the same bytes as a single run without the checkpoint.
type outline struct {
	Specs []safetensors.Spec `json:"specs"` // every tensor of the output
	// Meta is every metadata key of the output but nunchaku.MetaSVDQ.
	Meta map[string]string `json:"meta"`
	// Head is the svdq entry without its layers.
	Head nunchaku.Meta `json:"head"`
	// Layers are the layers' svdq entries before quantization (smoothing
	// exponents and hashes placeholders of the final length), plan order:
	// the header is sized with them.
	Layers []nunchaku.LayerMeta `json:"layers"`
	// Tensors are the suffixes of each layer's packed tensors, plan order.
	Tensors [][]string `json:"tensors"`
	Kept    []string   `json:"kept"`  // kept tensor names, plan order
	Units   [][]int    `json:"units"` // plan indices of each unit (Plan.units)
	Costs   []float64  `json:"costs"` // unitCost of each unit

	byName map[string]safetensors.Spec // Specs by name, built on first use
}

// outline returns the plan's outline; refs are the calibration
// references recorded in the file.
func (p *Plan) outline(tool string, refs map[string]CalibRef) (*outline, error) {
	ol := &outline{Specs: p.outSpecs(),
		Head: nunchaku.Meta{Version: nunchaku.MetaVersion, Tool: tool, Family: p.Family, Precision: p.Precision.String(), Rank: p.Rank}}
	for i := range p.Layers {
		ol.Layers = append(ol.Layers, p.layerMeta(&p.Layers[i], 0, 0))
		var sfx []string
		for _, t := range p.Layers[i].specs {
			sfx = append(sfx, t.Suffix)
		}
		ol.Tensors = append(ol.Tensors, sfx)
	}
	md, err := p.metadata(tool, ol.Layers, refs)
	if err != nil {
		return nil, err
	}
	delete(md, nunchaku.MetaSVDQ)
	ol.Meta = md
	for _, k := range p.Kept {
		ol.Kept = append(ol.Kept, k.Name)
	}
	for _, u := range p.units() {
		ol.Units = append(ol.Units, u.layers)
		ol.Costs = append(ol.Costs, p.unitCost(u))
	}
	return ol, nil
}

// metadata is the output's metadata with the given layer entries (plan
// order): Plan.metadata's result, rebuilt from the outline.
func (ol *outline) metadata(metas []nunchaku.LayerMeta) (map[string]string, error) {
	m := ol.Head
	m.Layers = metas
	svdq, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	out := maps.Clone(ol.Meta)
	out[nunchaku.MetaSVDQ] = svdq
	return out, nil
}

// check reports whether a record's layer, with packed tensors ts, is
// layer l.Index of this outline with exactly the tensors (suffixes,
// dtypes, shapes) the outline declares for it.
func (ol *outline) check(l *layerRecord, ts []nunchaku.Tensor) error {
	if l.Index < 0 || l.Index >= len(ol.Layers) || l.Index >= len(ol.Tensors) {
		return fmt.Errorf("layer %s: index %d out of the %d planned layers", l.Meta.Name, l.Index, len(ol.Layers))
	}
	want := ol.Layers[l.Index].Name
	if l.Meta.Name != want {
		return fmt.Errorf("layer %d is %s, the plan's is %s", l.Index, l.Meta.Name, want)
	}
	if !slices.Equal(l.Tensors, ol.Tensors[l.Index]) || len(ts) != len(l.Tensors) {
		return fmt.Errorf("layer %s: tensors %v, the plan's are %v", want, l.Tensors, ol.Tensors[l.Index])
	}
	for i, t := range ts {
		s := ol.spec(want + "." + l.Tensors[i])
		if t.Suffix != l.Tensors[i] || string(s.DType) != t.DType || !slices.Equal(s.Shape, t.Shape) {
			return fmt.Errorf("layer %s: tensor %s is %s %v, the plan's is %s %v", want, t.Suffix, t.DType, t.Shape, s.DType, s.Shape)
		}
	}
	return nil
}

// spec returns the output spec named name (zero if none); the first call
// indexes Specs and must not race with others.
func (ol *outline) spec(name string) safetensors.Spec {
	if ol.byName == nil {
		ol.byName = map[string]safetensors.Spec{}
		for _, s := range ol.Specs {
			ol.byName[s.Name] = s
		}
	}
	return ol.byName[name]
}

// assembly is the final writer: the output file being written from an
// outline. Every way of making the output (one run, a resumed run, merge)
// writes through it, so that they give the same bytes.
type assembly struct {
	ol    *outline
	w     *safetensors.Writer
	metas []nunchaku.LayerMeta
	have  []bool
}

// create starts the output at path: every tensor declared, the header
// sized with the placeholder entries.
func (ol *outline) create(path string, opts ...safetensors.Option) (*assembly, error) {
	meta, err := ol.metadata(ol.Layers)
	if err != nil {
		return nil, err
	}
	w, err := safetensors.Create(path, ol.Specs, meta, opts...)
	if err != nil {
		return nil, err
	}
	ol.spec("") // builds byName before putLayer's concurrent use
	return &assembly{ol: ol, w: w, metas: slices.Clone(ol.Layers), have: make([]bool, len(ol.Layers))}, nil
}

// putLayer writes a finished layer's packed tensors ts and records its
// entry; ts must be the outline's tensors of that layer. Safe for
// concurrent use on distinct layers.
func (a *assembly) putLayer(l *layerRecord, ts []nunchaku.Tensor) error {
	if err := a.ol.check(l, ts); err != nil {
		return fmt.Errorf("%s: %v", a.w.Path(), err)
	}
	for _, t := range ts {
		if err := a.w.Write(l.Meta.Name+"."+t.Suffix, t.Data); err != nil {
			return err
		}
	}
	a.metas[l.Index] = l.Meta
	a.have[l.Index] = true
	return nil
}

// close sets the final metadata and renames the file into place; every
// layer must have been put (the writer checks every tensor was written).
func (a *assembly) close() error {
	if i := slices.Index(a.have, false); i >= 0 {
		return fmt.Errorf("%s: layer %s was never written", a.w.Path(), a.ol.Layers[i].Name)
	}
	meta, err := a.ol.metadata(a.metas)
	if err != nil {
		return err
	}
	if err := a.w.SetMetadata(meta); err != nil {
		return err
	}
	return a.w.Close()
}

// abort discards the file (nothing after close).
func (a *assembly) abort() { a.w.Abort() }

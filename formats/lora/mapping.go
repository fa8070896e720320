package lora

import (
	"fmt"
	"math"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/preset"
)

// Mapping is one LoRA file laid onto a checkpoint: for every layer it
// touches, the rank blocks it adds.
type Mapping struct {
	File     *File
	Strength float64
	Layers   []LayerPlan // sorted by layer name
	// Unmatched lists the module keys that resolve to no layer (sorted).
	Unmatched []string
}

// LayerPlan is what one LoRA adds to one layer.
type LayerPlan struct {
	Info  *LayerInfo
	Parts []Part // ordered by first output row, then module key

	layers map[string]*LayerInfo // the index's, for DoRA's module weights
}

// Part is one (module, input columns) rank block of a layer: Down =
// A[:, Cols], Up rows Rows = scale·B[SrcRows] for each target, other up rows
// zero.
type Part struct {
	Module  *Module
	Scale   float64 // Module.Scale(strength)
	Targets []Target
	// All holds every target of the module, in this layer and others
	// (DoRA normalises the module's whole weight).
	All []Target
}

// Map resolves every module of f through ix and checks its shape: a
// module's ΔW must be exactly as large as its targets say ([max SrcRows.Hi,
// max Cols.Hi]), else Map returns an error naming the layer and both
// shapes. Modules that resolve to nothing are listed in Unmatched.
func Map(f *File, ix *Index, strength float64) (*Mapping, error) {
	mp := &Mapping{File: f, Strength: strength}
	byLayer := map[string]*LayerPlan{}
	for i := range f.Modules {
		m := &f.Modules[i]
		ts, ok := ix.Resolve(m.Key)
		if !ok {
			mp.Unmatched = append(mp.Unmatched, m.Key)
			continue
		}
		n, k := 0, 0
		for _, t := range ts {
			n, k = max(n, t.SrcRows.Hi), max(k, t.Cols.Hi)
		}
		if m.N != n || m.K != k {
			layers := make([]string, 0, len(ts))
			for _, t := range ts {
				layers = append(layers, t.Layer)
			}
			if !m.LowRank() {
				return nil, fmt.Errorf("%s: module %s: %s ΔW is [%d %d], but layer %s takes it as [%d %d]",
					f.Path, m.Key, m.Type, m.N, m.K, strings.Join(uniq(layers), ", "), n, k)
			}
			hint := ""
			if m.N == n && m.K > k {
				hint = " (a LoRA that widens the model's input: svdq widens only a FLUX x_embedder/img_in from 64 to 128 input features, as FLUX.1 Canny/Depth's control LoRAs do; see docs/lora.md)"
			}
			return nil, fmt.Errorf("%s: module %s: ΔW is [%d %d] (tensor %q [%d %d], tensor %q [%d %d]), but layer %s takes it as [%d %d]%s",
				f.Path, m.Key, m.N, m.K, m.B, m.N, m.Rank, m.A, m.Rank, m.K, strings.Join(uniq(layers), ", "), n, k, hint)
		}
		s := m.Scale(strength)
		if math.IsNaN(s) || math.IsInf(s, 0) {
			return nil, fmt.Errorf("%s: module %s: scale strength·α/r = %v is not finite", f.Path, m.Key, s)
		}
		// One part per (layer, columns).
		type key struct {
			layer string
			cols  preset.Range
		}
		parts := map[key]*Part{}
		var order []key
		for _, t := range ts {
			kk := key{t.Layer, t.Cols}
			p := parts[kk]
			if p == nil {
				p = &Part{Module: m, Scale: s, All: ts}
				parts[kk] = p
				order = append(order, kk)
			}
			p.Targets = append(p.Targets, t)
		}
		for _, kk := range order {
			lp := byLayer[kk.layer]
			if lp == nil {
				lp = &LayerPlan{Info: ix.Layers[kk.layer], layers: ix.Layers}
				byLayer[kk.layer] = lp
			}
			lp.Parts = append(lp.Parts, *parts[kk])
		}
	}
	for _, lp := range byLayer {
		sort.SliceStable(lp.Parts, func(i, j int) bool {
			a, b := firstRow(&lp.Parts[i]), firstRow(&lp.Parts[j])
			if a != b {
				return a < b
			}
			return lp.Parts[i].Module.Key < lp.Parts[j].Module.Key
		})
		mp.Layers = append(mp.Layers, *lp)
	}
	sort.Slice(mp.Layers, func(i, j int) bool { return mp.Layers[i].Info.Name < mp.Layers[j].Info.Name })
	return mp, nil
}

func uniq(s []string) []string {
	sort.Strings(s)
	out := s[:0]
	for i, v := range s {
		if i == 0 || v != s[i-1] {
			out = append(out, v)
		}
	}
	return out
}

func firstRow(p *Part) int {
	lo := math.MaxInt
	for _, t := range p.Targets {
		lo = min(lo, t.Rows.Lo)
	}
	return lo
}

// HasDense reports whether a part of the plan is not a plain LoRA (Dense
// is not nil).
func (lp *LayerPlan) HasDense() bool {
	for _, p := range lp.Parts {
		if !p.Module.LowRank() {
			return true
		}
	}
	return false
}

// Dense returns the sum of the plan's non-low-rank parts (LoHa, LoKr,
// diff, DoRA) as the layer's ΔW [N, K] in float64, each part's scale
// applied, or nil when every part is a plain LoRA (Build's). src gives
// the base weights DoRA needs (nil: a DoRA part is an error).
func (lp *LayerPlan) Dense(src WeightSource) ([]float64, error) {
	var d []float64
	li := lp.Info
	for _, p := range lp.Parts {
		m := p.Module
		if m.LowRank() {
			continue
		}
		var md []float64
		var err error
		if m.Dora != "" {
			if src == nil {
				return nil, fmt.Errorf("%s: module %s: DoRA needs the base weights", m.f.Path, m.Key)
			}
			var w []float64
			if w, err = moduleWeight(m, p.All, src, lp.layers); err == nil {
				md, err = m.DenseDoRA(w)
			}
		} else {
			md, err = m.Dense()
		}
		if err != nil {
			return nil, err
		}
		if d == nil {
			d = make([]float64, li.N*li.K)
		}
		for _, t := range p.Targets {
			for i := 0; i < t.Rows.Len(); i++ {
				src := md[(t.SrcRows.Lo+i)*m.K+t.Cols.Lo : (t.SrcRows.Lo+i)*m.K+t.Cols.Hi]
				dst := d[(t.Rows.Lo+i)*li.K : (t.Rows.Lo+i+1)*li.K]
				for j, v := range src {
					dst[j] += p.Scale * v
				}
			}
		}
	}
	return d, nil
}

// Build materialises the plan's plain LoRA parts (Dense has the others;
// a LoRA with a DoRA magnitude is one of them)
// as a branch of the layer's shape, unrounded:
// each part's Down = A[:, Cols] and Up = float32(scale·B) placed at its
// rows. Parts whose Down is bit-identical and whose rows do not overlap
// share one block (their up rows combined), and rank columns that add
// nothing (all-zero up column or down row) are dropped. Errors come from
// reading the factors.
func (lp *LayerPlan) Build() (*Branch, error) {
	li := lp.Info
	type block struct {
		down []float32 // [r, K]
		up   []float32 // [N, r]
		r    int
		rows []preset.Range
	}
	var blocks []*block
	for _, p := range lp.Parts {
		if !p.Module.LowRank() {
			continue
		}
		a, b, err := p.Module.Factors()
		if err != nil {
			return nil, err
		}
		r := p.Module.Rank
		cols := p.Targets[0].Cols
		down := make([]float32, r*li.K)
		for i := 0; i < r; i++ {
			copy(down[i*li.K:(i+1)*li.K], a[i*p.Module.K+cols.Lo:i*p.Module.K+cols.Hi])
		}
		var rows []preset.Range
		var dst *block
		for _, bl := range blocks {
			if bl.r == r && equalBits(bl.down, down) && disjoint(bl.rows, p.Targets) {
				dst = bl
				break
			}
		}
		if dst == nil {
			dst = &block{down: down, up: make([]float32, li.N*r), r: r}
			blocks = append(blocks, dst)
		}
		for _, t := range p.Targets {
			for i := 0; i < t.Rows.Len(); i++ {
				src := b[(t.SrcRows.Lo+i)*r : (t.SrcRows.Lo+i+1)*r]
				out := dst.up[(t.Rows.Lo+i)*r : (t.Rows.Lo+i+1)*r]
				for j, v := range src {
					out[j] = float32(p.Scale * float64(v))
				}
			}
			rows = append(rows, t.Rows)
		}
		dst.rows = append(dst.rows, rows...)
	}
	br := NewBranch(li.N, li.K)
	for _, bl := range blocks {
		br.Append(&Branch{N: li.N, K: li.K, R: bl.r, Down: bl.down, Up: bl.up})
	}
	br.pruneZero()
	return br, nil
}

// pruneZero drops the rank columns whose up column or down row is all
// zeros: they add exactly nothing. This is what makes a BFL linear1 LoRA
// (q|k|v|mlp stacked, block-diagonal B) give qkv_proj only the q, k, v
// columns and mlp_fc1 only the mlp ones, as the diffusers form does.
func (b *Branch) pruneZero() {
	for r := b.R - 1; r >= 0; r-- {
		upZero, downZero := true, true
		for n := 0; n < b.N && upZero; n++ {
			upZero = b.Up[n*b.R+r] == 0
		}
		for _, v := range b.Down[r*b.K : (r+1)*b.K] {
			if v != 0 {
				downZero = false
				break
			}
		}
		if upZero || downZero {
			b.Drop(r, r+1)
		}
	}
}

func equalBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

func disjoint(rows []preset.Range, ts []Target) bool {
	for _, r := range rows {
		for _, t := range ts {
			if r.Lo < t.Rows.Hi && t.Rows.Lo < r.Hi {
				return false
			}
		}
	}
	return true
}

// Rank returns the rank the plan adds once built, without reading factors
// (an upper bound: Build may merge parts with identical A).
func (lp *LayerPlan) Rank() int {
	r := 0
	for _, p := range lp.Parts {
		if p.Module.LowRank() {
			r += p.Module.Rank
		}
	}
	return r
}

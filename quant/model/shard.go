package model

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
)

// Shard selects one of N parts of a quantization (--shard I/N): the
// units (a layer, or the layers sharing a smoothing vector) are dealt to
// N shards by estimated cost (assignShards), and shard I quantizes its
// own and writes them as a part (a record file with the whole output's
// outline; record.go), shard 0 with the kept 16-bit tensors. Merge joins
// the N parts into the file one run would write. I counts from 0, as
// Kubernetes' JOB_COMPLETION_INDEX and a Slurm array --array=0-(N-1) do.
type Shard struct {
	I int `json:"i"`
	N int `json:"n"`
}

// String is "I/N".
func (s Shard) String() string { return fmt.Sprintf("%d/%d", s.I, s.N) }

// maxShards bounds N: more shards than this is a typo, not a cluster.
const maxShards = 4096

// ParseShard reads "I/N": 0 ≤ I < N ≤ 4096.
func ParseShard(s string) (Shard, error) {
	a, b, ok := strings.Cut(s, "/")
	i, err1 := strconv.Atoi(strings.TrimSpace(a))
	n, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return Shard{}, fmt.Errorf("--shard %q: want I/N, e.g. 0/4 (I counts from 0)", s)
	}
	if n < 1 || n > maxShards || i < 0 || i >= n {
		return Shard{}, fmt.Errorf("--shard %q: want 0 ≤ I < N ≤ %d (I counts from 0: the shards of 4 are 0/4 … 3/4)", s, maxShards)
	}
	return Shard{I: i, N: n}, nil
}

// Relative cost of quantizing one weight, by role: the time of a unit is
// about Σ N·K·weight over its layers. Measured on full-size synthetic
// FLUX.1-dev with the default options (docs/cost-model.md): 0.535 s per
// million W4A4 weights, 0.127 s per million W4A16 weights (0.24 of it).
// A W4A4 layer runs the smoothing search and the low-rank fit; the
// weight-only forms quantize once and measure once. W4A16G128 (T5) was
// not measured: taken as W4A16.
var roleCost = map[preset.Role]float64{
	preset.W4A4:      1,
	preset.W4A16:     0.24,
	preset.W4A16G128: 0.24,
}

// cost estimates the time of quantizing l in units of one W4A4 weight.
func (l *PlannedLayer) cost() float64 {
	return float64(l.N) * float64(l.K) * roleCost[l.Role]
}

// unitCost estimates the time of unit u in units of one W4A4 weight.
func (p *Plan) unitCost(u unit) float64 {
	var c float64
	for _, i := range u.layers {
		c += p.Layers[i].cost()
	}
	return c
}

// assignShards deals units (their costs) to n shards, largest first, each
// to the shard with the least cost so far (the lowest-numbered on ties):
// the greedy longest-processing-time rule, at most 4/3 of the best
// balance. It is deterministic: every shard computes the same deal from
// the plan alone. It returns each shard's unit indices, ascending.
func assignShards(costs []float64, n int) [][]int {
	order := make([]int, len(costs))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return cmp.Compare(costs[b], costs[a]) })
	load := make([]float64, n)
	out := make([][]int, n)
	for _, u := range order {
		best := 0
		for s := 1; s < n; s++ {
			if load[s] < load[best] {
				best = s
			}
		}
		load[best] += costs[u]
		out[best] = append(out[best], u)
	}
	for _, s := range out {
		slices.Sort(s)
	}
	return out
}

// writePart writes a shard's part to opt.Out: the journal records of its
// units (checked again against their digests), and for shard 0 the kept
// tensors, under a header with the whole output's outline.
func (q *quantizer) writePart(ol *outline, mine []int, opts []safetensors.Option) error {
	p, j := q.plan, q.journal
	hdr := &recordHeader{Inputs: j.in, Shard: &q.opt.Shard, Outline: ol}
	var specs []safetensors.Spec
	for _, ui := range mine {
		for _, li := range ol.Units[ui] {
			rf, lr, err := j.open(li)
			if err != nil {
				return fmt.Errorf("part %s: %v", q.opt.Out, err)
			}
			hdr.Layers = append(hdr.Layers, *lr)
			for _, s := range lr.Tensors {
				specs = append(specs, ol.spec(lr.Meta.Name+"."+s))
			}
			rf.Close()
		}
	}
	if q.opt.Shard.I == 0 {
		for i := range p.Kept {
			k := &p.Kept[i]
			data, err := keptData(q.r, q.opt.Model, k)
			if err != nil {
				return err
			}
			s := ol.spec(k.Name)
			hdr.Kept = append(hdr.Kept, keptRecord{Name: k.Name, SHA256: keptDigest(k.Name, string(s.DType), s.Shape, data)})
			specs = append(specs, s)
			releaseTensors(q.r, keptTensors(&k.Kept)...)
		}
	}
	meta, err := recordMeta(hdr)
	if err != nil {
		return err
	}
	w, err := safetensors.Create(q.opt.Out, specs, meta, opts...)
	if err != nil {
		return err
	}
	defer w.Abort()
	for i := range hdr.Layers {
		lr := &hdr.Layers[i]
		rf, _, err := j.open(lr.Index)
		if err != nil {
			return err
		}
		ts, err := rf.layerTensors(lr)
		if err == nil {
			err = ol.check(lr, ts)
		}
		for _, t := range ts {
			if err != nil {
				break
			}
			err = w.Write(lr.Meta.Name+"."+t.Suffix, t.Data)
		}
		rf.Close()
		if err != nil {
			return err
		}
	}
	for i, kr := range hdr.Kept {
		data, err := keptData(q.r, q.opt.Model, &p.Kept[i])
		if err != nil {
			return err
		}
		if err := w.Write(kr.Name, data); err != nil {
			return err
		}
		releaseTensors(q.r, keptTensors(&p.Kept[i].Kept)...)
	}
	return w.Close()
}

// ShardLayers returns the number of layers shard s is dealt (all of them
// when s.N is 0).
func (p *Plan) ShardLayers(s Shard) int {
	if s.N == 0 {
		return len(p.Layers)
	}
	units := p.units()
	costs := make([]float64, len(units))
	for i, u := range units {
		costs[i] = p.unitCost(u)
	}
	n := 0
	for _, ui := range assignShards(costs, s.N)[s.I] {
		n += len(units[ui].layers)
	}
	return n
}

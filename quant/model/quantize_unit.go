package model

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/quant"
)

// unit quantizes, packs and writes the layers of u, records their metadata
// and reports them.
func (q *quantizer) unit(u unit) error {
	start := time.Now()
	first := &q.plan.Layers[u.layers[0]]
	c, err := loadCalib(q.cf, q.refs[first.Name])
	if err != nil {
		return err
	}
	if first.Role == preset.W4A16 || first.Role == preset.W4A16G128 {
		return q.weightOnly(u.layers[0], c, start)
	}
	ins := make([]quant.Input, len(u.layers))
	var dt quant.Float16
	for i, li := range u.layers {
		pl := &q.plan.Layers[li]
		w, b, d, err := q.readLayer(pl)
		if err != nil {
			return err
		}
		if i == 0 {
			dt = d
		}
		ins[i] = quant.Input{Name: q.opt.Model + ": " + pl.Name, W: w, N: pl.N, K: pl.K, Bias: b}
	}
	rank := q.plan.Rank
	if rank == 0 {
		rank = -1
	}
	res, err := quant.QuantizeGroup(ins, first.Shifted, c, quant.Options{
		Precision: q.plan.Precision, Rank: rank, Search: q.opt.Search, Iters: q.opt.Iters,
		GPTQ: q.opt.GPTQ, DType: dt, Seed: layerSeed(u.name), MaxRows: q.opt.MaxRows,
		Pow2TensorScale: q.plan.Layout != nil && q.plan.Layout.NoWTScale})
	if err != nil {
		return fmt.Errorf("%s: %v", q.opt.Model, err)
	}
	secs := time.Since(start).Seconds()
	for i, li := range u.layers {
		pl := &q.plan.Layers[li]
		ins[i].W = nil // release before packing the next member
		ts, err := nunchaku.PackW4A4(res[i].Layer)
		if err != nil {
			return fmt.Errorf("%s: layer %s: %v", q.opt.Model, pl.Name, err)
		}
		ts, sum, err := q.adapt(pl, ts)
		if err != nil {
			return err
		}
		meta := q.plan.layerMeta(pl, res[i].Alpha, res[i].Beta)
		meta.SHA256 = sum
		if err := q.finish(li, meta, ts, LayerReport{
			Name: pl.Name, Shape: [2]int{pl.N, pl.K}, Precision: pl.Precision, Rank: res[i].Layer.R,
			Alpha: float64(meta.Smooth.Alpha), Beta: float64(meta.Smooth.Beta), RelError: res[i].RelError,
			Seconds: secs, DType: pl.DType, InBytes: pl.InBytes, OutBytes: pl.OutBytes,
			Iters: res[i].Iters, Evaluated: res[i].Evaluated, GPTQ: res[i].GPTQ}); err != nil {
			return err
		}
	}
	return nil
}

// weightOnly quantizes one weight-only layer (W4A16, groups of 64, packed
// for GEMV_AWQ / AWQW4A16Linear; or W4A16G128, groups of 128, packed as
// nunchaku's T5 W4Linear) and measures it on its rows.
func (q *quantizer) weightOnly(li int, c quant.Calib, start time.Time) error {
	pl := &q.plan.Layers[li]
	w, b, dt, err := q.readLayer(pl)
	if err != nil {
		return err
	}
	group := 0 // 64
	if pl.Role == preset.W4A16G128 {
		group = nunchaku.W4LinearGroup
	}
	var wo *quant.WeightOnly
	gptq := false
	if q.opt.GPTQ { // fitted on half the rows, kept where it wins on the other half
		wo, gptq = q.weightOnlyCalib(c, pl.K).BestGroup(w, pl.N, pl.K, group, b, dt)
	} else {
		wo = quant.QuantizeWeightOnlyGroup(w, pl.N, pl.K, group, b, dt)
	}
	rel := weightOnlyError(wo, w, b, c, q.opt.MaxRows)
	var ts []nunchaku.Tensor
	if pl.Role == preset.W4A16G128 {
		ts, err = nunchaku.PackW4Linear(wo, hasBias(&pl.Layer))
	} else {
		ts, err = nunchaku.PackW4A16(wo, max(pl.Chunks, 1))
	}
	if err != nil {
		return fmt.Errorf("%s: layer %s: %v", q.opt.Model, pl.Name, err)
	}
	ts, sum, err := q.adapt(pl, ts)
	if err != nil {
		return err
	}
	meta := q.plan.layerMeta(pl, 0, 0)
	meta.SHA256 = sum
	return q.finish(li, meta, ts, LayerReport{
		Name: pl.Name, Shape: [2]int{pl.N, pl.K}, Precision: pl.Precision, RelError: rel,
		Seconds: time.Since(start).Seconds(), DType: pl.DType, InBytes: pl.InBytes, OutBytes: pl.OutBytes,
		GPTQ: gptq})
}

// woCalibKeep is how many factored W4A16 calibrations weightOnlyCalib
// keeps (each k² float32: 36 MiB at k = 3072).
const woCalibKeep = 2

type woCalibEntry struct {
	once sync.Once
	c    *quant.WeightOnlyCalib
}

// weightOnlyCalib returns the factored calibration of the rows of c (k
// columns), built once per distinct rows while it stays among the
// woCalibKeep most recent: layers reading the same input share one
// factorisation, whichever worker gets there first builds it.
func (q *quantizer) weightOnlyCalib(c quant.Calib, k int) *quant.WeightOnlyCalib {
	buf := make([]byte, 0, 16+4*c.S*k)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(c.S))
	buf = binary.LittleEndian.AppendUint64(buf, uint64(k))
	for _, v := range c.X[:c.S*k] {
		buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(v))
	}
	key := sha256.Sum256(buf)
	q.woMu.Lock()
	if q.woCalib == nil {
		q.woCalib = map[[32]byte]*woCalibEntry{}
	}
	e := q.woCalib[key]
	if e == nil {
		e = &woCalibEntry{}
		q.woCalib[key] = e
		q.woOrder = append(q.woOrder, key)
		if len(q.woOrder) > woCalibKeep {
			delete(q.woCalib, q.woOrder[0])
			q.woOrder = q.woOrder[1:]
		}
	}
	q.woMu.Unlock()
	e.once.Do(func() { e.c = quant.NewWeightOnlyCalib(c.X, c.S, k) })
	return e.c
}

// weightOnlyError is the relative output error of a W4A16 layer on at most
// maxRows evenly spaced calibration rows, measured like quant's errors:
// ‖Y_q − (X·Wᵀ + b)‖_F / ‖X·Wᵀ‖_F.
func weightOnlyError(wo *quant.WeightOnly, w, bias []float32, c quant.Calib, maxRows int) float64 {
	x, s := sampleRows(c, wo.K, maxRows)
	yref := make([]float64, s*wo.N)
	quant.RefOutput32(yref, x, s, wo.K, w, wo.N)
	yq := make([]float32, s*wo.N)
	wo.Forward(yq, x, s)
	subtractBias(yq, bias, s)
	return quant.RelError(yq, yref)
}

// sampleRows returns at most maxRows (0: quant.DefaultMaxRows) of c's rows,
// evenly spaced, and their count.
func sampleRows(c quant.Calib, k, maxRows int) ([]float32, int) {
	if maxRows <= 0 {
		maxRows = quant.DefaultMaxRows
	}
	if c.S <= maxRows {
		return c.X[:c.S*k], c.S
	}
	x := make([]float32, maxRows*k)
	for i := range maxRows {
		src := i * c.S / maxRows
		copy(x[i*k:(i+1)*k], c.X[src*k:(src+1)*k])
	}
	return x, maxRows
}

// subtractBias removes bias [n] (nil: nothing) from each of the m rows of y.
func subtractBias(y, bias []float32, m int) {
	if bias == nil {
		return
	}
	n := len(bias)
	for i := range m {
		row := y[i*n : (i+1)*n]
		for j, b := range bias {
			row[j] -= b
		}
	}
}

// readLayer reads planned layer pl's weight [N, K] and bias
// (readWeight), releases its sources' pages, and returns the 16-bit type
// of the output: the plan's (--dtype), else the source's.
func (q *quantizer) readLayer(pl *PlannedLayer) (w, bias []float32, dt quant.Float16, err error) {
	srcs := presetSources(&pl.Layer)
	if w, bias, dt, err = readWeight(q.r, q.opt.Model, srcs, pl.N, pl.K); err != nil {
		return nil, nil, 0, err
	}
	q.release(srcs)
	if q.plan.DType != 0 {
		dt = q.plan.DType
	}
	return w, bias, dt, nil
}

// release drops the mapped pages of the tensors a layer was read from
// (quantize_mem.go).
func (q *quantizer) release(srcs []source) {
	for _, s := range srcs {
		releaseTensors(q.r, s.tensor, s.bias)
	}
}

// adapt lays a layer's packed tensors out for the target engines,
// checks them against the plan and returns them with their integrity hash
// (nunchaku.LayerHash) for the metadata.
func (q *quantizer) adapt(pl *PlannedLayer, ts []nunchaku.Tensor) ([]nunchaku.Tensor, string, error) {
	ts, err := q.plan.Layout.Adapt(q.plan.Family, pl.Name, ts)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %v", q.opt.Model, err)
	}
	if len(ts) != len(pl.specs) {
		return nil, "", fmt.Errorf("%s: layer %s: packer returned %d tensors, planned %d", q.opt.Out, pl.Name, len(ts), len(pl.specs))
	}
	return ts, nunchaku.HashTensors(ts), nil
}

// finish journals a finished layer (journal.go), writes its packed
// tensors ts to the output (not for a shard: its part is assembled from
// the journal) and reports it.
func (q *quantizer) finish(li int, meta nunchaku.LayerMeta, ts []nunchaku.Tensor, rep LayerReport) error {
	lr := newLayerRecord(li, meta, rep, ts)
	if q.journal != nil {
		if err := q.journal.write(lr, ts); err != nil {
			return err
		}
	}
	if q.a != nil {
		if err := q.a.putLayer(&lr, ts); err != nil {
			return err
		}
	}
	q.record(li, meta, rep)
	return nil
}

// record records a layer's metadata and reports it.
func (q *quantizer) record(li int, meta nunchaku.LayerMeta, rep LayerReport) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.done++
	rep.Index, rep.Total = q.done, q.total
	q.metas[li] = meta
	q.reports[li] = rep
	if q.opt.OnLayer != nil {
		q.opt.OnLayer(rep)
	}
}

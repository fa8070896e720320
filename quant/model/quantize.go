package model

import (
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model/iofiles"
)

// QuantizeOptions configure Quantize. The zero values of the pipeline
// fields select quant's defaults (full smoothing search, up to 100
// refinement iterations, no GPTQ).
type QuantizeOptions struct {
	PlanOptions
	Calib string // svdq-calib/1 file
	Out   string // output .safetensors path (its directory must exist)

	Search  quant.SearchMode
	Iters   int  // refinement iterations at most; 0: default; negative: none
	GPTQ    bool // GPTQ on the final W4A4 residual and on W4A16 weights, where it wins
	MaxRows int  // calibration rows per objective; 0: quant.DefaultMaxRows

	// Workers quantize that many units (a layer, or the layers sharing one
	// smoothing vector) at once; each holds one unit's tensors, so peak
	// memory is about Workers units. 0: DefaultWorkers().
	Workers int
	// Tool is recorded in the svdq metadata, e.g. "svdq 0.1.0".
	Tool string
	// OnLayer, when set, is called once per finished layer, never
	// concurrently, in completion order.
	OnLayer func(LayerReport)

	// Resume requires the work directory of an interrupted run
	// (WorkDir(Out)); without it a matching one is reused all the same
	// (journal.go).
	Resume bool
	// Shard, when N > 0, quantizes shard I of N and writes it as a part
	// for Merge (shard.go).
	Shard Shard
	// Notes, when set, receives messages for the user: what a resumed run
	// reused, what it ignored.
	Notes func(string)

	// wrapWrites, when set, wraps every file write (tests: a full disk).
	wrapWrites func(path string, f io.WriterAt) io.WriterAt
}

// DefaultWorkers is one worker per four CPUs, but at least two (one on a
// single CPU): the dense kernels inside a unit already run on every core,
// but a unit's serial parts (QR factorisations, bookkeeping) leave cores
// idle that a second unit fills (measured on 2 cores: see NOTES.md).
func DefaultWorkers() int { return min(max(2, runtime.NumCPU()/4), runtime.NumCPU()) }

// LayerReport is the outcome of one quantized layer.
type LayerReport struct {
	Index     int     `json:"-"` // completion order, 1-based
	Total     int     `json:"-"` // layers in the plan
	Name      string  `json:"name"`
	Shape     [2]int  `json:"shape"`     // [N, K]
	Precision string  `json:"precision"` // int4, nvfp4 or w4a16
	Rank      int     `json:"rank"`
	Alpha     float64 `json:"alpha"`
	Beta      float64 `json:"beta"`
	RelError  float64 `json:"rel_error"` // ‖Y_q − Y‖_F / ‖X·Wᵀ‖_F on the calibration rows
	Seconds   float64 `json:"seconds"`   // wall time of its unit (shared by a smoothing group)
	DType     string  `json:"dtype"`     // source dtype
	InBytes   int64   `json:"in_bytes"`
	OutBytes  int64   `json:"out_bytes"`
	Iters     int     `json:"iters"`            // refinement iterations run
	Evaluated int     `json:"evaluated"`        // smoothing candidates evaluated
	GPTQ      bool    `json:"gptq"`             // GPTQ kept (W4A4 residual, or W4A16 weights; --gptq)
	Reused    bool    `json:"reused,omitempty"` // taken from an interrupted run's journal
}

// QuantizeReport is the outcome of Quantize (and, as JSON, the --report
// file).
type QuantizeReport struct {
	Plan   *Plan         `json:"-"`
	Layers []LayerReport `json:"layers"` // in plan order (a shard's own)
	Totals Totals        `json:"totals"`
	Input  *InputSummary `json:"input"`           // how the checkpoint was read, dtypes written
	Shard  *Shard        `json:"shard,omitempty"` // the shard written, if any
	Reused int           `json:"reused_layers"`   // layers taken from the journal
}

// Totals summarise a quantization.
type Totals struct {
	Layers        int            `json:"layers"`
	Kept          int            `json:"kept"`
	KeptReasons   map[string]int `json:"kept_reasons"`
	InBytes       int64          `json:"in_bytes"`  // tensors of the source checkpoint
	OutBytes      int64          `json:"out_bytes"` // the output file
	BitsPerWeight float64        `json:"bits_per_weight"`
	MeanRelError  float64        `json:"mean_rel_error"`
	MaxRelError   float64        `json:"max_rel_error"`
	Seconds       float64        `json:"seconds"`
}

// Quantize quantizes opt.Model to opt.Out following the model's preset:
// W4A4 layers through quant.QuantizeGroup (one smoothing vector per
// smoothing group), W4A16 layers through quant.QuantizeWeightOnly, each
// packed by formats/nunchaku and written as soon as it is done; kept
// tensors are copied byte for byte (or assembled, for the preset's
// documented transforms). Every input is validated before anything is
// written (calibration keys and widths; NaN/Inf in kept tensors); on any
// error the output file does not exist. The output is byte-identical for
// identical inputs and options, whatever opt.Workers.
func Quantize(opt QuantizeOptions) (*QuantizeReport, error) {
	start := time.Now()
	defer limitHeap()()
	plan, r, err := QuantizePlan(opt.PlanOptions)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := checkOut(opt.Out, opt.Model); err != nil {
		return nil, err
	}
	cf, err := calib.Open(opt.Calib)
	if err != nil {
		return nil, err
	}
	defer cf.Close()
	refs := map[string]CalibRef{}
	for i := range plan.Layers {
		ref, err := resolveCalib(cf, r, opt.Calib, &plan.Layers[i])
		if err != nil {
			return nil, err
		}
		refs[plan.Layers[i].Name] = ref
	}
	for _, k := range plan.Kept {
		for _, t := range keptTensors(&k.Kept) {
			if err := checkFinite(r, opt.Model, t); err != nil {
				return nil, err
			}
		}
	}

	q := &quantizer{opt: opt, plan: plan, r: r, cf: cf, refs: refs, total: len(plan.Layers),
		metas: make([]nunchaku.LayerMeta, len(plan.Layers)), reports: make([]LayerReport, len(plan.Layers))}
	return q.job(start)
}

// checkOut refuses an output path that is empty, a directory, in a
// missing directory, or the input (any file of a sharded checkpoint,
// through any link): iofiles.Set.Check, without the probe (Create comes
// before any work).
func checkOut(out, model string) error {
	if out == "" {
		return errors.New("no output path")
	}
	s := iofiles.Set{NoProbe: true}
	s.Input("input", model)
	s.Output("output", out)
	return s.Check()
}

// resolveCalib finds the calibration key of a planned layer (findCalib):
// the first of its keys the file has, whose width must be the source
// tensor's input width and cover the layer's columns.
func resolveCalib(cf *calib.File, r safetensors.Reader, file string, pl *PlannedLayer) (CalibRef, error) {
	info, _ := r.Info(pl.Sources[0].Tensor)
	_, width, _ := matrixShape(info)
	return findCalib(cf, file, pl.Name, pl.K, width, planCalibKeys(&pl.Layer))
}

// calibKeys are candidate calibration keys of a layer, in preference
// order, and the columns of their input the layer reads.
type calibKeys struct {
	keys []string
	cols [2]int
}

// planCalibKeys are a preset layer's calibration keys: its diffusers
// module names, then its original (BFL) names (preset.Layer.Calib).
func planCalibKeys(pl *preset.Layer) calibKeys {
	return calibKeys{keys: pl.Calib, cols: [2]int{pl.CalibCols.Lo, pl.CalibCols.Hi}}
}

// findCalib is the calibration lookup of quantize and check: the first
// key of sets, in order, that cf has, checked against the layer: its
// width must be width (the source tensor's input width; 0: unknown) and
// hold the k columns the layer reads. A key the file lacks is skipped;
// none found is an error listing every key looked for.
func findCalib(cf *calib.File, file, layer string, k, width int, sets ...calibKeys) (CalibRef, error) {
	var looked []string
	for _, s := range sets {
		for _, key := range s.keys {
			if slices.Contains(looked, key) {
				continue
			}
			looked = append(looked, key)
			kw, _, _, ok := cf.Shape(key)
			if !ok {
				continue
			}
			if (width > 0 && kw != width) || s.cols[0] < 0 || s.cols[1] > kw || s.cols[1]-s.cols[0] != k {
				of := ""
				if width > 0 {
					of = fmt.Sprintf(" of a %d-wide input", width)
				}
				return CalibRef{}, fmt.Errorf("%s: tensor %q: input width %d, but layer %s reads %d columns [%d:%d]%s",
					file, key+".input_absmax", kw, layer, k, s.cols[0], s.cols[1], of)
			}
			return CalibRef{Key: key, Cols: s.cols}, nil
		}
	}
	if len(looked) == 0 {
		return CalibRef{}, fmt.Errorf("%s: no calibration key recorded for layer %s", file, layer)
	}
	return CalibRef{}, fmt.Errorf("%s: no statistics for layer %s (looked for %q)", file, layer, looked)
}

// loadCalib reads the calibration rows of ref.
func loadCalib(cf *calib.File, ref CalibRef) (quant.Calib, error) {
	st, err := cf.Layer(ref.Key)
	if err != nil {
		return quant.Calib{}, err
	}
	if ref.Cols[0] != 0 || ref.Cols[1] != st.K {
		if ref.Cols[0] < 0 || ref.Cols[1] > st.K || ref.Cols[0] >= ref.Cols[1] {
			return quant.Calib{}, fmt.Errorf("%s: tensor %q: width %d has no columns %v", cf.Path(), ref.Key+".input_samples", st.K, ref.Cols)
		}
		st = st.Cols(ref.Cols[0], ref.Cols[1])
	}
	return quant.Calib{X: st.Samples, S: st.S, AbsMax: st.AbsMax}, nil
}

// keptTensors lists the file tensors a kept output reads.
func keptTensors(k *preset.Kept) []string {
	if k.Transform == "" || len(k.Pieces) == 0 {
		return []string{k.Tensor}
	}
	var out []string
	for _, p := range k.Pieces {
		out = append(out, p.Tensor)
	}
	return out
}

// writeKept writes one kept tensor: a byte copy, or the preset's transform.
func writeKept(w *safetensors.Writer, r safetensors.Reader, file string, k *PlannedKept) error {
	data, err := keptData(r, file, k)
	if err != nil {
		return err
	}
	return w.Write(k.Name, data)
}

// keptData returns the bytes of one kept tensor as written: the source's
// (checked to be of the planned dtype and shape), or the preset's
// transform.
func keptData(r safetensors.Reader, file string, k *PlannedKept) ([]byte, error) {
	if k.Transform == "" && k.DType == k.SrcDType {
		info, ok := r.Info(k.Tensor)
		if !ok {
			return nil, fmt.Errorf("%s: no tensor %q", file, k.Tensor)
		}
		if info.DType != k.DType || !slices.Equal(info.Shape, k.Shape) {
			return nil, fmt.Errorf("%s: tensor %q: %s %v, planned %s %v", file, k.Tensor, info.DType, info.Shape, k.DType, k.Shape)
		}
		return r.Bytes(k.Tensor)
	}
	data, err := k.Assemble(func(t string) ([]byte, []int64, error) {
		info, ok := r.Info(t)
		if !ok {
			return nil, nil, fmt.Errorf("%s: no tensor %q", file, t)
		}
		if info.DType != k.SrcDType {
			return nil, nil, fmt.Errorf("%s: tensor %q: dtype %s, other pieces of %s are %s", file, t, info.DType, k.Name, k.SrcDType)
		}
		b, err := r.Bytes(t)
		return b, info.Shape, err
	}, k.SrcDType.Size())
	if err != nil {
		return nil, fmt.Errorf("%s: %v", file, err)
	}
	if k.DType != k.SrcDType {
		if data, err = convert16(data, k.SrcDType, k.DType); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %v", file, k.Tensor, err)
		}
	}
	return data, nil
}

// convert16 converts raw float tensor bytes of dtype from to the 16-bit
// dtype to (round to nearest even); a finite value that overflows to is an
// error, since the loader would then compute with ±Inf.
func convert16(raw []byte, from, to safetensors.DType) ([]byte, error) {
	v := make([]float32, len(raw)/from.Size())
	if err := quant.Decode(v, string(from), raw); err != nil {
		return nil, err
	}
	dt := quant.BF16
	if to == safetensors.F16 {
		dt = quant.F16
	}
	for i, x := range v {
		if r := dt.Round(x); math.IsInf(float64(r), 0) && !math.IsInf(float64(x), 0) {
			return nil, fmt.Errorf("element %d = %g overflows %s", i, x, to)
		}
	}
	return dt.Encode(v), nil
}

// outSpecs lists every tensor of the output file.
func (p *Plan) outSpecs() []safetensors.Spec {
	var specs []safetensors.Spec
	for _, l := range p.Layers {
		for _, t := range l.specs {
			specs = append(specs, safetensors.Spec{Name: l.Name + "." + t.Suffix, DType: safetensors.DType(t.DType), Shape: t.Shape})
		}
	}
	for _, k := range p.Kept {
		specs = append(specs, safetensors.Spec{Name: k.Name, DType: k.DType, Shape: k.Shape})
	}
	return specs
}

// totals summarises finished layers.
func (p *Plan) totals(layers []LayerReport) Totals {
	count, _ := p.KeptReasons()
	t := Totals{Layers: len(layers), Kept: len(p.Kept), KeptReasons: count, InBytes: p.InBytes,
		OutBytes: p.OutBytes, BitsPerWeight: p.BitsPerWeight()}
	for _, l := range layers {
		t.MeanRelError += l.RelError
		t.MaxRelError = max(t.MaxRelError, l.RelError)
	}
	if len(layers) > 0 {
		t.MeanRelError /= float64(len(layers))
	}
	return t
}

// unit is a piece of work: the plan layers sharing one smoothing vector, or
// one layer.
type unit struct {
	name   string // first member's name: seeds the SVD
	layers []int  // indices into Plan.Layers
}

// units groups the plan's layers by smoothing group, in plan order.
func (p *Plan) units() []unit {
	var out []unit
	at := map[string]int{}
	for i, l := range p.Layers {
		if l.Role == preset.W4A4 && l.SmoothGroup != "" {
			if j, ok := at[l.SmoothGroup]; ok {
				out[j].layers = append(out[j].layers, i)
				continue
			}
			at[l.SmoothGroup] = len(out)
		}
		out = append(out, unit{name: l.Name, layers: []int{i}})
	}
	return out
}

// quantizer runs the units of a plan on a pool of workers.
type quantizer struct {
	opt  QuantizeOptions
	plan *Plan
	r    safetensors.Reader
	cf   *calib.File
	refs map[string]CalibRef
	// a is the output (nil for a shard); journal the work directory;
	// todo the units to compute; total the layers of the job.
	a       *assembly
	journal *journal
	todo    []unit
	total   int
	metas   []nunchaku.LayerMeta // by plan index; filled in as layers finish

	mu      sync.Mutex
	done    int
	reports []LayerReport // by plan index

	// --gptq on W4A16 layers: the factored calibration of recent inputs,
	// by a hash of their rows (FLUX's adaLN layers all read one input).
	woMu    sync.Mutex
	woCalib map[[32]byte]*woCalibEntry
	woOrder [][32]byte // oldest first; at most woCalibKeep entries
}

// run quantizes every unit; the first error stops the dispatch of new
// units and, once the running ones finish, the error of the earliest unit
// in plan order is returned (the same message whatever the worker count).
func (q *quantizer) run() error {
	units := q.todo
	if len(units) == 0 {
		return nil
	}
	workers := q.opt.Workers
	if workers <= 0 {
		workers = DefaultWorkers()
	}
	workers = min(workers, len(units))
	type failure struct {
		unit int
		err  error
	}
	next := make(chan int)
	fails := make(chan failure, workers)
	var stop sync.Once
	quit := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := q.unit(units[i]); err != nil {
					fails <- failure{i, err}
					stop.Do(func() { close(quit) })
					return
				}
			}
		}()
	}
dispatch:
	for i := range units {
		select {
		case next <- i:
		case <-quit:
			break dispatch
		}
	}
	close(next)
	wg.Wait()
	close(fails)
	first := failure{unit: len(units)}
	for f := range fails {
		if f.unit < first.unit {
			first = f
		}
	}
	return first.err
}

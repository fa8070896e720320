package model

import (
	"fmt"
	"math"
	"regexp"
	"sync"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// CheckOptions configure Check.
type CheckOptions struct {
	Model     string // the quantized checkpoint
	Reference string // the 16-bit checkpoint it was made from
	Calib     string // svdq-calib/1 file
	// Layers, when set, selects the layers checked by name.
	Layers *regexp.Regexp
	// MaxRelError > 0 fails the check when a layer's svdquant error
	// exceeds it.
	MaxRelError float64
	// Search is the smoothing search of the SmoothQuant baseline (use the
	// one the file was quantized with).
	Search  quant.SearchMode
	MaxRows int // calibration rows per layer; 0: quant.DefaultMaxRows
	Workers int // layers checked at once; 0: DefaultWorkers()
	// Spectrum names a W4A4 layer whose singular values before and after
	// smoothing Check returns.
	Spectrum string
	// OnLayer, when set, is called after each layer (never concurrently).
	OnLayer func(l CheckLayer, done, total int)
	// LoRAs fused into Model (fuse-lora): the reference weights get their
	// ΔW merged in full precision, and W4A16 layers their branch (see
	// lora_check.go). They must be exactly the LoRAs the file records.
	LoRAs []LoRASpec
}

// Check emulates every quantized layer of opt.Model on its calibration
// rows and reports its relative output error next to the baselines
// computed from the reference weights on the same rows (see CheckReport).
// Layers are found through the file's svdq metadata (sources map fused
// names back to the reference's tensors; svdq_calib names the rows), or,
// for a file without it, by tensor suffix and the reference's preset plan.
// Bad input (missing layers, tensors or calibration keys, wrong widths,
// NaN weights) is an error naming the file and tensor.
func Check(opt CheckOptions) (*CheckReport, *Spectrum, error) {
	f, err := openQuantized(opt.Model)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	ref, err := safetensors.OpenCheckpoint(opt.Reference)
	if err != nil {
		return nil, nil, err
	}
	defer ref.Close()
	cf, err := calib.Open(opt.Calib)
	if err != nil {
		return nil, nil, err
	}
	defer cf.Close()

	var refPlan *preset.Plan
	if f.meta == nil || f.calib == nil {
		if refPlan, err = preset.PlanFor(table{ref}, preset.Options{PassUnknown: true}); err != nil {
			return nil, nil, fmt.Errorf("%s: %v", opt.Reference, err)
		}
	}
	all, err := f.layers(refPlan)
	if err != nil {
		return nil, nil, err
	}
	var layers []fileLayer
	for _, l := range all {
		if opt.Layers == nil || opt.Layers.MatchString(l.meta.Name) {
			layers = append(layers, l)
		}
	}
	if len(layers) == 0 {
		return nil, nil, fmt.Errorf("%s: no quantized layer matches --layers %v", opt.Model, opt.Layers)
	}
	// Validate what the header tells before the slow part.
	refs := make([]CalibRef, len(layers))
	for i := range layers {
		if refs[i], err = checkCalibRef(cf, opt.Calib, &layers[i]); err != nil {
			return nil, nil, err
		}
		if len(layers[i].meta.Sources) == 0 {
			return nil, nil, fmt.Errorf("%s: layer %s has no recorded sources", opt.Model, layers[i].meta.Name)
		}
	}
	lc, err := newLoRACheck(f, opt.LoRAs) // --lora (lora_check.go)
	if err != nil {
		return nil, nil, err
	}
	c := &checker{opt: opt, f: f, ref: ref, cf: cf, layers: layers, refs: refs, lora: lc,
		rows: make([]CheckLayer, len(layers))}
	if err := c.run(); err != nil {
		return nil, nil, err
	}
	rep := &CheckReport{Layers: c.rows}
	rep.finish(opt.MaxRelError)
	if opt.Spectrum != "" && c.spectrum == nil {
		return rep, nil, fmt.Errorf("%s: --spectrum %s: no such W4A4 layer among those checked", opt.Model, opt.Spectrum)
	}
	return rep, c.spectrum, nil
}

// checkCalibRef picks the layer's calibration key and checks its width
// against the header.
func checkCalibRef(cf *calib.File, file string, l *fileLayer) (CalibRef, error) {
	for _, key := range l.calibKeys {
		k, _, _, ok := cf.Shape(key)
		if !ok {
			continue
		}
		if l.cols[1] > k || l.cols[1]-l.cols[0] != l.meta.K {
			return CalibRef{}, fmt.Errorf("%s: tensor %q: input width %d, but layer %s reads %d columns [%d:%d]",
				file, key+".input_absmax", k, l.meta.Name, l.meta.K, l.cols[0], l.cols[1])
		}
		return CalibRef{Key: key, Cols: l.cols}, nil
	}
	if len(l.calibKeys) == 0 {
		return CalibRef{}, fmt.Errorf("%s: no calibration key recorded for layer %s", file, l.meta.Name)
	}
	return CalibRef{}, fmt.Errorf("%s: no statistics for layer %s (looked for %q)", file, l.meta.Name, l.calibKeys)
}

// checker measures layers on a worker pool.
type checker struct {
	opt    CheckOptions
	f      *qfile
	ref    safetensors.Reader
	cf     *calib.File
	layers []fileLayer
	refs   []CalibRef
	lora   *loraCheck // nil without --lora

	mu       sync.Mutex
	done     int
	rows     []CheckLayer
	spectrum *Spectrum
}

func (c *checker) run() error {
	workers := c.opt.Workers
	if workers <= 0 {
		workers = DefaultWorkers()
	}
	workers = min(workers, len(c.layers))
	next := make(chan int)
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	quit := make(chan struct{})
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := c.layer(i); err != nil {
					once.Do(func() { first = err; close(quit) })
					return
				}
			}
		}()
	}
dispatch:
	for i := range c.layers {
		select {
		case next <- i:
		case <-quit:
			break dispatch
		}
	}
	close(next)
	wg.Wait()
	return first
}

// layer measures layer i and its baselines.
func (c *checker) layer(i int) error {
	l := &c.layers[i]
	lm := &l.meta
	w, bias, dt, err := readWeight(c.ref, c.opt.Reference, metaSources(lm.Sources), lm.N, lm.K)
	if err != nil {
		return err
	}
	if d, ok := dtypeOf(lm.DType); ok {
		dt = d
	}
	c.lora.merge(lm.Name, w) // --lora: reference = base + ΔW
	cal, err := loadCalib(c.cf, c.refs[i])
	if err != nil {
		return err
	}
	x, s := sampleRows(cal, lm.K, c.opt.MaxRows)
	yref := make([]float64, s*lm.N)
	quant.RefOutput(yref, x, s, lm.K, w, lm.N, nil)
	yq := make([]float32, s*lm.N)
	row := CheckLayer{Name: lm.Name, RelError: map[string]float64{}}
	var spec *Spectrum
	switch lm.Kind {
	case nunchaku.KindW4A16:
		wo, err := c.f.unpackW4A16(lm)
		if err != nil {
			return err
		}
		if wo.N != lm.N || wo.K != lm.K {
			return fmt.Errorf("%s: layer %s: stored [%d %d], reference [%d %d]", c.opt.Model, lm.Name, wo.N, wo.K, lm.N, lm.K)
		}
		wo.Forward(yq, x, s)
		if err := c.lora.addW4A16(c.f, lm, yq, x, s); err != nil { // --lora: the fused branch
			return err
		}
		row.Precision = "w4a16"
		row.RelError[MethodW4A16] = weightOnlyError(quant.QuantizeWeightOnly(w, lm.N, lm.K, bias, dt), w, bias, cal, c.opt.MaxRows)
	default:
		ql, err := c.f.unpackW4A4(lm)
		if err != nil {
			return err
		}
		if ql.N != lm.N || ql.K != lm.K {
			return fmt.Errorf("%s: layer %s: stored [%d %d], reference [%d %d]", c.opt.Model, lm.Name, ql.N, ql.K, lm.N, lm.K)
		}
		ql.Forward(yq, x, s)
		row.Precision = ql.Precision.String()
		rank := ql.R
		if rank == 0 {
			rank = -1 // no branch (0 would select the default)
		}
		base, err := quant.Baselines(quant.Input{Name: c.opt.Reference + ": " + lm.Name, W: w, N: lm.N, K: lm.K, Bias: bias},
			ql.Unsigned, cal, quant.Options{Precision: ql.Precision, Rank: rank, Search: c.opt.Search,
				DType: dt, Seed: layerSeed(lm.Name), MaxRows: c.opt.MaxRows})
		if err != nil {
			return fmt.Errorf("%s: %v", c.opt.Model, err)
		}
		for k, v := range base {
			row.RelError[k] = v
		}
		if lm.Name == c.opt.Spectrum {
			spec = &Spectrum{Layer: lm.Name, Rank: ql.R,
				Before: quant.Spectrum(w, lm.N, lm.K, nil), Smoothed: quant.Spectrum(w, lm.N, lm.K, ql.Smooth)}
		}
	}
	subtractBias(yq, bias, s)
	e := quant.RelError(yq, yref)
	if e != e {
		return fmt.Errorf("%s: layer %s: the emulated output is not finite", c.opt.Model, lm.Name)
	}
	row.RelError[MethodSVDQuant] = e
	for k, v := range row.RelError {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%s: layer %s: %s error is %v (the reference output on calibration key %q is zero or not finite)",
				c.opt.Model, lm.Name, k, v, c.refs[i].Key)
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rows[i] = row
	if spec != nil {
		c.spectrum = spec
	}
	c.done++
	if c.opt.OnLayer != nil {
		c.opt.OnLayer(row, c.done, len(c.layers))
	}
	return nil
}

// dtypeOf maps a metadata dtype name to quant's type.
func dtypeOf(s string) (quant.Float16, bool) {
	switch s {
	case "BF16":
		return quant.BF16, true
	case "F16":
		return quant.F16, true
	}
	return 0, false
}

package model

import (
	"fmt"
	"math"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	input "github.com/svdq/svdq/formats/source"
	"github.com/svdq/svdq/quant"
)

// CheckOptions configure Check.
type CheckOptions struct {
	Model     string // the quantized checkpoint
	Reference string // the 16-bit checkpoint it was made from
	Calib     string // svdq-calib/1 file
	// Layers, when set, selects the layers checked by name.
	Layers *regexp.Regexp
	// MaxRelError > 0 fails the check when a W4A4 layer's svdquant error
	// exceeds it; MaxRelErrorW4A16 > 0 likewise for weight-only layers
	// (w4a16, w4a16g128). 0: no limit.
	MaxRelError, MaxRelErrorW4A16 float64
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
//
// Before anything is measured, every checked layer's packed bytes are
// verified against the SHA-256 the metadata records (CheckLayer.Integrity).
// When one differs, nothing is measured: the report lists every checked
// layer with its integrity and no errors, CheckReport.Mismatches says
// which differ, and Passed is false.
func Check(opt CheckOptions) (*CheckReport, *Spectrum, error) {
	in, err := openCheckInputs(opt.Model, opt.Reference, opt.Calib, opt.Layers, "quantized layer", nil)
	if err != nil {
		return nil, nil, err
	}
	defer in.Close()
	lc, err := newLoRACheck(in.f, opt.LoRAs, in.loraWeight) // --lora (lora_check.go)
	if err != nil {
		return nil, nil, err
	}
	ints, err := in.verify()
	if err != nil {
		return nil, nil, err
	}
	if bad := Mismatches(ints); len(bad) > 0 {
		rep := &CheckReport{Mismatches: bad}
		for i := range in.layers {
			rep.Layers = append(rep.Layers, CheckLayer{Name: in.layers[i].meta.Name, Precision: precisionOf(&in.layers[i].meta),
				RelError: map[string]float64{}, Integrity: ints[i].Status})
		}
		rep.judge(Limits{W4A4: opt.MaxRelError, W4A16: opt.MaxRelErrorW4A16})
		return rep, nil, nil
	}
	c := &checker{opt: opt, in: in, lora: lc, ints: ints, rows: make([]CheckLayer, len(in.layers))}
	if err := c.run(); err != nil {
		return nil, nil, err
	}
	rep := &CheckReport{Layers: c.rows}
	rep.judge(Limits{W4A4: opt.MaxRelError, W4A16: opt.MaxRelErrorW4A16})
	if opt.Spectrum != "" && c.spectrum == nil {
		return rep, nil, fmt.Errorf("%s: --spectrum %s: no such W4A4 layer among those checked", opt.Model, opt.Spectrum)
	}
	return rep, c.spectrum, nil
}

// precisionOf is a layer's CheckLayer.Precision: int4, nvfp4, w4a16 or
// w4a16g128 (the weight-only kinds' names).
func precisionOf(lm *nunchaku.LayerMeta) string {
	if lm.WeightOnly() {
		return lm.Kind
	}
	return lm.Precision
}

// checkInputs are the open files of a check-like job (Check, GPUCheck)
// and the layers it measures with their calibration references.
type checkInputs struct {
	model, reference, calib string
	f                       *qfile
	ref                     safetensors.Reader
	cf                      *calib.File
	layers                  []fileLayer
	refs                    []CalibRef // by layer
}

// openCheckInputs opens the quantized file, its reference checkpoint and
// the calibration file, lists the quantized layers whose names match re
// (nil: all) and for which keep (nil: all) is true, and validates what the
// headers tell before the slow part: each layer's calibration key and
// width, and its recorded sources (present in the reference, their shapes
// and ranges fitting the layer). what names the layers in the error when
// none is selected.
func openCheckInputs(model, reference, calibPath string, re *regexp.Regexp, what string, keep func(*nunchaku.LayerMeta) bool) (_ *checkInputs, err error) {
	in := &checkInputs{model: model, reference: reference, calib: calibPath}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	if in.f, err = openQuantized(model); err != nil {
		return nil, err
	}
	ref, err := input.Open(reference) // GGUF, all-in-one, scaled FP8: as quantize read it
	if err != nil {
		return nil, err
	}
	in.ref = ref
	if in.cf, err = calib.Open(calibPath); err != nil {
		return nil, err
	}
	// The reference's plan gives a layer the calibration keys quantize
	// looks for; it is required only when the file does not record them.
	refPlan, err := preset.PlanFor(table{in.ref}, preset.Options{PassUnknown: true, AllowMissingBias: true})
	if err != nil {
		if in.f.meta == nil || in.f.calib == nil {
			return nil, fmt.Errorf("%s: %v", reference, err)
		}
		refPlan = nil
	}
	all, err := in.f.layers(refPlan)
	if err != nil {
		return nil, err
	}
	other := map[string]int{} // kinds of the matching layers keep refused
	for _, l := range all {
		if re != nil && !re.MatchString(l.meta.Name) {
			continue
		}
		if keep != nil && !keep(&l.meta) {
			other[l.meta.Kind]++
			continue
		}
		in.layers = append(in.layers, l)
	}
	if len(in.layers) == 0 {
		if len(other) == 0 {
			return nil, fmt.Errorf("%s: no %s matches --layers %v", model, what, re)
		}
		var kinds []string
		for k, n := range other {
			kinds = append(kinds, fmt.Sprintf("%d %s", n, k))
		}
		sort.Strings(kinds)
		where := "its quantized layers are"
		if re != nil {
			where = fmt.Sprintf("the layers matching --layers %v are", re)
		}
		return nil, fmt.Errorf("%s: no %s: %s %s, which this command does not run", model, what, where, strings.Join(kinds, ", "))
	}
	in.refs = make([]CalibRef, len(in.layers))
	for i := range in.layers {
		if in.refs[i], err = checkCalibRef(in.cf, calibPath, in.ref, &in.layers[i]); err != nil {
			return nil, err
		}
		lm := &in.layers[i].meta
		if len(lm.Sources) == 0 {
			return nil, fmt.Errorf("%s: layer %s has no recorded sources", model, lm.Name)
		}
		if err := checkSources(in.ref, reference, metaSources(lm.Sources), lm.N, lm.K); err != nil {
			return nil, err
		}
	}
	return in, nil
}

// Close closes the files opened so far.
func (in *checkInputs) Close() {
	if in.f != nil {
		in.f.Close()
	}
	if in.ref != nil {
		in.ref.Close()
	}
	if in.cf != nil {
		in.cf.Close()
	}
}

// verify checks the recorded hashes of the selected layers.
func (in *checkInputs) verify() ([]LayerIntegrity, error) {
	lms := make([]*nunchaku.LayerMeta, len(in.layers))
	for i := range in.layers {
		lms[i] = &in.layers[i].meta
	}
	return in.f.verify(lms)
}

// referenceWeight assembles layer i's weight W [N, K] and bias [N] (nil
// when the reference has none) from the reference checkpoint, and its
// model dtype (the metadata's, else the reference tensor's).
func (in *checkInputs) referenceWeight(lm *nunchaku.LayerMeta) (w, bias []float32, dt quant.Float16, err error) {
	w, bias, dt, err = readWeight(in.ref, in.reference, metaSources(lm.Sources), lm.N, lm.K)
	if err != nil {
		return nil, nil, 0, err
	}
	if d, ok := dtypeOf(lm.DType); ok {
		dt = d
	}
	return w, bias, dt, nil
}

// checkCalibRef picks the layer's calibration key as quantize does
// (findCalib): the key svdq_calib records, then the reference plan's keys
// of the layer (diffusers names, then BFL names), the width checked
// against the reference's source tensor when it has it.
func checkCalibRef(cf *calib.File, file string, ref safetensors.Reader, l *fileLayer) (CalibRef, error) {
	width := 0
	if len(l.meta.Sources) > 0 {
		if info, ok := ref.Info(l.meta.Sources[0].Tensor); ok {
			if _, w, err := matrixShape(info); err == nil {
				width = w
			}
		}
	}
	return findCalib(cf, file, l.meta.Name, l.meta.K, width, l.calib...)
}

// checker measures layers on a worker pool.
type checker struct {
	opt  CheckOptions
	in   *checkInputs
	lora *loraCheck       // nil without --lora
	ints []LayerIntegrity // by layer

	mu       sync.Mutex
	done     int
	rows     []CheckLayer
	spectrum *Spectrum
}

// run measures every layer on opt.Workers goroutines; the error of the
// earliest failing layer (in report order) is returned.
func (c *checker) run() error {
	workers := c.opt.Workers
	if workers <= 0 {
		workers = DefaultWorkers()
	}
	return forEach(len(c.in.layers), workers, c.layer)
}

// layer measures layer i and its baselines.
func (c *checker) layer(i int) error {
	lm := &c.in.layers[i].meta
	w, bias, dt, err := c.in.referenceWeight(lm)
	if err != nil {
		return err
	}
	c.lora.merge(lm.Name, w) // --lora: reference = base + ΔW
	bias = c.lora.mergeBias(lm.Name, bias, lm.N)
	cal, err := loadCalib(c.in.cf, c.in.refs[i])
	if err != nil {
		return err
	}
	x, s := sampleRows(cal, lm.K, c.opt.MaxRows)
	yref := make([]float64, s*lm.N)
	quant.RefOutput(yref, x, s, lm.K, w, lm.N, nil)
	yq := make([]float32, s*lm.N)
	row := CheckLayer{Name: lm.Name, RelError: map[string]float64{}, Integrity: c.ints[i].Status}
	var spec *Spectrum
	switch lm.Kind {
	case nunchaku.KindW4A16:
		wo, err := c.in.f.unpackW4A16(lm)
		if err == nil {
			err = c.sameShape(lm, wo.N, wo.K)
		}
		if err != nil {
			return err
		}
		wo.Forward(yq, x, s)
		if err := c.lora.addW4A16(c.in.f, lm, yq, x, s); err != nil { // --lora: the fused branch
			return err
		}
		row.Precision = "w4a16"
		row.RelError[MethodW4A16] = weightOnlyError(quant.QuantizeWeightOnly(w, lm.N, lm.K, bias, dt), w, bias, cal, c.opt.MaxRows)
	case nunchaku.KindW4A16G128:
		wo, err := c.in.f.unpackW4Linear(lm)
		if err == nil {
			err = c.sameShape(lm, wo.N, wo.K)
		}
		if err != nil {
			return err
		}
		wo.Forward(yq, x, s)
		row.Precision = nunchaku.KindW4A16G128
		// The baseline: round-to-nearest on the same grid (group 128).
		row.RelError[MethodW4A16] = weightOnlyError(quant.QuantizeWeightOnlyGroup(w, lm.N, lm.K, lm.Group, bias, dt), w, bias, cal, c.opt.MaxRows)
	default:
		ql, err := c.in.f.unpackW4A4(lm)
		if err == nil {
			err = c.sameShape(lm, ql.N, ql.K)
		}
		if err != nil {
			return err
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
				c.opt.Model, lm.Name, k, v, c.in.refs[i].Key)
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
		c.opt.OnLayer(row, c.done, len(c.in.layers))
	}
	return nil
}

// sameShape checks a stored layer's logical [n, k] against the
// reference's.
func (c *checker) sameShape(lm *nunchaku.LayerMeta, n, k int) error {
	if n != lm.N || k != lm.K {
		return fmt.Errorf("%s: layer %s: stored [%d %d], reference [%d %d]", c.opt.Model, lm.Name, n, k, lm.N, lm.K)
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

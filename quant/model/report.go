package model

import (
	"slices"
	"sort"
)

// Method keys of a check report's rel_error map, in the order tables and
// plots show them. Svdquant is the checkpoint's own layer (whatever its
// form, W4A4 or W4A16); the others are baselines recomputed from the
// reference weights on the same calibration rows (quant.Baselines).
const (
	MethodSVDQuant      = "svdquant"
	MethodSVDQuantPlain = "svdquant_plain"
	MethodNaive         = "naive_w4a4"
	MethodSmoothQuant   = "smoothquant_w4a4"
	MethodLowRank       = "lowrank_w4a4"
	MethodW4A16         = "w4a16"
)

// Methods lists every method key in display order.
var Methods = []string{MethodSVDQuant, MethodSVDQuantPlain, MethodNaive, MethodSmoothQuant, MethodLowRank, MethodW4A16}

// CheckLayer is one layer of a check report: the relative output error
// ‖Y_q − Y‖_F / ‖Y‖_F of each method on the layer's calibration rows.
// Precision is "int4", "nvfp4" or "w4a16" (a weight-only adaLN layer, whose
// rel_error holds only svdquant, its own error, and the w4a16 baseline).
//
// Integrity is the layer's packed bytes against the hash recorded when the
// file was written: IntegrityOK, IntegrityMismatch (the layer was not
// measured: RelError is empty) or IntegrityAbsent (no hash recorded).
type CheckLayer struct {
	Name      string             `json:"name"`
	Precision string             `json:"precision"`
	RelError  map[string]float64 `json:"rel_error"`
	Integrity string             `json:"integrity"`
}

// Worst names the layer with the largest svdquant error.
type Worst struct {
	Name     string  `json:"name"`
	RelError float64 `json:"rel_error"`
}

// CheckReport is the result of Check; its JSON form is what `svdq check
// --json` prints.
//
// A report with Mismatches (layers whose packed bytes differ from their
// record) measured nothing and does not pass.
type CheckReport struct {
	Layers []CheckLayer `json:"layers"`
	Worst  Worst        `json:"worst"`
	Passed bool         `json:"passed"`
	// Mismatches details the layers whose Integrity is IntegrityMismatch
	// (both hashes), in the file's layer order; the JSON form carries only each
	// layer's "integrity".
	Mismatches []LayerIntegrity `json:"-"`
}

// MeanErrors returns, per method key, the mean error over the layers of
// the given precisions ("" : every layer) that report it, and the number of
// layers each mean covers. Means of W4A4 layers (int4, nvfp4) and of W4A16
// layers are best kept apart: the latter report only two keys.
func (r *CheckReport) MeanErrors(precisions ...string) (mean map[string]float64, count map[string]int) {
	mean, count = map[string]float64{}, map[string]int{}
	for _, l := range r.Layers {
		if len(precisions) > 0 && !slices.Contains(precisions, l.Precision) {
			continue
		}
		for k, v := range l.RelError {
			mean[k] += v
			count[k]++
		}
	}
	for k := range mean {
		mean[k] /= float64(count[k])
	}
	return mean, count
}

// finish fills Worst (among the measured layers) and Passed (no integrity
// mismatch, and every layer's svdquant error ≤ maxErr; a maxErr ≤ 0 means
// no threshold) and sorts layers by name.
func (r *CheckReport) finish(maxErr float64) {
	sort.Slice(r.Layers, func(i, j int) bool { return r.Layers[i].Name < r.Layers[j].Name })
	r.Worst = Worst{}
	r.Passed = len(r.Mismatches) == 0
	for _, l := range r.Layers {
		if l.Integrity == IntegrityMismatch {
			r.Passed = false
		}
		e, ok := l.RelError[MethodSVDQuant]
		if !ok {
			continue
		}
		if r.Worst.Name == "" || e > r.Worst.RelError || e != e {
			r.Worst = Worst{Name: l.Name, RelError: e}
		}
		if maxErr > 0 && !(e <= maxErr) {
			r.Passed = false
		}
	}
}

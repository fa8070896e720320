package model

import (
	"slices"
	"sort"

	"github.com/svdq/svdq/formats/nunchaku"
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
// Worst and Passed cover every layer; Kinds gives the verdict per kind of
// layer, each against its own limit (W4A4 and weight-only layers sit at
// errors an order of magnitude apart). A report with Mismatches (layers
// whose packed bytes differ from their record) measured nothing and does
// not pass.
type CheckReport struct {
	Layers []CheckLayer `json:"layers"`
	Worst  Worst        `json:"worst"`
	Passed bool         `json:"passed"`
	Kinds  []KindResult `json:"kinds"`
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

// Kinds of layer a check judges apart, each with its own limit.
const (
	KindW4A4  = "w4a4"  // SVDQuant layers: int4, nvfp4
	KindW4A16 = "w4a16" // weight-only layers: w4a16 (adaLN), w4a16g128 (T5)
)

// KindOf returns the kind (KindW4A4 or KindW4A16) of a CheckLayer
// precision.
func KindOf(precision string) string {
	if precision == "w4a16" || precision == nunchaku.KindW4A16G128 {
		return KindW4A16
	}
	return KindW4A4
}

// KindResult is the verdict on the layers of one kind.
type KindResult struct {
	Kind   string  `json:"kind"`   // KindW4A4 or KindW4A16
	Layers int     `json:"layers"` // layers of this kind in the report
	Worst  Worst   `json:"worst"`  // among the measured ones
	Limit  float64 `json:"limit"`  // the svdquant error allowed; 0: no limit
	Over   int     `json:"over"`   // measured layers above Limit
	Passed bool    `json:"passed"` // no layer above Limit, none mismatched
}

// Limits are the largest svdquant errors a check allows, per kind; 0 means
// no limit.
type Limits struct {
	W4A4, W4A16 float64
}

func (l Limits) of(kind string) float64 {
	if kind == KindW4A16 {
		return l.W4A16
	}
	return l.W4A4
}

// finish is judge with a limit on W4A4 layers only.
func (r *CheckReport) finish(maxW4A4 float64) { r.judge(Limits{W4A4: maxW4A4}) }

// judge fills Kinds (in the order w4a4, w4a16; a kind without layers is
// left out), Worst (among all the measured layers) and Passed (no
// integrity mismatch, and every layer's svdquant error within the limit of
// its kind) and sorts layers by name.
func (r *CheckReport) judge(lim Limits) {
	sort.Slice(r.Layers, func(i, j int) bool { return r.Layers[i].Name < r.Layers[j].Name })
	r.Worst = Worst{}
	r.Passed = len(r.Mismatches) == 0
	r.Kinds = nil
	for _, kind := range []string{KindW4A4, KindW4A16} {
		k := KindResult{Kind: kind, Limit: lim.of(kind), Passed: true}
		for _, l := range r.Layers {
			if KindOf(l.Precision) != kind {
				continue
			}
			k.Layers++
			if l.Integrity == IntegrityMismatch {
				k.Passed = false
			}
			e, ok := l.RelError[MethodSVDQuant]
			if !ok {
				continue
			}
			if k.Worst.Name == "" || e > k.Worst.RelError || e != e {
				k.Worst = Worst{Name: l.Name, RelError: e}
			}
			if r.Worst.Name == "" || e > r.Worst.RelError || e != e {
				r.Worst = Worst{Name: l.Name, RelError: e}
			}
			if k.Limit > 0 && !(e <= k.Limit) {
				k.Over++
				k.Passed = false
			}
		}
		if k.Layers > 0 {
			r.Kinds = append(r.Kinds, k)
			r.Passed = r.Passed && k.Passed
		}
	}
}

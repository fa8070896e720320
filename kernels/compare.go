package kernels

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// Tolerance says how closely the GPU must agree with quant.Layer.Forward.
// Both compute the same integer products, the same 16-bit accumulator and
// the same activation codes; they differ only in the order of the FP32 sums
// of the low-rank branch, which can move a value across a 16-bit rounding
// boundary (of the output, or of a low-rank activation before the up
// projection). An element matches when
//
//	|got − want| ≤ ULPs·ulp16(|want|) + RMSFrac·rms(want)
//
// where ulp16 is the spacing of the model dtype at |want| and rms is taken
// over all outputs compared (it covers outputs near zero after cancellation).
type Tolerance struct {
	ULPs    float64
	RMSFrac float64
}

// Tolerances is the one table of GPU-versus-emulation tolerances.
var Tolerances = map[quant.Float16]Tolerance{
	quant.BF16: {ULPs: 2, RMSFrac: 0x1p-9},
	quant.F16:  {ULPs: 2, RMSFrac: 0x1p-12},
}

// Diff summarises a comparison of GPU outputs with reference outputs.
type Diff struct {
	N          int     // elements compared
	MaxAbs     float64 // max |got − want|
	RMS        float64 // rms of want
	RelFro     float64 // ‖got − want‖ / ‖want‖
	Mismatches int     // elements outside the tolerance (NaN included)
	Worst      int     // index of the element furthest outside (or closest to) its tolerance
	WorstGot   float32
	WorstWant  float32
}

// OK reports whether every element matched.
func (d Diff) OK() bool { return d.Mismatches == 0 }

func (d Diff) String() string {
	return fmt.Sprintf("max|Δ| %.3g (rms %.3g), rel %.3g, %d/%d outside tolerance (worst [%d] %g vs %g)",
		d.MaxAbs, d.RMS, d.RelFro, d.Mismatches, d.N, d.Worst, d.WorstGot, d.WorstWant)
}

// ulp16 is the spacing of dtype dt at magnitude a (subnormal spacing below).
func ulp16(dt quant.Float16, a float64) float64 {
	man, emin := 7, -126
	if dt == quant.F16 {
		man, emin = 10, -14
	}
	_, e := math.Frexp(a) // a = f·2^e, f in [0.5, 1)
	e--
	if a == 0 || e < emin {
		e = emin
	}
	return math.Ldexp(1, e-man)
}

// Compare compares got with want (same length) under Tolerances[dt].
func Compare(got, want []float32, dt quant.Float16) Diff {
	if len(got) != len(want) {
		panic(fmt.Sprintf("kernels: Compare lengths %d and %d", len(got), len(want)))
	}
	tol := Tolerances[dt]
	d := Diff{N: len(want), Worst: -1}
	var sw, sd float64
	for _, w := range want {
		sw += float64(w) * float64(w)
	}
	if d.N > 0 {
		d.RMS = math.Sqrt(sw / float64(d.N))
	}
	worst := math.Inf(-1)
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		diff := math.Abs(g - w)
		if g != g || w != w {
			diff = math.Inf(1)
		}
		sd += diff * diff
		d.MaxAbs = math.Max(d.MaxAbs, diff)
		lim := tol.ULPs*ulp16(dt, math.Abs(w)) + tol.RMSFrac*d.RMS
		if !(diff <= lim) {
			d.Mismatches++
		}
		if r := diff / lim; r > worst || d.Worst < 0 {
			worst, d.Worst, d.WorstGot, d.WorstWant = r, i, got[i], want[i]
		}
	}
	if sw > 0 {
		d.RelFro = math.Sqrt(sd / sw)
	} else if sd > 0 {
		d.RelFro = math.Inf(1)
	}
	return d
}

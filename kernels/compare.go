package kernels

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// Tolerance says how closely the GPU must agree with quant.Layer.Forward.
// Both compute the same integer products, the same 16-bit accumulator, the
// same activation codes and the same 16-bit epilogue; they differ only in
// the order of the FP32 sums of the low-rank branch. The down-projection
// sums a_r may then round to neighbouring 16-bit values before the up
// projection, and the output may cross a 16-bit rounding boundary. An
// element matches when
//
//	|got − want| ≤ ULPs·ulp16(|want|) + LowRank·slack
//
// where ulp16 is the spacing of the model dtype and slack is LowRankSlack's
// bound Σ_r (ulp16(|a_r|) + 2⁻¹⁸·|a_r|)·|up[n,r]| (0 without a branch).
type Tolerance struct {
	ULPs    float64
	LowRank float64
}

// Tolerances is the one table of GPU-versus-emulation tolerances.
var Tolerances = map[quant.Float16]Tolerance{
	quant.BF16: {ULPs: 2, LowRank: 1},
	quant.F16:  {ULPs: 2, LowRank: 1},
}

// LowRankSlack returns the [m, N] slack of Tolerance for layer l on the m
// rows of x [m, K]: a_r = Σ_k round16(x_k)·Down[r,k] in FP32, then
// Σ_r (ulp16(|a_r|) + 2⁻¹⁸·|a_r|)·|Up[n,r]|. It panics if x is too short.
func LowRankSlack(l *quant.Layer, x []float32, m int) []float32 {
	if len(x) < m*l.K {
		panic("kernels: LowRankSlack: x too short")
	}
	slack := make([]float32, m*l.N)
	x16 := make([]float32, l.K)
	a := make([]float64, l.R)
	for i := 0; i < m; i++ {
		for k := range x16 {
			x16[k] = l.DType.Round(x[i*l.K+k])
		}
		for r := range a {
			var s float32
			for k, v := range x16 {
				s += v * l.Down[r*l.K+k]
			}
			s = float32(math.Abs(float64(s)))
			a[r] = ulp16(l.DType, float64(s)) + 0x1p-18*float64(s)
		}
		for n := 0; n < l.N; n++ {
			var s float64
			for r, ar := range a {
				s += ar * math.Abs(float64(l.Up[n*l.R+r]))
			}
			slack[i*l.N+n] = float32(s)
		}
	}
	return slack
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

// Compare compares got with want under Tolerances[dt]; slack (nil: zeros)
// is LowRankSlack's bound for each element. The slices have equal lengths.
func Compare(got, want, slack []float32, dt quant.Float16) Diff {
	if len(got) != len(want) || slack != nil && len(slack) != len(want) {
		panic(fmt.Sprintf("kernels: Compare lengths %d, %d, %d", len(got), len(want), len(slack)))
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
		lim := tol.ULPs * ulp16(dt, math.Abs(w))
		if slack != nil {
			lim += tol.LowRank * float64(slack[i])
		}
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

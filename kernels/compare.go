package kernels

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// Tolerance says how closely a GPU run must agree with quant.Layer.Forward
// (see Verify). Both compute the same integer products, the same 16-bit
// accumulator, the same activation codes and the same 16-bit epilogue;
// only the FP32 sums of the low-rank branch run in another order. Verify
// therefore checks the GPU's down-projection sums against the emulation's
// within the FP32 bound of any summation order, and builds the expected
// output from the emulation's 16-bit main path (products, scales, bias)
// and the GPU's own down-projection sums rounded to 16 bits, summed in
// float64 and rounded once. It then requires
//
//	|got − want| ≤ ULPs·ulp16(|want|) + UpSlack·(R+2)·2⁻²⁴·(|acc| + Σ_r |a_r·up[n,r]|)
//
// where ulp16 is the spacing of the model dtype (the output may cross one
// rounding boundary) and the last term bounds the FP32 order of the up
// projection.
type Tolerance struct {
	ULPs    float64
	UpSlack float64
}

// Tolerances is the one table of GPU-versus-emulation tolerances.
var Tolerances = map[quant.Float16]Tolerance{
	quant.BF16: {ULPs: 2, UpSlack: 1},
	quant.F16:  {ULPs: 2, UpSlack: 1},
}

// Verify compares a GPU result (variant Fused, Unfused or Reference) of the
// layer whose emulation is ql on the rows x [m, K] with ql.Forward:
//
//  1. each down-projection sum a_r the GPU computed must lie within
//     2·K·2⁻²⁴·Σ_k|x_k·Down[r,k]| of the emulation's (the FP32 error bound of
//     two summation orders; the products are exact), and padded ranks must
//     be 0 — else Diff.LowRankMismatches counts it;
//  2. the expected output is round16(acc + Σ_r round16(a_r^gpu)·up[n,r]),
//     acc the emulation's 16-bit main path with the bias (ql.Forward
//     without the branch) and the sum in float64: a sum a_r near a 16-bit
//     rounding boundary may round the other way on the GPU, and the output
//     must follow it. Correcting the emulation's rounded output instead is
//     not enough: where acc and the branch cancel, the emulation's rounding
//     happened at the magnitude of its own sum, which can be far above the
//     output's. The result is compared under Tolerances.
func Verify(ql *quant.Layer, x []float32, m int, res *Result) Diff {
	if len(x) < m*ql.K || res.M != m || len(res.Y) != m*ql.N {
		panic("kernels: Verify: sizes of x or res do not match the layer")
	}
	dt, k, r := ql.DType, ql.K, ql.R
	main := *ql
	main.R, main.Up, main.Down = 0, nil, nil
	want := make([]float32, m*ql.N)
	main.Forward(want, x, m) // 16-bit: products, scales, bias
	var full []float32
	if dt == quant.F16 && r > 0 {
		// An FP16 accumulator that overflowed is clamped in main's output
		// but stays ±Inf under the branch: keep the whole emulation there.
		full = make([]float32, m*ql.N)
		ql.Forward(full, x, m)
	}
	slack := make([]float32, m*ql.N)
	rs := 0
	if r > 0 {
		if res.LowRank == nil || len(res.LowRank)%m != 0 || len(res.LowRank)/m < r {
			panic("kernels: Verify: the result has no low-rank activations for a layer with a branch")
		}
		rs = len(res.LowRank) / m
	}
	lrBad := 0
	x16 := make([]float32, k)
	a16 := make([]float64, r)
	for i := 0; i < m; i++ {
		for j := range x16 {
			x16[j] = dt.Round(x[i*k+j])
		}
		for q := 0; q < rs; q++ {
			g := res.LowRank[i*rs+q]
			if q >= r {
				if g != 0 {
					lrBad++
				}
				continue
			}
			var e float32
			var abs float64
			for j, v := range x16 {
				t := v * ql.Down[q*k+j]
				e += t
				abs += math.Abs(float64(t))
			}
			if !(math.Abs(float64(g)-float64(e)) <= 2*float64(k)*0x1p-24*abs) {
				lrBad++
			}
			a16[q] = float64(dt.Round(g))
		}
		for n := 0; n < ql.N; n++ {
			acc := float64(want[i*ql.N+n])
			if r == 0 {
				continue
			}
			if full != nil && math.Abs(acc) >= 65504 {
				want[i*ql.N+n] = full[i*ql.N+n]
				continue
			}
			up := ql.Up[n*r : (n+1)*r]
			sum, abs := acc, math.Abs(acc)
			for q, u := range up {
				sum += a16[q] * float64(u)
				abs += math.Abs(a16[q] * float64(u))
			}
			y := dt.Round(float32(sum))
			if dt == quant.F16 {
				y = max(-65504, min(65504, y))
			}
			want[i*ql.N+n] = y
			slack[i*ql.N+n] = float32(float64(r+2) * 0x1p-24 * abs)
		}
	}
	d := Compare(res.Y, want, slack, dt)
	d.LowRankMismatches = lrBad
	return d
}

// Diff summarises a comparison of GPU outputs with reference outputs.
type Diff struct {
	N          int     // elements compared
	MaxAbs     float64 // max |got − want|
	RMS        float64 // rms of want
	RelFro     float64 // ‖got − want‖ / ‖want‖
	Mismatches int     // elements outside the tolerance (NaN included)
	// LowRankMismatches counts the GPU's down-projection sums outside
	// their FP32 bound (Verify only).
	LowRankMismatches int
	Worst             int // index of the element furthest outside (or closest to) its tolerance
	WorstGot          float32
	WorstWant         float32
}

// OK reports whether every element matched.
func (d Diff) OK() bool { return d.Mismatches == 0 && d.LowRankMismatches == 0 }

func (d Diff) String() string {
	return fmt.Sprintf("max|Δ| %.3g (rms %.3g), rel %.3g, %d/%d outside tolerance, %d low-rank sums off (worst [%d] %g vs %g)",
		d.MaxAbs, d.RMS, d.RelFro, d.Mismatches, d.N, d.LowRankMismatches, d.Worst, d.WorstGot, d.WorstWant)
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

// Compare compares got with want element by element: |got − want| ≤
// Tolerances[dt].ULPs·ulp16(|want|) + Tolerances[dt].UpSlack·slack (slack
// nil: zeros). The slices have equal lengths.
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
			lim += tol.UpSlack * float64(slack[i])
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

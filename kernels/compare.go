package kernels

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// Tolerance says how closely a GPU run must agree with quant.Layer.Forward
// (see Verify):
//
//	|got − want| ≤ ULPs·ulp16(|want|) + UpSlack·(R+2)·2⁻²⁴·(|want| + 2·Σ_r |a_r·up[n,r]|)
//
// where ulp16 is the spacing of the model dtype and the last term bounds the
// FP32 order of the up projection (|want| + Σ_r |a_r·up[n,r]| bounds the
// 16-bit accumulator).
type Tolerance struct {
	ULPs    float64
	UpSlack float64
}

// Tolerances is the one table of GPU-versus-emulation tolerances, by the
// kernels that ran. The tensor-core kernels (Fused, Unfused, NoLowRank)
// compute what the emulation computes, bit for bit, once the emulation is
// given the GPU's down-projection sums: the same integer products, 16-bit
// accumulator, activation codes (rcp.approx), h2div (__fdividef) and
// tensor-core accumulation of the up projection (quant's mmaK16), measured
// on an H100 (scripts/hw-probe.cu; gpu-check 2026-12-07: 14155776 of
// 14155776 outputs, INT4 and NVFP4, BF16 and FP16). Their tolerance is 0.
// Reference (cuda/gemm_ref.cuh) adds the up projection with scalar fmaf in
// rank order instead of the tensor cores: 2 ulps plus the FP32-order bound.
var Tolerances = map[Variant]Tolerance{
	Fused:     {},
	Unfused:   {},
	NoLowRank: {},
	Reference: {ULPs: 2, UpSlack: 1},
}

// Verify compares a GPU result (variant Fused, Unfused or Reference) of the
// layer whose emulation is ql on the rows x [m, K] with the emulation:
//
//  1. each down-projection sum a_r the GPU computed must lie within
//     2·K·2⁻²⁴·Σ_k|x_k·Down[r,k]| of the emulation's (the FP32 error bound of
//     two summation orders; the products are exact), and padded ranks must
//     be 0 — else Diff.LowRankMismatches counts it;
//  2. the expected output is ql.ForwardLoRA on the GPU's sums: a sum near a
//     16-bit rounding boundary may round the other way on the GPU, and the
//     output must follow it. (Correcting the emulation's rounded output by
//     the difference is not enough: where the main path and the branch
//     cancel, the emulation rounded at the magnitude of its own sum, far
//     above the output's.) The result is compared under
//     Tolerances[res.Variant].
func Verify(ql *quant.Layer, x []float32, m int, res *Result) Diff {
	if len(x) < m*ql.K || res.M != m || len(res.Y) != m*ql.N {
		panic("kernels: Verify: sizes of x or res do not match the layer")
	}
	dt, k, r := ql.DType, ql.K, ql.R
	want := make([]float32, m*ql.N)
	if r == 0 {
		ql.Forward(want, x, m)
		return Compare(res.Y, want, nil, dt, Tolerances[res.Variant])
	}
	if res.LowRank == nil || len(res.LowRank)%m != 0 || len(res.LowRank)/m < r {
		panic("kernels: Verify: the result has no low-rank activations for a layer with a branch")
	}
	rs := len(res.LowRank) / m
	ql.ForwardLoRA(want, x, m, res.LowRank, rs)
	slack := make([]float32, m*ql.N)
	lrBad := 0
	x16 := make([]float32, k)
	a16 := make([]float64, r)
	for i := 0; i < m; i++ {
		for j := range x16 {
			x16[j] = dt.Round(x[i*k+j])
		}
		for q, g := range res.LowRank[i*rs : (i+1)*rs] {
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
			var abs float64
			for q, u := range ql.Up[n*r : (n+1)*r] {
				abs += math.Abs(a16[q] * float64(u))
			}
			slack[i*ql.N+n] = float32(float64(r+2) * 0x1p-24 * (math.Abs(float64(want[i*ql.N+n])) + 2*abs))
		}
	}
	d := Compare(res.Y, want, slack, dt, Tolerances[res.Variant])
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
	Exact      int     // elements equal to the emulation's (bit for bit but for the sign of zero)
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
// tol.ULPs·ulp16(|want|) + tol.UpSlack·slack (slack nil: zeros). The slices
// have equal lengths.
func Compare(got, want, slack []float32, dt quant.Float16, tol Tolerance) Diff {
	if len(got) != len(want) || slack != nil && len(slack) != len(want) {
		panic(fmt.Sprintf("kernels: Compare lengths %d, %d, %d", len(got), len(want), len(slack)))
	}
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
		if g == w || g != g && w != w {
			d.Exact++
		}
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

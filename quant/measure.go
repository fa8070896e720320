package quant

import (
	"fmt"
	"math"

	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
)

// Error measures (svdquant.md, "Error measures"): the float64 reference
// output of a linear layer and the relative Frobenius error of a quantized
// output against it.

// RefOutput computes Y = X·Wᵀ + b in float64 for x [m, k] and w [n, k] into
// the caller's y [m, n]; bias [n] may be nil. W is widened to float64 a block
// of 256 rows at a time (gonum blas64, which runs in parallel). It panics
// when a slice is too short.
func RefOutput(y []float64, x []float32, m, k int, w []float32, n int, bias []float32) {
	if m < 0 || n < 0 || k < 0 || len(y) < m*n || len(x) < m*k || len(w) < n*k || (bias != nil && len(bias) < n) {
		panic(fmt.Sprintf("quant: RefOutput: y %d, x %d, w %d, bias %d values for m=%d n=%d k=%d",
			len(y), len(x), len(w), len(bias), m, n, k))
	}
	if m == 0 || n == 0 {
		return
	}
	if k == 0 {
		clear(y[:m*n])
	} else {
		x64 := make([]float64, m*k)
		for i, v := range x[:m*k] {
			x64[i] = float64(v)
		}
		const block = 256
		wb := make([]float64, min(block, n)*k)
		for r0 := 0; r0 < n; r0 += block {
			rb := min(block, n-r0)
			for i, v := range w[r0*k : (r0+rb)*k] {
				wb[i] = float64(v)
			}
			blas64.Gemm(blas.NoTrans, blas.Trans, 1,
				blas64.General{Rows: m, Cols: k, Stride: k, Data: x64},
				blas64.General{Rows: rb, Cols: k, Stride: k, Data: wb[:rb*k]},
				0, blas64.General{Rows: m, Cols: rb, Stride: n, Data: y[r0:]})
		}
	}
	if bias != nil {
		for i := 0; i < m; i++ {
			for j, b := range bias[:n] {
				y[i*n+j] += float64(b)
			}
		}
	}
}

// RelError returns ‖Yq − Y‖_F / ‖Y‖_F for yq and yref of the same length
// (accumulated in float64). It returns 0 when both are all zero, +Inf when
// only yref is, and NaN when yq holds a NaN. It panics when the lengths
// differ.
func RelError(yq []float32, yref []float64) float64 {
	if len(yq) != len(yref) {
		panic(fmt.Sprintf("quant: RelError: %d quantized values against %d reference values", len(yq), len(yref)))
	}
	var num, den float64
	for i, r := range yref {
		d := float64(yq[i]) - r
		num += d * d
		den += r * r
	}
	switch {
	case num != num:
		return math.NaN()
	case num == 0:
		return 0
	case den == 0:
		return math.Inf(1)
	}
	return math.Sqrt(num / den)
}

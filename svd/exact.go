package svd

import (
	"fmt"

	"gonum.org/v1/gonum/mat"
)

// Exact returns the rank-r truncation of the thin SVD of the [m, n] row-major
// matrix a, computed by gonum's mat.SVD in float64 (a is not modified). On
// return U is [m, r], S holds the r largest singular values in descending
// order and Vt is [r, n]; U and V have orthonormal columns to float32
// precision. It is slow (pure Go bidiagonal QR iteration, O(m·n·min(m, n)))
// and exists to verify Randomized. Panics with an "svd:" prefix unless
// 1 ≤ r ≤ min(m, n) and len(a) ≥ m·n, or if gonum's iteration fails to
// converge (a holds NaN or Inf).
func Exact(a []float32, m, n, r int) *Truncated {
	checkSVD("Exact", a, m, n, r)
	d := mat.NewDense(m, n, widen(a[:m*n]))
	var f mat.SVD
	if !f.Factorize(d, mat.SVDThin) {
		panic("svd: Exact: gonum SVD did not converge (does the matrix hold NaN or Inf?)")
	}
	s := f.Values(nil)
	var u, v mat.Dense
	f.UTo(&u) // [m, min(m, n)]
	f.VTo(&v) // [n, min(m, n)]
	t := &Truncated{M: m, N: n, R: r, U: make([]float32, m*r), S: s[:r:r], Vt: make([]float32, r*n)}
	for i := 0; i < m; i++ {
		for j := 0; j < r; j++ {
			t.U[i*r+j] = float32(u.At(i, j))
		}
	}
	for j := 0; j < r; j++ {
		for i := 0; i < n; i++ {
			t.Vt[j*n+i] = float32(v.At(i, j))
		}
	}
	return t
}

// checkSVD panics unless a holds an [m, n] matrix and 1 ≤ r ≤ min(m, n).
func checkSVD(fn string, a []float32, m, n, r int) {
	if m < 1 || n < 1 {
		panic(fmt.Sprintf("svd: %s of an empty or negative [%d, %d] matrix", fn, m, n))
	}
	if r < 1 || r > min(m, n) {
		panic(fmt.Sprintf("svd: %s: rank %d outside 1..%d for a [%d, %d] matrix", fn, r, min(m, n), m, n))
	}
	if len(a) < m*n {
		panic(fmt.Sprintf("svd: %s: [%d, %d] matrix needs %d values, slice has %d", fn, m, n, m*n, len(a)))
	}
}

// widen returns a float64 copy of s.
func widen(s []float32) []float64 {
	d := make([]float64, len(s))
	for i, v := range s {
		d[i] = float64(v)
	}
	return d
}

package svd

import "runtime"

// Gemm computes C = alpha·op(A)·op(B) + beta·C in float32 with the same
// shapes and conventions as GemmRef: op(A) is [m, k] (A stored [m, k] with
// row stride lda, or [k, m] when transA), op(B) is [k, n] (B stored [k, n]
// with stride ldb, or [n, k] when transB), C is [m, n] with stride ldc.
//
// It is blocked for the caches (BLIS-style: kc-deep passes; op(B) packed in
// nc-wide blocks shared by all workers; op(A) read in place or packed per
// worker in row blocks), runs on runtime.GOMAXPROCS(0) goroutines when the
// product is large enough, computes Cᵀ = op(B)ᵀ·op(A)ᵀ instead when that is
// cheaper (narrow C, transposes), and uses the fastest micro-kernel of the
// CPU (KernelName). Results match GemmRef within float32 accumulation error:
// each element is a float32 sum over k in order, so
// |C − C_ref| ≲ k·2⁻²⁴·Σ_p |alpha·op(A)_ip·op(B)_pj|.
// When beta is 0, C is not read (NaNs in C do not propagate); when alpha is 0
// or k is 0, A and B are not read and C = beta·C. C must not overlap A or B.
// Panics with an "svd:" prefix on inconsistent sizes.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(c, m, n, ldc, beta)
		return
	}
	g := gemmProblem{transA, transB, m, n, k, alpha, beta, a, lda, b, ldb, c, ldc, 1}
	kern := g.plan(activeSet.Load())
	if g.cs == 1 {
		g.run(kern, runtime.GOMAXPROCS(0))
		return
	}
	// Cᵀ is computed into a row-major temporary T [n, m] and added to C in
	// one transposing pass: C = alpha·Tᵀ + beta·C.
	t := getBuf(m * n)
	defer putBuf(t)
	g.alpha, g.beta, g.c, g.rs, g.cs = 1, 0, *t, m, 1
	g.run(kern, runtime.GOMAXPROCS(0))
	addTransposed(c, ldc, *t, m, n, alpha, beta)
}

// addTransposed sets C = alpha·Tᵀ + beta·C for C [m, n] (stride ldc) and T
// [n, m] row-major, in 32×32 blocks; C is not read when beta is 0.
func addTransposed(c []float32, ldc int, t []float32, m, n int, alpha, beta float32) {
	const bs = 32
	for i0 := 0; i0 < m; i0 += bs {
		i1 := min(i0+bs, m)
		for j0 := 0; j0 < n; j0 += bs {
			j1 := min(j0+bs, n)
			for i := i0; i < i1; i++ {
				row := c[i*ldc+j0 : i*ldc+j1]
				if beta == 0 {
					for j := range row {
						row[j] = alpha * t[(j0+j)*m+i]
					}
				} else {
					for j := range row {
						row[j] = alpha*t[(j0+j)*m+i] + beta*row[j]
					}
				}
			}
		}
	}
}

// scaleC sets C = beta·C for the [m, n] matrix C with stride ldc (C is not
// read when beta is 0).
func scaleC(c []float32, m, n, ldc int, beta float32) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		switch beta {
		case 0:
			clear(row)
		case 1:
		default:
			for j := range row {
				row[j] *= beta
			}
		}
	}
}

// gemmProblem is one Gemm call: C[i, j] (at c[i·rs + j·cs]) =
// alpha·Σ_p op(A)[i, p]·op(B)[p, j] + beta·C[i, j].
type gemmProblem struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	c              []float32
	rs, cs         int
}

// transposed returns the same product written as Cᵀ = op(B)ᵀ·op(A)ᵀ.
func (g gemmProblem) transposed() gemmProblem {
	return gemmProblem{
		transA: !g.transB, transB: !g.transA,
		m: g.n, n: g.m, k: g.k,
		alpha: g.alpha, beta: g.beta,
		a: g.b, lda: g.ldb,
		b: g.a, ldb: g.lda,
		c: g.c, rs: g.cs, cs: g.rs,
	}
}

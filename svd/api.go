package svd

// This file declares the package's public entry points. Until the fast
// implementations land, Gemm falls back to GemmRef and the decompositions
// panic; the signatures are the contract other packages code against.

// Gemm computes C = alpha·op(A)·op(B) + beta·C in float32 (same shapes and
// conventions as GemmRef), blocked for cache, parallel over the cores, with
// a SIMD micro-kernel where the CPU has one. Results match GemmRef within
// float32 accumulation error. When beta is 0, C is not read (NaNs in C do not
// propagate). Panics with an "svd:" prefix on inconsistent sizes.
var Gemm = GemmRef

// Truncated is a rank-R factorisation A ≈ U·diag(S)·Vt of an [M, N] matrix.
// U [M, R] and Vt [R, N] are row-major; S is descending.
type Truncated struct {
	M, N, R int
	U       []float32
	S       []float64
	Vt      []float32
}

// RandOptions tunes Randomized. Zero values select the defaults.
type RandOptions struct {
	Oversample int    // extra basis vectors beyond R (default 8)
	PowerIters int    // subspace (power) iterations (default 2)
	Seed       uint64 // seed of the Gaussian test matrix
	// Warm, when non-nil, is an [N, R+Oversample] row-major basis used as the
	// start of the subspace iteration instead of a Gaussian test matrix (the
	// previous smoothing candidate's right basis is an excellent start).
	Warm []float32
}

// Randomized returns a rank-r truncated SVD of the [m, n] row-major matrix a
// (a is not modified). With the default options the residual energy
// ‖A − U·S·Vt‖_F² is within 1% of the optimal Σ_{i>r} σ_i² on the matrices
// SVDQuant meets. The returned Truncated also carries, in Basis, the
// [n, r+oversample] right basis to warm-start the next call.
func Randomized(a []float32, m, n, r int, opt RandOptions) (t *Truncated, basis []float32) {
	panic("svd: Randomized not implemented yet")
}

// Exact returns the full thin SVD of the [m, n] matrix a through gonum's
// mat.SVD in float64, truncated to rank r (r ≤ min(m, n)). It is slow (pure
// Go QR iteration) and exists to verify Randomized.
func Exact(a []float32, m, n, r int) *Truncated {
	panic("svd: Exact not implemented yet")
}

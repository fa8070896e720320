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
	Oversample int    // extra basis vectors beyond R (0: default 16)
	PowerIters int    // subspace (power) iterations (0: default 3; negative: none)
	Seed       uint64 // seed of the Gaussian test matrix
	// Warm, when non-nil, is an [N, L] row-major basis, L = min(R+Oversample,
	// M, N), used as the start of the subspace iteration instead of a
	// Gaussian test matrix (the previous smoothing candidate's right basis,
	// as returned by Randomized, is an excellent start).
	Warm []float32
}

package svd

// Truncated is a rank-R factorisation A ≈ U·diag(S)·Vt of an [M, N] matrix.
// U [M, R] and Vt [R, N] are row-major; S is descending.
type Truncated struct {
	M, N, R int
	U       []float32
	S       []float64
	Vt      []float32
}

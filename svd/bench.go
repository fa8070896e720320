package svd

import (
	"math/rand/v2"
	"time"

	"gonum.org/v1/gonum/mat"
)

// GemmFLOPS returns the rate, in GFLOP/s, of an m×n×k matrix product
// (2·m·n·k floating-point operations) that took d.
func GemmFLOPS(m, n, k int, d time.Duration) float64 {
	return 2 * float64(m) * float64(n) * float64(k) / d.Seconds() / 1e9
}

// BenchGemm measures Gemm on C [m, n] = A [m, k]·B [k, n] (no transposes,
// beta 0, random data) with the current kernel and returns the best rate in
// GFLOP/s over repeated calls lasting at least minTime in total (at least
// two calls; the first warms the caches and buffers and is not counted).
// It allocates the three matrices; it is meant for `svdq bench cpu`.
func BenchGemm(m, n, k int, minTime time.Duration) (gflops float64) {
	a, b, c := benchMats(m, n, k)
	return bestRate(m, n, k, minTime, func() {
		Gemm(false, false, m, n, k, 1, a, k, b, n, 0, c, n)
	})
}

// BenchGonumDgemm is BenchGemm for gonum's float64 mat.Dense.Mul (the pure
// Go BLAS, for comparison).
func BenchGonumDgemm(m, n, k int, minTime time.Duration) (gflops float64) {
	a, b, _ := benchMats(m, n, k)
	da := mat.NewDense(m, k, widen(a))
	db := mat.NewDense(k, n, widen(b))
	dc := mat.NewDense(m, n, nil)
	return bestRate(m, n, k, minTime, func() { dc.Mul(da, db) })
}

// benchMats returns random A [m, k], B [k, n] and an uninitialised C [m, n].
func benchMats(m, n, k int) (a, b, c []float32) {
	rng := rand.New(rand.NewPCG(1, 2))
	a = make([]float32, m*k)
	b = make([]float32, k*n)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	for i := range b {
		b[i] = float32(rng.NormFloat64())
	}
	return a, b, make([]float32, m*n)
}

// bestRate runs f once to warm up, then repeatedly until minTime has passed
// (at least once more), and returns the best rate in GFLOP/s.
func bestRate(m, n, k int, minTime time.Duration, f func()) float64 {
	f()
	var best time.Duration
	for start := time.Now(); best == 0 || time.Since(start) < minTime; {
		t0 := time.Now()
		f()
		if d := time.Since(t0); best == 0 || d < best {
			best = max(d, time.Nanosecond)
		}
	}
	return GemmFLOPS(m, n, k, best)
}

// BenchRandomized measures Randomized with the default options on a random
// weight-like [m, n] matrix (Gaussian with a few 10–40× outlier columns) at
// rank r, and returns the best time of repeated calls lasting at least
// minTime in total (after one warm-up call). It allocates the matrix.
func BenchRandomized(m, n, r int, minTime time.Duration) (best time.Duration) {
	rng := rand.New(rand.NewPCG(3, 4))
	a := make([]float32, m*n)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	for range 8 {
		j, f := rng.IntN(n), float32(10+30*rng.Float64())
		for i := 0; i < m; i++ {
			a[i*n+j] *= f
		}
	}
	f := func() { Randomized(a, m, n, r, RandOptions{Seed: 1}) }
	f()
	for start := time.Now(); best == 0 || time.Since(start) < minTime; {
		t0 := time.Now()
		f()
		if d := time.Since(t0); best == 0 || d < best {
			best = max(d, time.Nanosecond)
		}
	}
	return best
}

//go:build openblas && cgo

package openblas

import (
	"math/rand/v2"
	"time"
)

// mats returns random A [m, k], B [k, n] and an uninitialised C [m, n].
func mats(m, n, k int) (a, b, c []float32) {
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

// bestRate runs f once to warm up, then until minTime has passed (at least
// once more), and returns the best rate in GFLOP/s.
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
	return 2 * float64(m) * float64(n) * float64(k) / best.Seconds() / 1e9
}

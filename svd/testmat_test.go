package svd

import (
	"math"
	"math/rand/v2"
	"testing"
)

// Test matrices: deterministic functions of (m, n, seed).

func testRNG(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x7e57)) }

// gaussMat returns an [m, n] matrix of standard normal values.
func gaussMat(m, n int, seed uint64) []float32 {
	rng := testRNG(seed)
	a := make([]float32, m*n)
	for i := range a {
		a[i] = float32(rng.NormFloat64())
	}
	return a
}

// orthoCols returns an [m, k] float64 matrix with orthonormal columns
// (Gram–Schmidt, twice, on Gaussian columns).
func orthoCols(m, k int, rng *rand.Rand) []float64 {
	q := make([]float64, m*k)
	for i := range q {
		q[i] = rng.NormFloat64()
	}
	for j := 0; j < k; j++ {
		for range 2 {
			for p := 0; p < j; p++ {
				var d float64
				for i := 0; i < m; i++ {
					d += q[i*k+j] * q[i*k+p]
				}
				for i := 0; i < m; i++ {
					q[i*k+j] -= d * q[i*k+p]
				}
			}
		}
		var nn float64
		for i := 0; i < m; i++ {
			nn += q[i*k+j] * q[i*k+j]
		}
		nn = math.Sqrt(nn)
		for i := 0; i < m; i++ {
			q[i*k+j] /= nn
		}
	}
	return q
}

// spectrumMat returns U·diag(sigma)·Vᵀ [m, n] with random orthonormal U, V.
func spectrumMat(m, n int, sigma []float64, seed uint64) []float32 {
	rng := testRNG(seed)
	k := len(sigma)
	u := orthoCols(m, k, rng)
	v := orthoCols(n, k, rng)
	a := make([]float32, m*n)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				s += u[i*k+p] * sigma[p] * v[j*k+p]
			}
			a[i*n+j] = float32(s)
		}
	}
	return a
}

// spikedMat is a few large rank-one spikes plus Gaussian noise.
func spikedMat(m, n int, seed uint64) []float32 {
	a := spectrumMat(m, n, []float64{400, 250, 160, 90, 60, 40}, seed)
	noise := gaussMat(m, n, seed+1)
	for i := range a {
		a[i] += noise[i]
	}
	return a
}

// decayMat has the slowly decaying spectrum σ_i = 10/√i (full rank).
func decayMat(m, n int, seed uint64) []float32 {
	sigma := make([]float64, min(m, n))
	for i := range sigma {
		sigma[i] = 10 / math.Sqrt(float64(i+1))
	}
	return spectrumMat(m, n, sigma, seed)
}

// outlierMat looks like a smoothed weight: Gaussian entries with a few input
// columns (channels) scaled up by 10–40×.
func outlierMat(m, n int, seed uint64) []float32 {
	a := gaussMat(m, n, seed)
	rng := testRNG(seed + 2)
	for c := 0; c < 8; c++ {
		j := rng.IntN(n)
		f := float32(10 + 30*rng.Float64())
		for i := 0; i < m; i++ {
			a[i*n+j] *= f
		}
	}
	return a
}

// frob2 returns ‖a‖_F² in float64.
func frob2(a []float32) float64 {
	var s float64
	for _, v := range a {
		s += float64(v) * float64(v)
	}
	return s
}

// residual2 returns ‖A − U·diag(S)·Vt‖_F² in float64.
func residual2(a []float32, t *Truncated) float64 {
	var e float64
	for i := 0; i < t.M; i++ {
		for j := 0; j < t.N; j++ {
			var s float64
			for p := 0; p < t.R; p++ {
				s += float64(t.U[i*t.R+p]) * t.S[p] * float64(t.Vt[p*t.N+j])
			}
			d := float64(a[i*t.N+j]) - s
			e += d * d
		}
	}
	return e
}

// orthoErr returns max |XᵀX − I| over the k columns of the [rows, k] matrix
// x given with element stride (rs, cs).
func orthoErr(x []float32, rows, k, rs, cs int) float64 {
	var worst float64
	for p := 0; p < k; p++ {
		for q := p; q < k; q++ {
			var d float64
			for i := 0; i < rows; i++ {
				d += float64(x[i*rs+p*cs]) * float64(x[i*rs+q*cs])
			}
			if p == q {
				d--
			}
			worst = max(worst, math.Abs(d))
		}
	}
	return worst
}

// checkFactors fails t unless U [M, R] and V [N, R] are orthonormal and S is
// non-negative and descending.
func checkFactors(t *testing.T, name string, f *Truncated) {
	t.Helper()
	const tol = 1e-5
	if e := orthoErr(f.U, f.M, f.R, f.R, 1); e > tol {
		t.Errorf("%s: U not orthonormal: max |UᵀU−I| = %.3g", name, e)
	}
	if e := orthoErr(f.Vt, f.N, f.R, 1, f.N); e > tol {
		t.Errorf("%s: V not orthonormal: max |VᵀV−I| = %.3g", name, e)
	}
	for i, s := range f.S {
		if s < 0 || (i > 0 && s > f.S[i-1]) {
			t.Errorf("%s: S not non-negative descending: %v", name, f.S)
			break
		}
	}
}

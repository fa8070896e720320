package lora

import (
	"math"
	"math/rand/v2"
	"testing"
)

// TestTruncateHand: ΔW = diag(3, 2, 1) padded to [3, 4] has ‖ΔW‖² = 14;
// energy 0.9 needs 13/14 (rank 2), 0.95 all 14 (rank 3); rank 1 keeps 9/14
// with error √(5/14); on the rows e₁ the error is 0, on e₃ it is 1.
func TestTruncateHand(t *testing.T) {
	d := []float64{
		3, 0, 0, 0,
		0, 2, 0, 0,
		0, 0, 1, 0,
	}
	for _, c := range []struct {
		opt    TruncOptions
		rank   int
		energy float64
	}{
		{TruncOptions{Energy: 0.9}, 2, 13.0 / 14},
		{TruncOptions{Energy: 0.95}, 3, 1},
		{TruncOptions{Energy: 9.0 / 14}, 1, 9.0 / 14},
		{TruncOptions{Rank: 1}, 1, 9.0 / 14},
		{TruncOptions{Rank: 9}, 3, 1},
	} {
		b, e := Truncate(d, 3, 4, c.opt)
		if b.R != c.rank || math.Abs(e-c.energy) > 1e-6 {
			t.Errorf("%+v: rank %d energy %v, want %d and %v", c.opt, b.R, e, c.rank, c.energy)
		}
	}
	b, _ := Truncate(d, 3, 4, TruncOptions{Rank: 1})
	if got, want := TruncError(d, b, nil, 0), math.Sqrt(5.0/14); math.Abs(got-want) > 1e-6 {
		t.Errorf("weight error %v, want %v", got, want)
	}
	e1 := []float32{1, 0, 0, 0}
	e3 := []float32{0, 0, 1, 0}
	if got := TruncError(d, b, e1, 1); got > 1e-6 {
		t.Errorf("error on e1 %v, want 0", got)
	}
	if got := TruncError(d, b, e3, 1); math.Abs(got-1) > 1e-6 {
		t.Errorf("error on e3 %v, want 1", got)
	}
	if z, e := Truncate(make([]float64, 12), 3, 4, TruncOptions{Rank: 2}); z.R != 0 || e != 1 {
		t.Errorf("zero ΔW: rank %d energy %v", z.R, e)
	}
}

// TestTruncateRandomized: a [640, 600] ΔW (past the exact SVD's size) with
// singular values 2^-i, i < 12, on random orthonormal directions: the
// randomized path finds the energy rank the spectrum dictates and the
// error √(1 − energy).
func TestTruncateRandomized(t *testing.T) {
	const n, k, r = 640, 600, 12
	rng := rand.New(rand.NewPCG(3, 3))
	u := orthonormal(rng, n, r)
	v := orthonormal(rng, k, r)
	d := make([]float64, n*k)
	total := 0.0
	for j := 0; j < r; j++ {
		s := math.Pow(2, -float64(j))
		total += s * s
		for i := 0; i < n; i++ {
			for l := 0; l < k; l++ {
				d[i*k+l] += s * u[i*r+j] * v[l*r+j]
			}
		}
	}
	// Σ_{j<3} 4^-j = 1.3125 of 4/3·(1−4^-12): energy 0.98 needs rank 3.
	want := 0
	acc := 0.0
	for j := 0; j < r; j++ {
		acc += math.Pow(4, -float64(j))
		if acc >= 0.98*total {
			want = j + 1
			break
		}
	}
	b, e := Truncate(d, n, k, TruncOptions{Energy: 0.98})
	if b.R != want || math.Abs(e-acc/total) > 1e-4 {
		t.Errorf("rank %d energy %v, want %d and %v", b.R, e, want, acc/total)
	}
	if got, wantErr := TruncError(d, b, nil, 0), math.Sqrt(1-acc/total); math.Abs(got-wantErr) > 1e-3 {
		t.Errorf("error %v, want %v", got, wantErr)
	}
}

// orthonormal returns n×r Gram–Schmidt-orthonormalised Gaussian columns
// (row-major).
func orthonormal(rng *rand.Rand, n, r int) []float64 {
	q := make([]float64, n*r)
	for i := range q {
		q[i] = rng.NormFloat64()
	}
	for j := 0; j < r; j++ {
		for p := 0; p < j; p++ {
			dot := 0.0
			for i := 0; i < n; i++ {
				dot += q[i*r+j] * q[i*r+p]
			}
			for i := 0; i < n; i++ {
				q[i*r+j] -= dot * q[i*r+p]
			}
		}
		norm := 0.0
		for i := 0; i < n; i++ {
			norm += q[i*r+j] * q[i*r+j]
		}
		norm = math.Sqrt(norm)
		for i := 0; i < n; i++ {
			q[i*r+j] /= norm
		}
	}
	return q
}

// TestExactBranch: both orientations reproduce ΔW's float32 values exactly.
func TestExactBranch(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	for _, s := range [][2]int{{3, 5}, {5, 3}, {4, 4}} {
		d := make([]float64, s[0]*s[1])
		for i := range d {
			d[i] = rng.NormFloat64()
		}
		b := ExactBranch(d, s[0], s[1])
		if b.R != min(s[0], s[1]) {
			t.Errorf("%v: rank %d", s, b.R)
		}
		for i, v := range b.Delta() {
			if v != float64(float32(d[i])) {
				t.Fatalf("%v: [%d] %v, want %v", s, i, v, float32(d[i]))
			}
		}
	}
}

func TestTruncOptions(t *testing.T) {
	for _, o := range []TruncOptions{{Rank: -1}, {Rank: 2, Energy: 0.5}, {Energy: 1.5}, {Energy: -0.1}, {Energy: math.NaN()}} {
		if o.Validate() == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	if (TruncOptions{Energy: 1}).Validate() != nil || (TruncOptions{Rank: 3}).Validate() != nil {
		t.Error("valid options refused")
	}
}

// BenchmarkTruncate3072 truncates a FLUX-sized [3072, 3072] ΔW (a rank-64
// part holding ~95% of the energy, plus Gaussian noise) at energy 0.9:
// the randomized path, rank doubled from 32.
func BenchmarkTruncate3072(b *testing.B) { benchTruncate(b, 3072, 3072, 64, TruncOptions{Energy: 0.9}) }

// BenchmarkTruncate3072Rank64 is the same at --delta-rank 64.
func BenchmarkTruncate3072Rank64(b *testing.B) {
	benchTruncate(b, 3072, 3072, 64, TruncOptions{Rank: 64})
}

func benchTruncate(b *testing.B, n, k, r int, opt TruncOptions) {
	rng := rand.New(rand.NewPCG(5, 5))
	u, v := make([]float64, n*r), make([]float64, r*k)
	for i := range u {
		u[i] = rng.NormFloat64()
	}
	for i := range v {
		v[i] = rng.NormFloat64()
	}
	d := matmul(u, v, n, r, k)
	for i := range d {
		d[i] = d[i]/float64(r) + 0.02*rng.NormFloat64()
	}
	b.ResetTimer()
	for range b.N {
		br, e := Truncate(d, n, k, opt)
		b.ReportMetric(float64(br.R), "rank")
		b.ReportMetric(e, "energy")
	}
}

// BenchmarkTruncError measures the error of a rank-64 branch of a FLUX
// MLP-down-sized [3072, 12288] ΔW on 256 calibration rows.
func BenchmarkTruncError(b *testing.B) {
	const n, k, r, m = 3072, 12288, 64, 256
	rng := rand.New(rand.NewPCG(6, 6))
	d := make([]float64, n*k)
	for i := range d {
		d[i] = rng.NormFloat64()
	}
	br := &Branch{N: n, K: k, R: r, Down: make([]float32, r*k), Up: make([]float32, n*r)}
	for i := range br.Down {
		br.Down[i] = float32(rng.NormFloat64())
	}
	for i := range br.Up {
		br.Up[i] = float32(rng.NormFloat64())
	}
	x := make([]float32, m*k)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	b.ResetTimer()
	for range b.N {
		TruncError(d, br, x, m)
	}
}

package svd

import (
	"os"
	"testing"
	"time"

	"gonum.org/v1/gonum/mat"
)

// benchGemm measures Gemm on C [m, n] = op(A)·op(B) with the given
// transposes; it reports GFLOP/s.
func benchGemm(b *testing.B, transA, transB bool, m, n, k int) {
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	x := gaussMat(ar, ac, 1)
	y := gaussMat(br, bc, 2)
	c := make([]float32, m*n)
	t0 := cpuTime()
	for b.Loop() {
		Gemm(transA, transB, m, n, k, 1, x, ac, y, bc, 0, c, n)
	}
	flops := 2 * float64(m) * float64(n) * float64(k) * float64(b.N)
	b.ReportMetric(flops/b.Elapsed().Seconds()/1e9, "GFLOP/s")
	if d := cpuTime() - t0; d > 0 {
		// Work per CPU-second of this process: what one core delivers,
		// far less disturbed than wall time by other load on the machine.
		b.ReportMetric(flops/d.Seconds()/1e9, "GFLOP/CPU-s")
	}
}

func BenchmarkGemm3072(b *testing.B)          { benchGemm(b, false, false, 3072, 3072, 3072) }
func BenchmarkGemm256x3072x3072(b *testing.B) { benchGemm(b, false, true, 256, 3072, 3072) }
func BenchmarkGemmTallSkinny(b *testing.B)    { benchGemm(b, false, false, 3072, 40, 12288) }
func BenchmarkGemmTallSkinnyT(b *testing.B)   { benchGemm(b, true, false, 12288, 40, 3072) }
func BenchmarkGemmLowRank(b *testing.B)       { benchGemm(b, false, false, 3072, 3072, 32) }

// BenchmarkGonumDgemm3072 is gonum's float64 mat.Dense.Mul, for comparison.
func BenchmarkGonumDgemm3072(b *testing.B) {
	const n = 3072
	x := mat.NewDense(n, n, widen(gaussMat(n, n, 1)))
	y := mat.NewDense(n, n, widen(gaussMat(n, n, 2)))
	var c mat.Dense
	for b.Loop() {
		c.Mul(x, y)
	}
	b.ReportMetric(2*n*n*n*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

// benchRandomized measures Randomized on a weight-like [m, n] matrix
// (Gaussian with outlier columns) at rank r with the default options, or
// warm-started from the previous call's basis with one power iteration.
func benchRandomized(b *testing.B, m, n, r int, warm bool) {
	a := outlierMat(m, n, 1)
	opt := RandOptions{Seed: 1}
	if warm {
		_, opt.Warm = Randomized(a, m, n, r, opt)
		opt.PowerIters = 1
	}
	for b.Loop() {
		Randomized(a, m, n, r, opt)
	}
}

func BenchmarkRandomized3072x12288R32(b *testing.B)     { benchRandomized(b, 3072, 12288, 32, false) }
func BenchmarkRandomized3072x12288R32Warm(b *testing.B) { benchRandomized(b, 3072, 12288, 32, true) }
func BenchmarkRandomized3072x3072R32(b *testing.B)      { benchRandomized(b, 3072, 3072, 32, false) }

// benchExact measures Exact on an [m, n] matrix at rank 32.
func benchExact(b *testing.B, m, n int) {
	a := outlierMat(m, n, 1)
	for b.Loop() {
		Exact(a, m, n, 32)
	}
}

// BenchmarkExact runs at 512×1024 (seconds); the full 3072×12288 size
// takes minutes in gonum and runs only with SVDQ_BENCH_FULL=1.
func BenchmarkExact(b *testing.B) { benchExact(b, 512, 1024) }

func BenchmarkExact3072x12288(b *testing.B) {
	if os.Getenv("SVDQ_BENCH_FULL") == "" {
		b.Skip("set SVDQ_BENCH_FULL=1 (gonum takes minutes at this size)")
	}
	benchExact(b, 3072, 12288)
}

// TestBenchFuncs checks that the exported measurement helpers run and
// return a positive rate, and that GemmFLOPS does the arithmetic.
func TestBenchFuncs(t *testing.T) {
	if g := BenchGemm(64, 48, 32, time.Millisecond); !(g > 0) {
		t.Errorf("BenchGemm = %g", g)
	}
	if g := BenchGonumDgemm(64, 48, 32, time.Millisecond); !(g > 0) {
		t.Errorf("BenchGonumDgemm = %g", g)
	}
	if d := BenchRandomized(60, 80, 4, time.Millisecond); !(d > 0) {
		t.Errorf("BenchRandomized = %v", d)
	}
	if g := GemmFLOPS(1000, 1000, 1000, time.Second); g != 2 {
		t.Errorf("GemmFLOPS(1000³, 1 s) = %g, want 2", g)
	}
}

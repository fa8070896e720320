package openblas

import (
	"testing"
	"time"
)

// BenchmarkOpenBLAS3072 reports OpenBLAS sgemm at 3072³ (go test -tags openblas).
func BenchmarkOpenBLAS3072(b *testing.B) {
	if !BuiltIn {
		b.Skip("build with -tags openblas")
	}
	b.ReportMetric(Bench(3072, 3072, 3072, time.Second), "GFLOP/s")
}

func TestBench(t *testing.T) {
	if !BuiltIn {
		if Bench(8, 8, 8, 0) != 0 {
			t.Errorf("Bench without OpenBLAS returned nonzero")
		}
		t.Skip("build with -tags openblas")
	}
	if g := Bench(64, 64, 64, time.Millisecond); !(g > 0) {
		t.Errorf("Bench(64, 64, 64) = %g GFLOP/s", g)
	}
}

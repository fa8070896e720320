package synth

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// benchFill measures weight generation for one [n, k] tensor.
func benchFill(b *testing.B, fill func([]byte, uint64, string, int, []float32), n, k int) {
	col := make([]float32, k)
	for i := range col {
		col[i] = 1
	}
	dst := make([]byte, 2*n*k)
	b.SetBytes(int64(len(dst)))
	for b.Loop() {
		fill(dst, 1, "w", n, col)
	}
}

func BenchmarkFillLinear3072(b *testing.B) { benchFill(b, fillLinear, 3072, 3072) }
func BenchmarkFillHeavy3072(b *testing.B)  { benchFill(b, fillHeavy, 3072, 3072) }

// TestFullWidth generates FLUX.1-dev at full width with one double and two
// single blocks when SVDQ_SYNTH_FULL is set (about 1 GB on disk), to check
// speed and memory by hand: SVDQ_SYNTH_FULL=1 go test -run FullWidth -v.
func TestFullWidth(t *testing.T) {
	if os.Getenv("SVDQ_SYNTH_FULL") == "" {
		t.Skip("set SVDQ_SYNTH_FULL=1")
	}
	start := time.Now()
	dir := gen(t, Options{Arch: "flux-dev", Blocks: 1, Seed: 1, Samples: 256})
	st, err := os.Stat(filepath.Join(dir, ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d MB in %v", st.Size()>>20, time.Since(start))
}

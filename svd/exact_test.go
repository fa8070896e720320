package svd

import (
	"math"
	"testing"
)

func TestExactKnownSpectrum(t *testing.T) {
	sigma := []float64{9, 7, 5, 3, 2, 1, 0.5, 0.25}
	for _, sz := range [][2]int{{40, 30}, {30, 40}, {8, 8}} {
		m, n := sz[0], sz[1]
		a := spectrumMat(m, n, sigma, 1)
		for _, r := range []int{1, 3, 8} {
			f := Exact(a, m, n, r)
			if f.M != m || f.N != n || f.R != r || len(f.U) != m*r || len(f.S) != r || len(f.Vt) != r*n {
				t.Fatalf("[%d, %d] r=%d: wrong shapes %+v", m, n, r, f)
			}
			checkFactors(t, "Exact", f)
			for i := 0; i < r; i++ {
				if math.Abs(f.S[i]-sigma[i]) > 1e-5*sigma[0] {
					t.Errorf("[%d, %d] r=%d: S[%d] = %.7g, want %g", m, n, r, i, f.S[i], sigma[i])
				}
			}
			var tail float64
			for _, s := range sigma[r:] {
				tail += s * s
			}
			if e := residual2(a, f); math.Abs(e-tail) > 1e-5*frob2(a) {
				t.Errorf("[%d, %d] r=%d: residual %.7g, want %.7g", m, n, r, e, tail)
			}
		}
	}
}

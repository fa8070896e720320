package quant

import (
	"math"
	"testing"

	"github.com/svdq/svdq/svd"
)

func TestSpectrum(t *testing.T) {
	for _, p := range synthPatterns {
		sc := newSynth(p, 192, 160, 8, 1, false)
		lam := make([]float32, sc.in.K)
		SmoothVector(lam, activationStat(sc.c.AbsMax, 0), weightAbsMax([]Input{sc.in}), plainCandidate, BF16)
		got := Spectrum(sc.in.W, sc.in.N, sc.in.K, lam)
		if len(got) != SpectrumRank {
			t.Fatalf("%v: %d values, want %d", sc, len(got), SpectrumRank)
		}
		a := make([]float32, len(sc.in.W))
		smoothWeight(a, sc.in.W, sc.in.N, sc.in.K, lam)
		want := svd.Exact(a, sc.in.N, sc.in.K, 32)
		for i := 0; i < 32; i++ {
			if math.Abs(got[i]-want.S[i]) > 0.01*want.S[i] {
				t.Errorf("%v: σ_%d = %.5g, exact %.5g", sc, i, got[i], want.S[i])
			}
			if i > 0 && got[i] > got[i-1] {
				t.Errorf("%v: spectrum not descending at %d", sc, i)
			}
		}
	}
}

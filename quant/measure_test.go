package quant

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestRelError(t *testing.T) {
	for _, tc := range []struct {
		yq   []float32
		yref []float64
		want float64
	}{
		{[]float32{3, 5}, []float64{3, 4}, 0.2},
		{[]float32{1, 2}, []float64{1, 2}, 0},
		{[]float32{0, 0}, []float64{0, 0}, 0},
		{[]float32{0, 1}, []float64{0, 0}, math.Inf(1)},
		{[]float32{0, -4}, []float64{3, 0}, 5.0 / 3},
	} {
		if got := RelError(tc.yq, tc.yref); math.Abs(got-tc.want) > 1e-15 && got != tc.want {
			t.Errorf("RelError(%v, %v) = %v, want %v", tc.yq, tc.yref, got, tc.want)
		}
	}
	if got := RelError([]float32{float32(math.NaN())}, []float64{1}); got == got {
		t.Errorf("NaN output gave %v", got)
	}
	mustPanic(t, "quant: RelError", func() { RelError(make([]float32, 2), make([]float64, 3)) })
}

func TestRefOutput(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	const m, k, n = 3, 7, 300 // n spans two blocks of 256 output rows
	x, w, b := make([]float32, m*k), make([]float32, n*k), make([]float32, n)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	for i := range w {
		w[i] = float32(rng.NormFloat64())
	}
	for i := range b {
		b[i] = float32(rng.NormFloat64())
	}
	for _, bias := range [][]float32{nil, b} {
		y := make([]float64, m*n)
		for i := range y {
			y[i] = math.NaN() // must be overwritten
		}
		RefOutput(y, x, m, k, w, n, bias)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				var want float64
				for p := 0; p < k; p++ {
					want += float64(x[i*k+p]) * float64(w[j*k+p])
				}
				if bias != nil {
					want += float64(bias[j])
				}
				if got := y[i*n+j]; math.Abs(got-want) > 1e-12*(1+math.Abs(want)) {
					t.Fatalf("y[%d,%d] = %v, want %v", i, j, got, want)
				}
			}
		}
	}
	// y = [[1·1 + 2·3 + 0.5]] by hand.
	y := make([]float64, 1)
	RefOutput(y, []float32{1, 2}, 1, 2, []float32{1, 3}, 1, []float32{0.5})
	if y[0] != 7.5 {
		t.Errorf("hand example %v, want 7.5", y[0])
	}
	mustPanic(t, "quant: RefOutput", func() { RefOutput(make([]float64, 2), x, m, k, w, n, nil) })
}

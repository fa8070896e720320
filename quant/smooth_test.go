package quant

import (
	"math"
	"testing"
)

func TestSmoothCandidates(t *testing.T) {
	c := SmoothCandidates()
	if len(c) != 39 {
		t.Fatalf("%d candidates, want 39", len(c))
	}
	if c[0] != (SmoothCandidate{0, 0}) {
		t.Errorf("first candidate %v, want (0, 0)", c[0])
	}
	for i := 1; i < 20; i++ {
		a := float64(i) / 20
		if c[i] != (SmoothCandidate{a, 0}) {
			t.Errorf("candidate %d = %v, want (%v, 0)", i, c[i], a)
		}
		if c[19+i] != (SmoothCandidate{a, 1 - a}) {
			t.Errorf("candidate %d = %v, want (%v, %v)", 19+i, c[19+i], a, 1-a)
		}
	}
}

func TestSmoothVector(t *testing.T) {
	tiny := 1e-40 // subnormal in float32
	ax := []float64{4, 0, 9, tiny, 100, 1e30, 2}
	aw := []float64{0.25, 1, 0, 1, 1e-3, 1e-30, math.Inf(1)}
	cases := []struct {
		c    SmoothCandidate
		dt   Float16
		want []float64
	}{
		{SmoothCandidate{0, 0}, BF16, []float64{1, 1, 1, 1, 1, 1, 1}},
		// (α, 0): ax^α; dead activations give 1.
		{SmoothCandidate{0.5, 0}, BF16, []float64{2, 1, 3, 1, 10, 1e15, math.Sqrt2}},
		// (α, 1−α): dead weight columns give 1 as well; 1e30/1e-30 clamps to 2^64.
		{SmoothCandidate{0.5, 0.5}, BF16, []float64{4, 1, 1, 1, math.Sqrt(1e5), 0x1p64, 1}},
		{SmoothCandidate{0.5, 0.5}, F16, []float64{4, 1, 1, 1, math.Sqrt(1e5), 0x1p14, 1}},
	}
	for _, tc := range cases {
		lam := make([]float32, len(ax))
		SmoothVector(lam, ax, aw, tc.c, tc.dt)
		for j, w := range tc.want {
			if want := tc.dt.Round(float32(w)); lam[j] != want {
				t.Errorf("%v %v: λ[%d] = %v, want %v", tc.c, tc.dt, j, lam[j], want)
			}
		}
	}
}

// TestSmoothVectorF16Overflow: in fp16 the kernel's x/λ must stay finite.
func TestSmoothVectorF16Overflow(t *testing.T) {
	ax, aw := []float64{1e4}, []float64{10}
	c := SmoothCandidate{0.05, 0.95} // λ = 1e4^0.05/10^0.95 ≈ 0.178: x/λ ≈ 56000
	lam := make([]float32, 1)
	SmoothVector(lam, ax, aw, c, BF16)
	if want := BF16.Round(float32(math.Pow(1e4, 0.05) / math.Pow(10, 0.95))); lam[0] != want {
		t.Errorf("bf16: λ = %v, want %v", lam[0], want)
	}
	SmoothVector(lam, ax, aw, c, F16)
	if want := F16.Round(float32(1e4 * 0x1p-15)); lam[0] != want {
		t.Errorf("fp16: λ = %v, want %v", lam[0], want)
	}
	if x := F16.Round(float32(1e4) / lam[0]); x > 65504 {
		t.Errorf("fp16: x/λ = %v overflows", x)
	}
}

func TestWeightAbsMaxOverGroup(t *testing.T) {
	a := Input{W: []float32{1, -5, 0, 2, 0.5, -0.25}, N: 2, K: 3}
	b := Input{W: []float32{-3, 1, 0.125}, N: 1, K: 3}
	got := weightAbsMax([]Input{a, b})
	want := []float64{3, 5, 0.25}
	for j := range want {
		if got[j] != want[j] {
			t.Errorf("aw[%d] = %v, want %v", j, got[j], want[j])
		}
	}
}

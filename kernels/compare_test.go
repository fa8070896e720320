package kernels

import (
	"errors"
	"math"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

func TestCompareTolerance(t *testing.T) {
	want := []float32{1, -2, 0.5, 100, 0, 3}
	for _, c := range []struct {
		name string
		edit func(g []float32)
		ok   bool
	}{
		{"equal", func(g []float32) {}, true},
		{"one ulp", func(g []float32) { g[3] = quant.RoundBF16(100.5) }, true},
		{"near zero within slack", func(g []float32) { g[4] = 0.001 }, true},
		{"near zero outside slack", func(g []float32) { g[4] = 0.01 }, false},
		{"four ulps", func(g []float32) { g[3] = 102 }, false},
		{"sign", func(g []float32) { g[1] = 2 }, false},
		{"nan", func(g []float32) { g[0] = float32(math.NaN()) }, false},
	} {
		got := append([]float32(nil), want...)
		c.edit(got)
		slack := make([]float32, len(want))
		slack[4] = 0.002
		d := Compare(got, want, slack, quant.BF16)
		if d.OK() != c.ok {
			t.Errorf("%s: OK = %v, want %v (%v)", c.name, d.OK(), c.ok, d)
		}
	}
	if Compare(want, want, nil, quant.F16).Mismatches != 0 {
		t.Error("equal slices mismatch without slack")
	}
	if u := ulp16(quant.BF16, 1); u != 0x1p-7 {
		t.Errorf("bf16 ulp at 1 = %g", u)
	}
	if u := ulp16(quant.F16, 1); u != 0x1p-10 {
		t.Errorf("fp16 ulp at 1 = %g", u)
	}
	if u := ulp16(quant.F16, 0); u != 0x1p-24 {
		t.Errorf("fp16 ulp at 0 = %g", u)
	}
}

// TestOpenWithoutGPU checks the message on a machine without a driver (CI);
// where a GPU is present it checks that Open works.
func TestOpenWithoutGPU(t *testing.T) {
	d, err := Open(0)
	if err == nil {
		t.Logf("GPU present: %v", d)
		d.Close()
		return
	}
	if !errors.Is(err, ErrNoDriver) || !strings.Contains(err.Error(), "no CUDA driver found") {
		t.Fatalf("Open error %q does not say no CUDA driver found", err)
	}
}

// TestLowRankSlack checks the slack against a hand computation: one row,
// one rank, a_0 = 3 (BF16 spacing at 3 is 2⁻⁶).
func TestLowRankSlack(t *testing.T) {
	l := &quant.Layer{Precision: quant.INT4, N: 2, K: 2, R: 1, DType: quant.BF16,
		Codes: make([]int8, 4), Scales: make([]float32, 2), Smooth: []float32{1, 1},
		Down: []float32{1, 2}, Up: []float32{0.5, -4}, Bias: make([]float32, 2), TensorScale: 1}
	s := LowRankSlack(l, []float32{1, 1}, 1)
	u := 0x1p-6 + 0x1p-18*3
	if math.Abs(float64(s[0])-0.5*u) > 1e-9 || math.Abs(float64(s[1])-4*u) > 1e-9 {
		t.Fatalf("slack %v, want %v, %v", s, 0.5*u, 4*u)
	}
}

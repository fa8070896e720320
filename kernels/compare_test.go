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
		d := Compare(got, want, slack, quant.BF16, Tolerances[Reference])
		if d.OK() != c.ok {
			t.Errorf("%s: OK = %v, want %v (%v)", c.name, d.OK(), c.ok, d)
		}
		// The tensor-core kernels' tolerance is exact: only "equal" passes.
		if d := Compare(got, want, slack, quant.BF16, Tolerances[Fused]); d.OK() != (c.name == "equal") {
			t.Errorf("%s exact: OK = %v (%v)", c.name, d.OK(), d)
		}
	}
	if d := Compare(want, want, nil, quant.F16, Tolerances[Fused]); d.Mismatches != 0 || d.Exact != len(want) {
		t.Errorf("equal slices: %v", d)
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

// TestVerify checks Verify on results made on the CPU: the emulation's own
// output passes; a down-projection sum that rounds to the neighbouring
// 16-bit value passes when the output carries that rounding; a wrong sum, a
// nonzero padded rank and an output 3 ulps off fail.
func TestVerify(t *testing.T) {
	l := &quant.Layer{Precision: quant.INT4, N: 2, K: 2, R: 1, DType: quant.BF16,
		Codes: []int8{1, 2, -3, 4}, Scales: []float32{0.5, 0.25}, Smooth: []float32{1, 1},
		Down: []float32{2, 1}, Up: []float32{0.5, -4}, Bias: []float32{0.125, 0}, TensorScale: 1}
	x := []float32{1, 1.0078125} // a = 3.0078125: the tie between the bf16 values 3 and 3.015625
	want := make([]float32, 2)
	l.Forward(want, x, 1)
	ok := func(y, lr []float32) Diff { return Verify(l, x, 1, &Result{M: 1, Y: y, LowRank: lr}) }
	if d := ok(want, []float32{3.0078125, 0}); !d.OK() {
		t.Errorf("emulation output: %v", d)
	}
	// The GPU's sum lands just above the tie and rounds up: the output moves
	// by (3.015625 − 3)·up.
	// The main path's 16-bit accumulator (bias included) is the output of
	// the same layer without the branch; every term here is exact in
	// float32, so the output is round16(acc + 3.015625·up).
	g := float32(3.0078125 + 0x1p-22)
	main := *l
	main.Up = []float32{0, 0}
	acc := make([]float32, 2)
	main.Forward(acc, x, 1)
	moved := []float32{quant.RoundBF16(acc[0] + 3.015625*0.5), quant.RoundBF16(acc[1] - 3.015625*4)}
	if moved[0] == want[0] && moved[1] == want[1] {
		t.Fatal("the rounded-up sum does not move the output")
	}
	if d := ok(moved, []float32{g, 0}); !d.OK() {
		t.Errorf("rounding carried: %v", d)
	}
	if d := ok(want, []float32{3.1, 0}); d.LowRankMismatches != 1 {
		t.Errorf("wrong sum: %v", d)
	}
	if d := ok(want, []float32{3.0078125, 1}); d.LowRankMismatches != 1 {
		t.Errorf("nonzero padded rank: %v", d)
	}
	off := []float32{want[0] + 3*float32(ulp16(quant.BF16, math.Abs(float64(want[0])))), want[1]}
	if d := ok(off, []float32{3.0078125, 0}); d.OK() {
		t.Errorf("3 ulps off accepted: %v", d)
	}

}

// TestVerifyCancellation: the main path and the branch cancel. The
// emulation rounds a₀ = 3.0078125 (a tie) down to 3 and its output
// 3.015625 − 3 + 2⁻¹⁰·1.0625 = 136.5·2⁻¹³ to 136·2⁻¹³; the GPU rounds a₀
// up to 3.015625 and its output is 1.0625·2⁻¹⁰, exactly. Correcting the
// emulation's rounded output by (3.015625 − 3)·up would expect 2⁻¹⁰, 8 ulps
// away (the emulation rounded at 16× the output's magnitude); Verify must
// accept the GPU's value and reject the one that correction predicts.
func TestVerifyCancellation(t *testing.T) {
	l := &quant.Layer{Precision: quant.INT4, N: 1, K: 2, R: 2, DType: quant.BF16,
		Codes: []int8{0, 0}, Scales: []float32{0.5}, Smooth: []float32{1, 1},
		Down: []float32{2, 1, 0x1p-10, 0}, Up: []float32{-1, 1.0625}, Bias: []float32{3.015625}, TensorScale: 1}
	x := []float32{1, 1.0078125}
	emu := make([]float32, 1)
	l.Forward(emu, x, 1)
	if emu[0] != 136*0x1p-13 {
		t.Fatalf("emulation gives %v, the test expects 136·2⁻¹³", emu[0])
	}
	lr := []float32{3.0078125 + 0x1p-22, 0x1p-10}
	gpu := float32(1.0625 * 0x1p-10)
	if d := Verify(l, x, 1, &Result{M: 1, Y: []float32{gpu}, LowRank: lr}); !d.OK() {
		t.Errorf("GPU output %v rejected: %v", gpu, d)
	}
	if d := Verify(l, x, 1, &Result{M: 1, Y: []float32{0x1p-10}, LowRank: lr}); d.OK() {
		t.Errorf("corrected emulation output 2⁻¹⁰ accepted: %v", d)
	}
}

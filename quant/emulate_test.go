package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// randLayer builds a random, consistent layer of the given form: a Gaussian
// weight with a few outlier columns, smoothing factors in [0.5, 2], a random
// rank-r branch, the residual quantized with this package's quantizers.
func randLayer(rng *rand.Rand, prec Precision, n, k, r int, dt Float16, unsigned bool) *Layer {
	l := &Layer{Precision: prec, N: n, K: k, R: r, DType: dt, Unsigned: unsigned, TensorScale: 1}
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.05)
		if i%k == 3 {
			w[i] *= 20
		}
	}
	l.Smooth = make([]float32, k)
	for j := range l.Smooth {
		l.Smooth[j] = dt.Round(float32(0.5 + 1.5*rng.Float64()))
	}
	l.Down = make([]float32, r*k)
	for i := range l.Down {
		l.Down[i] = dt.Round(float32(rng.NormFloat64() * 0.1))
	}
	l.Up = make([]float32, n*r)
	for i := range l.Up {
		l.Up[i] = dt.Round(float32(rng.NormFloat64() * 0.1))
	}
	l.Bias = make([]float32, n)
	for i := range l.Bias {
		l.Bias[i] = dt.Round(float32(rng.NormFloat64() * 0.1))
	}
	res := make([]float32, n*k) // smoothed weight: W·diag(λ)
	for i := 0; i < n; i++ {
		for j := 0; j < k; j++ {
			res[i*k+j] = w[i*k+j] * l.Smooth[j]
		}
	}
	l.Codes = make([]int8, n*k)
	l.Scales = make([]float32, n*l.Groups())
	if prec == NVFP4 {
		l.TensorScale = NVFP4TensorScale(res)
		QuantizeNVFP4(l.Codes, l.Scales, res, n, k, l.TensorScale)
	} else {
		QuantizeInt4(l.Codes, l.Scales, res, n, k, dt.Round)
	}
	return l
}

func randInput(rng *rand.Rand, m, k int, nonNeg bool) []float32 {
	x := make([]float32, m*k)
	for i := range x {
		v := rng.NormFloat64()
		if i%k == 5 {
			v *= 15 // an outlier channel
		}
		if nonNeg { // GELU-like: ≥ −0.17
			v = max(v, -0.17)
		}
		x[i] = float32(v)
	}
	return x
}

// fastBound returns the documented bound on |ForwardFast − Forward| for row
// i, output n.
func fastBound(l *Layer, x []float32, i, n int) float64 {
	s := l.newScratch()
	l.prepareRow(x[i*l.K:(i+1)*l.K], s)
	xq := make([]float32, l.K)
	l.dequantizeActRow(xq, s)
	w := l.DequantizeWeight()
	var main float64
	for k := 0; k < l.K; k++ {
		main += math.Abs(float64(xq[k]) * float64(w[n*l.K+k]))
	}
	l.loraDown(s)
	var lora float64
	for r := 0; r < l.R; r++ {
		lora += math.Abs(float64(s.lora[r]) * float64(l.Up[n*l.R+r]))
	}
	man, _, _ := f16Params(l.DType)
	u := math.Ldexp(1, -man-1)
	y := main + lora + math.Abs(float64(l.Bias[n]))
	return float64(l.Groups()+4)*u*main + 4*u*(lora+math.Abs(float64(l.Bias[n]))+y) + 1e-5*y
}

func TestForwardFastMatchesReference(t *testing.T) {
	for _, tc := range []struct {
		prec     Precision
		dt       Float16
		unsigned bool
		n, k, r  int
	}{
		{INT4, BF16, false, 8, 128, 16},
		{INT4, BF16, true, 8, 192, 16},
		{INT4, F16, false, 6, 100, 4}, // partial group
		{INT4, F16, true, 5, 70, 0},
		{NVFP4, BF16, false, 8, 128, 16},
		{NVFP4, F16, false, 7, 40, 3}, // partial group
	} {
		name := fmt.Sprintf("%v/%v/unsigned=%v/%dx%d/r%d", tc.prec, tc.dt, tc.unsigned, tc.n, tc.k, tc.r)
		t.Run(name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.k), uint64(tc.n)))
			l := randLayer(rng, tc.prec, tc.n, tc.k, tc.r, tc.dt, tc.unsigned)
			const m = 300 // more than one ForwardFast block
			x := randInput(rng, m, tc.k, tc.unsigned)
			y := make([]float32, m*tc.n)
			yf := make([]float32, m*tc.n)
			l.Forward(y, x, m)
			l.ForwardFast(yf, x, m)
			for i := 0; i < m; i++ {
				for n := 0; n < tc.n; n++ {
					a, b := y[i*tc.n+n], yf[i*tc.n+n]
					if a != tc.dt.Round(a) {
						t.Fatalf("row %d out %d: Forward gave %v, not a %v value", i, n, a, tc.dt)
					}
					if d, bound := math.Abs(float64(a-b)), fastBound(l, x, i, n); d > bound {
						t.Errorf("row %d out %d: Forward %v, ForwardFast %v: |Δ| %g > bound %g", i, n, a, b, d, bound)
					}
				}
			}
			// Both are a 4-bit approximation of the float layer (a loose check
			// against gross errors: naive W4A4 with an outlier channel). The
			// random unsigned layers carry no bias correction, so their
			// reference includes the shift term Ŵq·(shift/λ).
			bias := append([]float32(nil), l.Bias...)
			if tc.unsigned {
				w := l.DequantizeWeight()
				for n := range bias {
					for k := 0; k < tc.k; k++ {
						bias[n] += w[n*tc.k+k] * ShiftINT4 / l.Smooth[k]
					}
				}
			}
			ref := make([]float64, m*tc.n)
			RefOutput(ref, x, m, tc.k, effectiveWeight(l), tc.n, bias)
			if e := RelError(yf, ref); !(e < 0.5) {
				t.Errorf("relative error of the quantized layer %g", e)
			}
		})
	}
}

// effectiveWeight returns the float weight the layer approximates on raw x:
// (Ŵq + L_up·L_down)·diag(1/λ) with the unsigned bias correction ignored.
func effectiveWeight(l *Layer) []float32 {
	w := l.DequantizeWeight()
	for n := 0; n < l.N; n++ {
		for k := 0; k < l.K; k++ {
			v := float64(w[n*l.K+k]) / float64(l.Smooth[k])
			for r := 0; r < l.R; r++ {
				v += float64(l.Up[n*l.R+r]) * float64(l.Down[r*l.K+k])
			}
			w[n*l.K+k] = float32(v)
		}
	}
	return w
}

// TestForwardHandInt4 checks hand-computed outputs, including the 16-bit
// accumulator: 257 + 0.998 accumulates to 256 in bf16, not 258.
func TestForwardHandInt4(t *testing.T) {
	const k = 128
	l := &Layer{Precision: INT4, N: 2, K: k, R: 0, DType: BF16, TensorScale: 1,
		Codes: make([]int8, 2*k), Scales: []float32{1, 1, 0.5, 0.25},
		Smooth: ones(k), Bias: []float32{0, 0.5}}
	x := make([]float32, k)
	copy(x, []float32{7, 7, 7, 7, 7, 1, 5}) // group 0: absmax 7 → scale 1, codes = x
	x[64] = 1                               // group 1: absmax 1 → scale bf16(1/7), code 7
	copy(l.Codes, []int8{7, 7, 7, 7, 7, 7, 1})
	l.Codes[64] = 1
	// Row 1: group 0 codes 1,−1 → p = 0; group 1 code 2 → p = 14.
	copy(l.Codes[k:], []int8{1, -1})
	l.Codes[k+64] = 2
	y := make([]float32, 2)
	l.Forward(y, x, 1)
	// Row 0: p0 = 5·49 + 7 + 5 = 257 → bf16 256; group 1: 7·bf16(1/7)·1 =
	// 0.998… and 256 + 0.998 rounds back to 256.
	if y[0] != 256 {
		t.Errorf("y[0] = %v, want 256 (16-bit accumulator)", y[0])
	}
	// Row 1: 0 + 14·bf16(bf16(1/7)·0.25) + 0.5.
	s := RoundBF16(RoundBF16(recip7) * 0.25)
	if want := RoundBF16(RoundBF16(14*s) + 0.5); y[1] != want {
		t.Errorf("y[1] = %v, want %v", y[1], want)
	}
	yf := make([]float32, 2)
	l.ForwardFast(yf, x, 1)
	if want := 257 + 7*RoundBF16(recip7); math.Abs(float64(yf[0]-want)) > 1e-4 {
		t.Errorf("ForwardFast y[0] = %v, want %v (float32 accumulation)", yf[0], want)
	}
}

// TestForwardHandNVFP4 checks a hand-computed NVFP4 output with a tensor
// scale, a partial group and the low-rank branch.
func TestForwardHandNVFP4(t *testing.T) {
	const k = 20 // groups of 16 and 4
	l := &Layer{Precision: NVFP4, N: 2, K: k, R: 1, DType: BF16, TensorScale: 0.5,
		Codes: make([]int8, 2*k), Scales: []float32{2, 0.5, 1, 4},
		Smooth: ones(k), Down: make([]float32, k), Up: []float32{1, -2}, Bias: []float32{0.25, 0}}
	x := make([]float32, k)
	copy(x, []float32{6, 3, -1.5}) // group 0: absmax 6 → scale 1, codes 7, 5, 11
	x[16], x[17] = 12, 4           // group 1: absmax 12 → scale 2, codes 7 (6) and 4 (2)
	l.Down[0], l.Down[16] = 0.5, 0.25
	// Row 0 weights: group 0 codes e2m1 {1, 2, 1.5} = 2, 4, 3; group 1 {6, 0.5} = 7, 1.
	copy(l.Codes, []int8{4, 6, 5})
	l.Codes[16], l.Codes[17] = 7, 1
	// Row 1: group 0 {−1} at col 0 (code 10); group 1 {3} at col 17 (code 5).
	l.Codes[k] = 10
	l.Codes[k+17] = 5
	y := make([]float32, 2)
	l.Forward(y, x, 1)
	// Activations: group 0 values 6, 3, −1.5 (scale 1); group 1 values 12, 4 (scale 2).
	// Row 0: g0 = (6·2 + 3·4 + (−1.5)·3)·1·2 = 39; g1 = (6·6 + 2·0.5)·2·0.5 = 37;
	// (39 + 37)·0.5 = 38; + bias 0.25 = 38.25 (bf16: 38.25 exact);
	// lora: a = 6·0.5 + 12·0.25 = 6; + 6·1 → 44.25 → bf16 44.25.
	if y[0] != 44.25 {
		t.Errorf("y[0] = %v, want 44.25", y[0])
	}
	// Row 1: g0 = 6·(−1)·1·1 = −6; g1 = 2·3·2·4 = 48; (42)·0.5 = 21; lora 6·(−2) → 9.
	if y[1] != 9 {
		t.Errorf("y[1] = %v, want 9", y[1])
	}
	yf := make([]float32, 2)
	l.ForwardFast(yf, x, 1)
	if yf[0] != 44.25 || yf[1] != 9 {
		t.Errorf("ForwardFast = %v, want [44.25 9]", yf)
	}
}

// TestForwardExactLayer: weights and inputs on the quantization grids, with
// power-of-two scales and sums small enough for the 16-bit accumulator, give
// the exact output in both paths.
func TestForwardExactLayer(t *testing.T) {
	for _, tc := range []struct {
		prec    Precision
		dt      Float16
		k       int
		wCodes  []int8    // nonzero weight codes to draw from
		xVals   []float64 // activation grid values (times the group scale 0.5)
		upVals  []float32
		biasVal []float32
	}{
		{INT4, F16, 100, []int8{-2, -1, 1, 2}, []float64{-3, -2, -1, 0, 1, 2, 3}, []float32{0, 0.5, -0.5}, []float32{0, 0.125, -0.25}},
		{INT4, BF16, 64, []int8{-2, -1, 1, 2}, []float64{-3, -2, -1, 0, 1, 2, 3}, []float32{0, 0.5, -0.5}, []float32{0, 0.125, -0.25}},
		{NVFP4, F16, 40, []int8{1, 2, 9, 10}, []float64{-2, -1, -0.5, 0, 0.5, 1, 1.5, 2}, []float32{0, 0.125, -0.125}, []float32{0, 0.125, -0.125}},
		{NVFP4, BF16, 32, []int8{1, 2, 9, 10}, []float64{-2, -1, -0.5, 0, 0.5, 1, 1.5, 2}, []float32{0, 0.125, -0.125}, []float32{0, 0.125, -0.125}},
	} {
		t.Run(fmt.Sprintf("%v/%v/k=%d", tc.prec, tc.dt, tc.k), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(9, uint64(tc.k)))
			const n, m, r = 4, 5, 2
			l := &Layer{Precision: tc.prec, N: n, K: tc.k, R: r, DType: tc.dt, TensorScale: 1,
				Codes: make([]int8, n*tc.k), Smooth: ones(tc.k),
				Down: make([]float32, r*tc.k), Up: make([]float32, n*r), Bias: make([]float32, n)}
			gs, qmax := 64, 7.0
			if tc.prec == NVFP4 {
				gs, qmax = 16, 6
				l.TensorScale = 0.5
			}
			G := l.Groups()
			l.Scales = make([]float32, n*G)
			for i := range l.Scales {
				l.Scales[i] = 0.25
			}
			for i := range l.Codes {
				if rng.IntN(8) == 0 {
					l.Codes[i] = tc.wCodes[rng.IntN(len(tc.wCodes))]
				}
			}
			for rr := 0; rr < r; rr++ { // one ±1 per rank: a[r] = ±x_j
				l.Down[rr*tc.k+rng.IntN(tc.k)] = float32(2*rng.IntN(2) - 1)
			}
			for i := range l.Up {
				l.Up[i] = tc.upVals[rng.IntN(len(tc.upVals))]
			}
			for i := range l.Bias {
				l.Bias[i] = tc.biasVal[rng.IntN(len(tc.biasVal))]
			}
			// Inputs: grid values times 0.5, and qmax·0.5 first in every
			// group so that the group scale is exactly 0.5.
			x := make([]float32, m*tc.k)
			for i := 0; i < m; i++ {
				for j := 0; j < tc.k; j++ {
					c := tc.xVals[rng.IntN(len(tc.xVals))]
					if j%gs == 0 {
						c = qmax
					}
					x[i*tc.k+j] = float32(c * 0.5)
				}
			}
			w := l.DequantizeWeight()
			want := make([]float64, m*n)
			RefOutput(want, x, m, tc.k, w, n, l.Bias)
			for i := 0; i < m; i++ {
				for nn := 0; nn < n; nn++ {
					for rr := 0; rr < r; rr++ {
						var d float64
						for j := 0; j < tc.k; j++ {
							d += float64(x[i*tc.k+j]) * float64(l.Down[rr*tc.k+j])
						}
						want[i*n+nn] += d * float64(l.Up[nn*r+rr])
					}
				}
			}
			y := make([]float32, m*n)
			yf := make([]float32, m*n)
			l.Forward(y, x, m)
			l.ForwardFast(yf, x, m)
			for i, wv := range want {
				if float64(tc.dt.Round(float32(wv))) != wv {
					t.Fatalf("test construction: %v is not a %v value", wv, tc.dt)
				}
				if float64(y[i]) != wv || float64(yf[i]) != wv {
					t.Errorf("out %d: Forward %v, ForwardFast %v, want %v", i, y[i], yf[i], wv)
				}
			}
		})
	}
}

// TestForwardUnsignedShift: with the bias corrected by −Ŵq·(shift/λ), the
// shifted unsigned path computes the unshifted layer x·(Ŵq·diag(1/λ))ᵀ + b.
// Inputs are built so that (x + 0.171875)/λ lies on the unsigned grid, which
// makes the identity exact up to the 16-bit rounding of the stored bias and
// of the kernel's accumulator.
func TestForwardUnsignedShift(t *testing.T) {
	for _, dt := range []Float16{BF16, F16} {
		t.Run(dt.String(), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, 6))
			const n, k, m = 6, 128, 7
			l := randLayer(rng, INT4, n, k, 0, dt, true)
			for j := range l.Smooth {
				l.Smooth[j] = float32(math.Ldexp(1, rng.IntN(3)-1)) // 0.5, 1, 2: exact division
			}
			bias := append([]float32(nil), l.Bias...)
			w := l.DequantizeWeight()
			for i := 0; i < n; i++ {
				var c float64
				for j := 0; j < k; j++ {
					c += float64(w[i*k+j]) * ShiftINT4 / float64(l.Smooth[j])
				}
				l.Bias[i] = dt.Round(float32(float64(bias[i]) - c))
			}
			// x̂ = q/4 with q in 0..15 and 15 in every group: x = x̂·λ − shift.
			x := make([]float32, m*k)
			for i := 0; i < m; i++ {
				for j := 0; j < k; j++ {
					q := rng.IntN(16)
					if j%64 == 0 {
						q = 15
					}
					x[i*k+j] = float32(float64(q)/4*float64(l.Smooth[j]) - ShiftINT4)
				}
			}
			eff := make([]float32, n*k)
			for i := range eff {
				eff[i] = float32(float64(w[i]) / float64(l.Smooth[i%k]))
			}
			want := make([]float64, m*n)
			RefOutput(want, x, m, k, eff, n, bias)
			y := make([]float32, m*n)
			yf := make([]float32, m*n)
			l.Forward(y, x, m)
			l.ForwardFast(yf, x, m)
			man, _, _ := f16Params(dt)
			u := math.Ldexp(1, -man-1)
			for i, wv := range want {
				var mag float64 // Σ|x̂q·ŵq| + |bias'|: the scale of the rounding errors
				row, nn := i/n, i%n
				for j := 0; j < k; j++ {
					mag += math.Abs(float64(x[row*k+j]+ShiftINT4) / float64(l.Smooth[j]) * float64(w[nn*k+j]))
				}
				mag += math.Abs(float64(l.Bias[nn]))
				if d := math.Abs(float64(yf[i]) - wv); d > u*math.Abs(float64(l.Bias[nn]))+1e-5*mag {
					t.Errorf("ForwardFast out %d: %v, want %v (|Δ| %g)", i, yf[i], wv, d)
				}
				if d := math.Abs(float64(y[i]) - wv); d > float64(l.Groups()+4)*u*mag {
					t.Errorf("Forward out %d: %v, want %v (|Δ| %g)", i, y[i], wv, d)
				}
			}
		})
	}
}

func TestForwardF16Clamp(t *testing.T) {
	const k = 64
	l := &Layer{Precision: INT4, N: 1, K: k, DType: F16, TensorScale: 1,
		Codes: make([]int8, k), Scales: []float32{1000}, Smooth: ones(k), Bias: []float32{0}}
	l.Codes[0] = 7
	x := make([]float32, k)
	x[0] = 7000 // scale 1000, code 7: ascale·wscale = 10⁶ overflows fp16
	y := make([]float32, 1)
	l.Forward(y, x, 1)
	if y[0] != 65504 {
		t.Errorf("fp16 output %v, want the clamp 65504", y[0])
	}
}

func TestForwardNaNPropagates(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	l := randLayer(rng, INT4, 3, 64, 2, BF16, false)
	x := randInput(rng, 2, 64, false)
	x[10] = float32(math.NaN())
	y := make([]float32, 6)
	l.Forward(y, x, 2)
	for n := 0; n < 3; n++ {
		if y[n] == y[n] {
			t.Errorf("row 0 out %d = %v, want NaN", n, y[n])
		}
		if y[3+n] != y[3+n] {
			t.Errorf("row 1 out %d = NaN, want finite", n)
		}
	}
}

func TestForwardPanics(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	l := randLayer(rng, NVFP4, 2, 32, 0, BF16, false)
	y, x := make([]float32, 4), make([]float32, 64)
	mustPanic(t, "quant: Layer.Forward", func() { l.Forward(y, x[:63], 2) })
	mustPanic(t, "quant: Layer.ForwardFast", func() { l.ForwardFast(y[:3], x, 2) })
	l.Unsigned = true
	mustPanic(t, "quant: Layer.Forward", func() { l.Forward(y, x, 2) })
	l.Unsigned = false
	l.TensorScale = 0
	mustPanic(t, "quant: Layer.Forward", func() { l.Forward(y, x, 2) })
	l.TensorScale = 1
	l.Bias = l.Bias[:1]
	mustPanic(t, "quant: Layer.Forward", func() { l.Forward(y, x, 2) })
}

func ones(k int) []float32 {
	v := make([]float32, k)
	for i := range v {
		v[i] = 1
	}
	return v
}

func benchmarkForward(b *testing.B, prec Precision, m, n, k int, fast bool) {
	rng := rand.New(rand.NewPCG(1, 2))
	l := randLayer(rng, prec, n, k, 32, BF16, false)
	x := randInput(rng, m, k, false)
	y := make([]float32, m*n)
	b.SetBytes(int64(m * n * k)) // "bytes" = multiply-adds
	for b.Loop() {
		if fast {
			l.ForwardFast(y, x, m)
		} else {
			l.Forward(y, x, m)
		}
	}
}

func BenchmarkForwardInt4M256N1024K1024(b *testing.B) {
	benchmarkForward(b, INT4, 256, 1024, 1024, false)
}
func BenchmarkForwardFastInt4M256N1024K1024(b *testing.B) {
	benchmarkForward(b, INT4, 256, 1024, 1024, true)
}
func BenchmarkForwardFastNVFP4M256N1024K1024(b *testing.B) {
	benchmarkForward(b, NVFP4, 256, 1024, 1024, true)
}

// TestForwardLoRA: fed the emulation's own down-projection sums (stride
// larger than R, as the GPU pads the rank), ForwardLoRA equals Forward bit
// for bit; fed other sums, it follows them.
func TestForwardLoRA(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	l := randLayer(rng, INT4, 8, 128, 16, BF16, false)
	m, stride := 5, 32
	x := make([]float32, m*l.K)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	want := make([]float32, m*l.N)
	l.Forward(want, x, m)
	lora := make([]float32, m*stride)
	s := l.newScratch()
	for i := 0; i < m; i++ {
		l.prepareRow(x[i*l.K:(i+1)*l.K], s)
		l.loraDown(s)
		copy(lora[i*stride:], s.lora)
	}
	got := make([]float32, m*l.N)
	l.ForwardLoRA(got, x, m, lora, stride)
	for i := range want {
		if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
			t.Fatalf("element %d: ForwardLoRA %v, Forward %v", i, got[i], want[i])
		}
	}
	for i := range lora {
		lora[i] = 0
	}
	l.ForwardLoRA(got, x, m, lora, stride)
	l.R, l.Up, l.Down = 0, nil, nil
	l.Forward(want, x, m)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("zero sums, element %d: %v, the layer without its branch gives %v", i, got[i], want[i])
		}
	}
}

package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

func TestQuantizeWeightOnly(t *testing.T) {
	for _, tc := range []struct {
		dt   Float16
		n, k int
	}{{BF16, 5, 64}, {BF16, 4, 100}, {F16, 3, 130}, {F16, 2, 1}} {
		t.Run(fmt.Sprintf("%v/%dx%d", tc.dt, tc.n, tc.k), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(tc.k), 3))
			w := testMatrix(rng, tc.n, tc.k, 64, false, false)
			bias := make([]float32, tc.n)
			for i := range bias {
				bias[i] = float32(rng.NormFloat64())
			}
			wo := QuantizeWeightOnly(w, tc.n, tc.k, bias, tc.dt)
			deq := wo.Dequantize()
			g := (tc.k + 63) / 64
			var asymErr, symErr float64
			for r := 0; r < tc.n; r++ {
				if wo.Bias[r] != tc.dt.Round(bias[r]) {
					t.Errorf("bias %d = %v, want %v", r, wo.Bias[r], tc.dt.Round(bias[r]))
				}
				for j := 0; j < g; j++ {
					b, e := j*64, min((j+1)*64, tc.k)
					S, Z := float64(wo.Scales[r*g+j]), float64(wo.Zeros[r*g+j])
					if float32(S) != tc.dt.Round(float32(S)) || float32(Z) != tc.dt.Round(float32(Z)) {
						t.Errorf("row %d group %d: scale %v or zero %v not a %v value", r, j, S, Z, tc.dt)
					}
					lo, hi := math.Inf(1), math.Inf(-1)
					for _, x := range w[r*tc.k+b : r*tc.k+e] {
						lo, hi = min(lo, float64(x)), max(hi, float64(x))
					}
					s := (hi - lo) / 15
					// Half a step, plus what rounding scale and zero to 16 bits moves the grid's ends.
					tol := S/2 + 15*math.Abs(S-s) + math.Abs(Z-lo) + 1e-6*max(math.Abs(lo), math.Abs(hi))
					if S == 0 {
						tol = hi - lo + math.Abs(Z-lo)
					}
					symS := float64(tc.dt.Round(float32(max(-lo, hi) / 7)))
					for i := b; i < e; i++ {
						c := wo.Codes[r*tc.k+i]
						if c > 15 {
							t.Fatalf("code %d", c)
						}
						x, d := float64(w[r*tc.k+i]), float64(deq[r*tc.k+i])
						if err := math.Abs(x - d); err > tol {
							t.Errorf("row %d col %d: |%g − %g| = %g > %g", r, i, x, d, err, tol)
						}
						for q := 0; q < 16 && S > 0; q++ { // nearest point of the stored grid
							if g := float64(float32(float64(q)*S) + float32(Z)); math.Abs(x-g) < math.Abs(x-d)-1e-6*math.Abs(x) {
								t.Errorf("row %d col %d: %g → %g but grid point %g is nearer", r, i, x, d, g)
							}
						}
						asymErr += (x - d) * (x - d)
						sq := 0.0 // the reference's symmetric form: zero = −7·scale
						if symS > 0 {
							sq = max(0, min(15, math.RoundToEven(x/symS)+7))
						}
						sd := (sq - 7) * symS
						symErr += (x - sd) * (x - sd)
					}
				}
			}
			if asymErr > symErr {
				t.Errorf("asymmetric squared error %g above the symmetric reference's %g", asymErr, symErr)
			}
			// Forward is x·Wᵀ + b with the dequantized weight.
			const m = 9
			x := randInput(rng, m, tc.k, false)
			y := make([]float32, m*tc.n)
			wo.Forward(y, x, m)
			ref := make([]float64, m*tc.n)
			RefOutput(ref, x, m, tc.k, deq, tc.n, wo.Bias)
			if e := RelError(y, ref); e > 1e-5 {
				t.Errorf("Forward relative error %g against the float64 product", e)
			}
			// The kernel emulation differs by its 16-bit roundings: of the
			// dequantized weight, the input, each product, the output and the
			// bias addition.
			yk := make([]float32, m*tc.n)
			wo.ForwardKernel(yk, x, m)
			man, _, _ := f16Params(tc.dt)
			u := math.Ldexp(1, -man-1)
			for i := 0; i < m; i++ {
				for n := 0; n < tc.n; n++ {
					var mag float64
					for k := 0; k < tc.k; k++ {
						mag += math.Abs(float64(x[i*tc.k+k]) * float64(deq[n*tc.k+k]))
					}
					got := yk[i*tc.n+n]
					if got != tc.dt.Round(got) {
						t.Fatalf("ForwardKernel output %v is not a %v value", got, tc.dt)
					}
					bound := 4*u*mag + 2*u*(math.Abs(ref[i*tc.n+n])+math.Abs(float64(wo.Bias[n]))) + 1e-6*mag
					if d := math.Abs(float64(got) - ref[i*tc.n+n]); d > bound {
						t.Errorf("ForwardKernel [%d,%d] = %v, float64 %v: |Δ| %g > %g", i, n, got, ref[i*tc.n+n], d, bound)
					}
				}
			}
		})
	}
}

func TestWeightOnlyHand(t *testing.T) {
	w := make([]float32, 2*64)
	for i := 0; i < 64; i++ {
		w[i] = float32(i%16)*1.5 - 3 // grid of step 1.5 from −3: exact
		w[64+i] = 2.5                // constant row
	}
	wo := QuantizeWeightOnly(w, 2, 64, nil, BF16)
	if wo.Scales[0] != 1.5 || wo.Zeros[0] != -3 || wo.Scales[1] != 0 || wo.Zeros[1] != 2.5 {
		t.Fatalf("scales %v zeros %v", wo.Scales, wo.Zeros)
	}
	for i := 0; i < 64; i++ {
		if wo.Codes[i] != uint8(i%16) || wo.Codes[64+i] != 0 {
			t.Fatalf("codes %v", wo.Codes)
		}
	}
	for i, v := range wo.Dequantize() {
		if v != w[i] {
			t.Errorf("dequantized %d = %v, want %v", i, v, w[i])
		}
	}
	if wo.Bias[0] != 0 || wo.Bias[1] != 0 {
		t.Errorf("nil bias gave %v", wo.Bias)
	}
	// Kernel emulation by hand: x = 1 at column 1 and 3 at column 2 picks
	// w[·,1] = −1.5 and w[·,2] = 0: y0 = −1.5; row 1 (constant 2.5): 10.
	x := make([]float32, 64)
	x[1], x[2] = 1, 3
	y := make([]float32, 2)
	wo.ForwardKernel(y, x, 1)
	if y[0] != -1.5 || y[1] != 10 {
		t.Errorf("ForwardKernel = %v, want [-1.5 10]", y)
	}
}

func TestWeightOnlyPanics(t *testing.T) {
	w := make([]float32, 128)
	mustPanic(t, "quant: QuantizeWeightOnly", func() { QuantizeWeightOnly(w, 2, 65, nil, BF16) })
	mustPanic(t, "quant: QuantizeWeightOnly", func() { QuantizeWeightOnly(w, 2, 64, make([]float32, 1), BF16) })
	w[70] = float32(math.Inf(-1))
	mustPanic(t, "quant: QuantizeWeightOnly", func() { QuantizeWeightOnly(w, 2, 64, nil, BF16) })
	w[70] = 0
	mustPanic(t, "quant: QuantizeWeightOnly", func() { QuantizeWeightOnly(w, 2, 64, []float32{1, float32(math.NaN())}, BF16) })
	wo := QuantizeWeightOnly(w, 2, 64, nil, BF16)
	mustPanic(t, "quant: WeightOnly.Forward", func() { wo.Forward(make([]float32, 3), make([]float32, 128), 2) })
	wo.Zeros = wo.Zeros[:1]
	mustPanic(t, "quant: WeightOnly.Forward", func() { wo.Forward(make([]float32, 4), make([]float32, 128), 2) })
}

// woInputs returns s rows of k inputs shaped like a modulation layer's
// (adaLN: SiLU of a time/text embedding): a few latent factors, noise, and
// three outlier channels ×20. With lowRank false: white noise.
func woInputs(rng *rand.Rand, s, k int, lowRank bool) []float32 {
	const f = 12
	basis := make([]float64, f*k)
	for i := range basis {
		basis[i] = rng.NormFloat64()
	}
	x := make([]float32, s*k)
	for i := 0; i < s; i++ {
		var z [f]float64
		for a := range z {
			z[a] = rng.NormFloat64()
		}
		for j := 0; j < k; j++ {
			v := 0.1 * rng.NormFloat64()
			if lowRank {
				for a := range z {
					v += z[a] * basis[a*k+j] / math.Sqrt(f)
				}
			} else {
				v = rng.NormFloat64()
			}
			if j%97 == 5 {
				v *= 20
			}
			x[i*k+j] = float32(v)
		}
	}
	return x
}

// TestGPTQWeightOnly: the result is a valid W4A16 layer (codes 0..15,
// dtype scales and zeros, the rounded bias) and deterministic. On held-out
// rows of low-rank inputs its error is far below round-to-nearest's; on
// white noise with fewer rows than inputs it fits the calibration rows and
// loses on the others — which WeightOnlyBest's held-out choice catches.
func TestGPTQWeightOnly(t *testing.T) {
	const n, k, s = 96, 384, 256
	for _, lowRank := range []bool{true, false} {
		rng := rand.New(rand.NewPCG(41, 42))
		w := testMatrix(rng, n, k, 64, false, false)
		bias := make([]float32, n)
		for i := range bias {
			bias[i] = float32(rng.NormFloat64())
		}
		x := woInputs(rng, 2*s, k, lowRank)
		fit, held := x[:s*k], x[s*k:]
		rtn := QuantizeWeightOnly(w, n, k, bias, BF16)
		gq, ok := GPTQWeightOnly(w, n, k, bias, BF16, fit, s)
		if !ok {
			t.Fatal("GPTQWeightOnly failed")
		}
		again, _ := GPTQWeightOnly(w, n, k, bias, BF16, fit, s)
		for i := range gq.Codes {
			if gq.Codes[i] > 15 || gq.Codes[i] != again.Codes[i] {
				t.Fatalf("code %d = %d (again %d)", i, gq.Codes[i], again.Codes[i])
			}
		}
		for i := range gq.Scales {
			if gq.Scales[i] != BF16.Round(gq.Scales[i]) || gq.Zeros[i] != BF16.Round(gq.Zeros[i]) || gq.Scales[i] < 0 {
				t.Fatalf("group %d: scale %v zero %v", i, gq.Scales[i], gq.Zeros[i])
			}
		}
		for i := range bias {
			if gq.Bias[i] != BF16.Round(bias[i]) {
				t.Fatalf("bias %d = %v", i, gq.Bias[i])
			}
		}
		er, eg := woError(rtn, w, held, s), woError(gq, w, held, s)
		t.Logf("low-rank inputs %v: held-out error RTN %.4f, GPTQ %.4f (fit rows: %.4f, %.4f)", lowRank, er, eg,
			woError(rtn, w, fit, s), woError(gq, w, fit, s))
		if lowRank && eg >= 0.5*er {
			t.Errorf("GPTQ held-out error %.4f not below half of round-to-nearest's %.4f", eg, er)
		}
		best, used := WeightOnlyBest(w, n, k, bias, BF16, x, 2*s)
		t.Logf("WeightOnlyBest on all %d rows: GPTQ kept %v", 2*s, used)
		if used != lowRank {
			t.Errorf("WeightOnlyBest kept GPTQ = %v on low-rank = %v inputs", used, lowRank)
		}
		if !used && !equalWO(best, rtn) {
			t.Error("WeightOnlyBest without GPTQ differs from QuantizeWeightOnly")
		}
	}
}

// woError is wo's relative output error against W on the s rows of x.
func woError(wo *WeightOnly, w, x []float32, s int) float64 {
	yref := make([]float64, s*wo.N)
	RefOutput32(yref, x, s, wo.K, w, wo.N)
	return wo.outputError(x, s, yref)
}

func equalWO(a, b *WeightOnly) bool {
	if len(a.Codes) != len(b.Codes) || len(a.Scales) != len(b.Scales) {
		return false
	}
	for i := range a.Codes {
		if a.Codes[i] != b.Codes[i] {
			return false
		}
	}
	for i := range a.Scales {
		if a.Scales[i] != b.Scales[i] || a.Zeros[i] != b.Zeros[i] {
			return false
		}
	}
	return true
}

// TestWeightOnlyGroup128: group 128 (nunchaku's T5 W4Linear) takes its
// scale and zero from 128 columns; Group 0 stays 64. A group-128 layer is
// the group-64 layer whose scales and zeros repeat twice, so Dequantize,
// Forward and ForwardKernel must agree with that expansion exactly.
func TestWeightOnlyGroup128(t *testing.T) {
	// Hand case: row 0 spans a step-1 grid over columns 0..127 (min −4 in
	// column 100, max 11 in column 3), row 1 is constant.
	const k = 256
	w := make([]float32, 2*k)
	for i := 0; i < k; i++ {
		w[i] = float32(i%16) - 4
		w[k+i] = 0.75
	}
	w[128] = 100 // second group of row 0: its own range
	wo := QuantizeWeightOnlyGroup(w, 2, k, 128, nil, BF16)
	if wo.Group != 128 || wo.GroupSize() != 128 || wo.Groups() != 2 || len(wo.Scales) != 4 {
		t.Fatalf("group %d size %d groups %d scales %d", wo.Group, wo.GroupSize(), wo.Groups(), len(wo.Scales))
	}
	if wo.Scales[0] != 1 || wo.Zeros[0] != -4 || wo.Scales[2] != 0 || wo.Zeros[2] != 0.75 {
		t.Fatalf("scales %v zeros %v", wo.Scales, wo.Zeros)
	}
	if want := BF16.Round(104.0 / 15); wo.Scales[1] != want || wo.Zeros[1] != -4 {
		t.Fatalf("second group scale %v zero %v, want %v, -4", wo.Scales[1], wo.Zeros[1], want)
	}
	for i := 0; i < 128; i++ {
		if wo.Codes[i] != uint8(i%16) {
			t.Fatalf("code %d = %d", i, wo.Codes[i])
		}
	}
	if g64 := QuantizeWeightOnly(w, 2, k, nil, BF16); g64.Group != 0 || g64.Groups() != 4 || g64.Scales[2] != BF16.Round(104.0/15) || g64.Scales[3] != 1 || g64.Zeros[4] != 0.75 {
		t.Fatalf("group 0: %d groups, zeros %v", g64.Groups(), g64.Zeros)
	}

	for _, dt := range []Float16{BF16, F16} {
		rng := rand.New(rand.NewPCG(7, uint64(dt)))
		const n, k = 12, 384
		w := testMatrix(rng, n, k, 64, false, false)
		bias := make([]float32, n)
		for i := range bias {
			bias[i] = float32(rng.NormFloat64())
		}
		wo := QuantizeWeightOnlyGroup(w, n, k, 128, bias, dt)
		for r := 0; r < n; r++ {
			for j := 0; j < 3; j++ {
				lo, hi := float32(math.Inf(1)), float32(math.Inf(-1))
				for _, x := range w[r*k+j*128 : r*k+(j+1)*128] {
					lo, hi = min(lo, x), max(hi, x)
				}
				if s, z := wo.Scales[r*3+j], wo.Zeros[r*3+j]; s != dt.Round((hi-lo)/15) || z != dt.Round(lo) {
					t.Fatalf("%v row %d group %d: scale %v zero %v, range [%v, %v]", dt, r, j, s, z, lo, hi)
				}
			}
		}
		ex := &WeightOnly{N: n, K: k, DType: dt, Codes: wo.Codes, Bias: wo.Bias,
			Scales: make([]float32, n*6), Zeros: make([]float32, n*6)}
		for i := range ex.Scales {
			ex.Scales[i], ex.Zeros[i] = wo.Scales[i/2], wo.Zeros[i/2]
		}
		a, b := wo.Dequantize(), ex.Dequantize()
		for i := range a {
			if a[i] != b[i] {
				t.Fatalf("%v: dequantized %d = %v, expanded group-64 layer %v", dt, i, a[i], b[i])
			}
		}
		const m = 5
		x := randInput(rng, m, k, false)
		for name, f := range map[string]func(*WeightOnly, []float32){
			"Forward":       func(l *WeightOnly, y []float32) { l.Forward(y, x, m) },
			"ForwardKernel": func(l *WeightOnly, y []float32) { l.ForwardKernel(y, x, m) },
		} {
			ya, yb := make([]float32, m*n), make([]float32, m*n)
			f(wo, ya)
			f(ex, yb)
			for i := range ya {
				if ya[i] != yb[i] {
					t.Fatalf("%v %s: output %d = %v, expanded %v", dt, name, i, ya[i], yb[i])
				}
			}
		}
		// GPTQ keeps the group: groups of 128 columns, valid codes.
		xs := woInputs(rng, 64, k, true)
		gq, ok := GPTQWeightOnlyGroup(w, n, k, 128, bias, dt, xs, 64)
		if !ok || gq.Group != 128 || len(gq.Scales) != n*3 {
			t.Fatalf("%v GPTQ: ok %v group %d scales %d", dt, ok, gq.Group, len(gq.Scales))
		}
		c := NewWeightOnlyCalib(xs, 64, k)
		best, _ := c.BestGroup(w, n, k, 128, bias, dt)
		if best.Group != 128 || len(best.Scales) != n*3 {
			t.Fatalf("%v BestGroup: group %d scales %d", dt, best.Group, len(best.Scales))
		}
		yq := make([]float32, m*n)
		gq.Forward(yq, x, m) // panics on an inconsistent layer
	}
	mustPanic(t, "quant: QuantizeWeightOnly", func() { QuantizeWeightOnlyGroup(w, 2, k, -1, nil, BF16) })
	bad := *wo
	bad.Group = 64 // scales sized for 128
	mustPanic(t, "quant: WeightOnly.Dequantize", func() { bad.Dequantize() })
	mustPanic(t, "quant: GPTQ on W4A16", func() {
		GPTQWeightOnlyGroup(w, 2, k, 96, nil, BF16, woInputs(rand.New(rand.NewPCG(1, 2)), 8, k, true), 8)
	})
}

package lora

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant"
)

// randLayer builds a random W4A4 layer of rank r whose values are all of
// their stored types.
func randLayer(rng *rand.Rand, prec quant.Precision, n, k, r int, dt quant.Float16, unsigned bool) *quant.Layer {
	l := &quant.Layer{Precision: prec, N: n, K: k, R: r, DType: dt, Unsigned: unsigned, TensorScale: 1}
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.05)
	}
	g := func(s float64) float32 { return dt.Round(float32(rng.NormFloat64() * s)) }
	l.Smooth = make([]float32, k)
	for j := range l.Smooth {
		l.Smooth[j] = dt.Round(float32(0.5 + 1.5*rng.Float64()))
	}
	l.Down, l.Up, l.Bias = make([]float32, r*k), make([]float32, n*r), make([]float32, n)
	for i := range l.Down {
		l.Down[i] = g(0.1)
	}
	for i := range l.Up {
		l.Up[i] = g(0.1)
	}
	for i := range l.Bias {
		l.Bias[i] = g(0.1)
	}
	l.Codes, l.Scales = make([]int8, n*k), make([]float32, n*l.Groups())
	if prec == quant.NVFP4 {
		l.TensorScale = quant.NVFP4TensorScale(w)
		quant.QuantizeNVFP4(l.Codes, l.Scales, w, n, k, l.TensorScale)
	} else {
		quant.QuantizeInt4(l.Codes, l.Scales, w, n, k, dt.Round)
	}
	return l
}

// fuseTol is the tolerance table of TestFusedOutput, per emulation path.
// With u32 = 2⁻²⁴ and u16 the unit roundoff of the model dtype (2⁻⁸ BF16,
// 2⁻¹¹ F16), for output n of row x (x16 = round16(x), t_r = x16·Down_r,
// sums over the fused rank unless "new"):
//
//	|y_fused − y_base − Σ_new t_r·Up[n,r]| ≤ out16·(|y_b| + |y_f|) + act16·Σ_new |t_r·Up[n,r]|
//	    + (R + K + 8)·u32·(|y_b| + |y_f| + Σ |t_r·Up[n,r]| + Σ_r |Up[n,r]|·Σ_k |x16_k·Down[r,k]|)
//
// ForwardFast is float32 arithmetic throughout: only the last (standard
// dot-product) term remains — the identity holds "to float32 rounding".
// Forward (the kernel) rounds the output to 16 bits (half an ulp of each
// of y_b and y_f) and each lora activation t_r to 16 bits before the up
// projection (relative u16 on the new terms; the base terms are rounded
// identically in both layers and cancel).
var fuseTol = []struct {
	name         string
	out16, act16 bool
	fwd          func(l *quant.Layer, y, x []float32, m int)
}{
	{"ForwardFast", false, false, (*quant.Layer).ForwardFast},
	{"Forward", true, true, (*quant.Layer).Forward},
}

// TestFusedOutput: fusing a LoRA into a W4A4 layer and going through the
// packed file form leaves every 4-bit value and the base branch bit for
// bit, appends round16(A) and round16(s·B), and the emulated output equals
// the base output plus x·ΔWᵀ within fuseTol.
func TestFusedOutput(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	for _, c := range []struct {
		prec     quant.Precision
		dt       quant.Float16
		unsigned bool
	}{{quant.INT4, quant.BF16, false}, {quant.INT4, quant.F16, true}, {quant.NVFP4, quant.BF16, false}, {quant.NVFP4, quant.F16, false}} {
		const n, k, r0, r, m = 200, 192, 20, 7, 24
		name := fmt.Sprintf("%v/%v/unsigned=%v", c.prec, c.dt, c.unsigned)
		base := randLayer(rng, c.prec, n, k, r0, c.dt, c.unsigned)
		lo := randFactors(rng, "m", r, n, k, 3)
		scale := 0.7 * lo.Alpha / float64(r)
		add := &Branch{N: n, K: k, R: r, Down: append([]float32(nil), lo.A...), Up: make([]float32, n*r)}
		for i, v := range lo.B {
			add.Up[i] = float32(scale * float64(v))
		}
		add.Round(c.dt)
		br := LayerBranch(base)
		br.Append(add)
		fusedIn := *base
		br.SetOn(&fusedIn)
		ts, err := nunchaku.PackW4A4(&fusedIn)
		if err != nil {
			t.Fatal(err)
		}
		fused, err := nunchaku.UnpackW4A4(nunchaku.MapGetter(ts), nunchaku.W4A4Options{N: n, K: k, R: r0 + r, Unsigned: c.unsigned})
		if err != nil {
			t.Fatal(err)
		}
		if !equalBits(fused.Scales, base.Scales) || string(i8(fused.Codes)) != string(i8(base.Codes)) ||
			!equalBits(fused.Smooth, base.Smooth) || !equalBits(fused.Bias, base.Bias) || fused.TensorScale != base.TensorScale {
			t.Fatalf("%s: a 4-bit value, scale, smoothing or bias changed", name)
		}
		for rr := 0; rr < r0+r; rr++ {
			wantDown := base.Down
			if rr >= r0 {
				wantDown = add.Down
			}
			j := rr % r0
			if rr >= r0 {
				j = rr - r0
			}
			if !equalBits(fused.Down[rr*k:(rr+1)*k], wantDown[j*k:(j+1)*k]) {
				t.Fatalf("%s: down row %d", name, rr)
			}
			for i := 0; i < n; i++ {
				want := base.Up[i*r0+j%max(r0, 1)]
				if rr >= r0 {
					want = add.Up[i*r+j]
				}
				if fused.Up[i*(r0+r)+rr] != want {
					t.Fatalf("%s: up[%d, %d]", name, i, rr)
				}
			}
		}

		x := make([]float32, m*k)
		for i := range x {
			x[i] = float32(rng.NormFloat64())
		}
		u16 := math.Ldexp(1, -8)
		if c.dt == quant.F16 {
			u16 = math.Ldexp(1, -11)
		}
		u32 := math.Ldexp(1, -24)
		R := r0 + r
		for _, tol := range fuseTol {
			yb, yf := make([]float32, m*n), make([]float32, m*n)
			tol.fwd(base, yb, x, m)
			tol.fwd(fused, yf, x, m)
			worst := 0.0
			for row := 0; row < m; row++ {
				x16 := make([]float64, k)
				for j := 0; j < k; j++ {
					x16[j] = float64(c.dt.Round(x[row*k+j]))
				}
				tr := make([]float64, R) // t_r in float64
				xd := make([]float64, R) // Σ_k |x16_k·Down[r,k]|
				for q := 0; q < R; q++ {
					for j := 0; j < k; j++ {
						v := x16[j] * float64(fused.Down[q*k+j])
						tr[q] += v
						xd[q] += math.Abs(v)
					}
				}
				for i := 0; i < n; i++ {
					var delta, newAbs, allAbs, dotAbs float64
					for q := 0; q < R; q++ {
						u := float64(fused.Up[i*R+q])
						allAbs += math.Abs(tr[q] * u)
						dotAbs += math.Abs(u) * xd[q]
						if q >= r0 {
							delta += tr[q] * u
							newAbs += math.Abs(tr[q] * u)
						}
					}
					b, f := float64(yb[row*n+i]), float64(yf[row*n+i])
					bound := float64(R+k+8) * u32 * (math.Abs(b) + math.Abs(f) + allAbs + dotAbs)
					if tol.out16 {
						bound += u16 * (math.Abs(b) + math.Abs(f))
					}
					if tol.act16 {
						bound += u16 * newAbs
					}
					diff := math.Abs(f - b - delta)
					if diff > bound {
						t.Fatalf("%s %s: row %d out %d: fused %v − base %v − x·ΔWᵀ %v = %v > bound %v", name, tol.name, row, i, f, b, delta, diff, bound)
					}
					worst = max(worst, diff/bound)
				}
			}
			t.Logf("%s %s: worst |error|/bound %.3f", name, tol.name, worst)
		}
	}
}

func i8(v []int8) []byte {
	b := make([]byte, len(v))
	for i, x := range v {
		b[i] = byte(x)
	}
	return b
}

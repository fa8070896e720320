package lora

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/svdq/svdq/quant"
)

// gemvBranch emulates nunchaku's GEMV_AWQ::forward with a branch
// (src/Linear.cpp): out = gemv + bias (16-bit), lora_act = gemm_f16(x,
// lora_down) and lora_out = gemm_f16(lora_act, lora_up), each a 16-bit
// tensor from float32 accumulation, then out = round16(out + lora_out).
func gemvBranch(w *quant.WeightOnly, b *Branch, x []float32, m int) []float32 {
	dt := w.DType
	y := make([]float32, m*w.N)
	w.ForwardKernel(y, x, m)
	act := make([]float32, b.R)
	for i := 0; i < m; i++ {
		for r := 0; r < b.R; r++ {
			var s float32
			for k, v := range b.Down[r*b.K : (r+1)*b.K] {
				s += dt.Round(x[i*b.K+k]) * v
			}
			act[r] = dt.Round(s)
		}
		for n := 0; n < b.N; n++ {
			var s float32
			for r, a := range act {
				s += a * b.Up[n*b.R+r]
			}
			y[i*w.N+n] = dt.Round(y[i*w.N+n] + dt.Round(s))
		}
	}
	return y
}

// TestW4A16Choice measures why a W4A16 layer gets a 16-bit branch rather
// than a requantized weight. The target is what the base layer computes
// (nunchaku's 16-bit GEMV, y₀) plus the exact LoRA effect x·ΔWᵀ; errors
// are ‖y − y*‖ / ‖x·ΔWᵀ‖, relative to the LoRA's own effect. Any result
// stored in bf16 is at least the floor ‖round16(y*) − y*‖ away:
//
//   - branch (GEMV_AWQ with lora_down/lora_up): at that floor (16-bit
//     output, activation and factor rounding only), whatever the LoRA's
//     size;
//   - requantize (dequantize, add ΔW, W4A16 again with fresh min/max
//     scales): the 4-bit grid swallows small LoRAs and re-rounds every
//     weight — errors of the order of the LoRA's effect itself, or larger,
//     and irreversible (the base codes are gone).
func TestW4A16Choice(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	const n, k, r, m = 3 * 128, 256, 8, 32
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(rng.NormFloat64() / math.Sqrt(k))
	}
	bias := make([]float32, n)
	for i := range bias {
		bias[i] = float32(rng.NormFloat64() * 0.02)
	}
	base := quant.QuantizeWeightOnly(w, n, k, bias, quant.BF16)
	wq := base.Dequantize()
	x := make([]float32, m*k)
	for i := range x {
		x[i] = quant.RoundBF16(float32(rng.NormFloat64()))
	}
	for _, rel := range []float64{0.01, 0.1, 0.5} { // ‖ΔW‖_F / ‖W‖_F
		f := randFactors(rng, "m", r, n, k, r)
		br := &Branch{N: n, K: k, R: r, Down: f.A, Up: f.B}
		d := br.Delta()
		var dn, wn float64
		for i, v := range d {
			dn += v * v
			wn += float64(w[i]) * float64(w[i])
		}
		s := rel * math.Sqrt(wn/dn)
		for i := range br.Up {
			br.Up[i] = float32(s * float64(br.Up[i]))
		}
		d = br.Delta()
		stored := &Branch{N: n, K: k, R: r, Down: append([]float32(nil), br.Down...), Up: append([]float32(nil), br.Up...)}
		stored.Round(quant.BF16)

		// y* = y₀ + x·ΔWᵀ, the LoRA's effect in float64.
		y0 := make([]float32, m*n)
		base.ForwardKernel(y0, x, m)
		ystar, eff := make([]float64, m*n), make([]float64, m*n)
		for i := 0; i < m; i++ {
			for j := 0; j < n; j++ {
				var e float64
				for c := 0; c < k; c++ {
					e += float64(x[i*k+c]) * d[j*k+c]
				}
				ystar[i*n+j], eff[i*n+j] = float64(y0[i*n+j])+e, e
			}
		}
		relErr := func(y []float32) float64 {
			var num, den float64
			for i := range y {
				num += (float64(y[i]) - ystar[i]) * (float64(y[i]) - ystar[i])
				den += eff[i] * eff[i]
			}
			return math.Sqrt(num / den)
		}
		floor := make([]float32, m*n)
		for i, v := range ystar {
			floor[i] = quant.RoundBF16(float32(v))
		}
		floorErr := relErr(floor)
		branchErr := relErr(gemvBranch(base, stored, x, m))

		merged := make([]float32, n*k)
		for i := range merged {
			merged[i] = float32(float64(wq[i]) + d[i])
		}
		re := quant.QuantizeWeightOnly(merged, n, k, base.Bias, quant.BF16)
		yr := make([]float32, m*n)
		re.ForwardKernel(yr, x, m)
		requantErr := relErr(yr)
		t.Logf("‖ΔW‖/‖W‖ = %.2f: error relative to the LoRA's effect: bf16 floor %.4f, branch %.4f, requantize %.3f",
			rel, floorErr, branchErr, requantErr)
		if branchErr > 1.5*floorErr+0.005 {
			t.Errorf("‖ΔW‖/‖W‖ = %.2f: branch error %v, bf16 floor %v", rel, branchErr, floorErr)
		}
		if requantErr < 3*branchErr {
			t.Errorf("‖ΔW‖/‖W‖ = %.2f: requantization (%v) is not clearly worse than the branch (%v)", rel, requantErr, branchErr)
		}
	}
}

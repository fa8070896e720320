package quant

import (
	"fmt"

	"github.com/svdq/svdq/svd"
)

// The low-rank branch (svdquant.md steps 3–5): L_up = U_r·S_r [N, R] and
// L_down = V_rᵀ [R, K] from a truncated SVD of the smoothed weight, stored
// as Up = L_up and Down = L_down·diag(1/λ) (it multiplies the raw input),
// both rounded to the model dtype before the residual is formed, so the
// residual the kernel quantizes is exactly Ŵ − Up·(Down·diag(λ)).

// refine runs the reference's refinement on member m, whose current fit is
// the one-SVD fit at the chosen λ: L_{k+1} = SVD_R(Ŵ − Q(Ŵres_k)), then
// requantize, for at most cfg.iters iterations, stopping at the first one
// whose output error is not smaller than the best so far (the reference
// stops at the first strictly worse one; a tie means a fixed point here),
// or, when cfg.refineTol > 0, at the first one that improves the error by
// less than that fraction (it is kept). On return m.st is the best fit seen
// and m.deq its dequantized residual; the result is the number of
// iterations run, the stopping one included.
func (g *groupEval) refine(m *memberEval) int {
	if m.r == 0 || g.cfg.iters == 0 {
		return 0
	}
	var best lrState
	best.copyFrom(&m.st)
	iters := 0
	for iters < g.cfg.iters {
		iters++
		parallelRows(len(m.what), func(lo, hi int) { // Ŵ − Q(Ŵres_k): what the branch must absorb
			for i, w := range m.what[lo:hi] {
				m.deq[lo+i] = w - m.deq[lo+i]
			}
		})
		g.fit(m, m.deq, g.cfg.refinePower)
		if m.st.err >= best.err {
			break
		}
		small := m.st.err > best.err*(1-g.cfg.refineTol)
		best.copyFrom(&m.st)
		if small {
			break
		}
	}
	if m.st.err != best.err {
		m.st.copyFrom(&best)
		dequantize(m.deq, &m.st, m.in.N, g.k, g.cfg.prec)
	}
	return iters
}

// layer builds the stored Layer of member m from its current fit; m.deq
// must hold the dequantized residual (for the shift's bias correction).
func (g *groupEval) layer(m *memberEval) *Layer {
	n, k, dt := m.in.N, g.k, g.cfg.dt
	bias := make([]float32, n)
	if m.in.Bias != nil {
		copy(bias, m.in.Bias)
	}
	if g.shift != 0 {
		corr := shiftCorrection(m.deq, n, k, g.lam, g.shift)
		for i := range bias {
			bias[i] = float32(float64(bias[i]) - corr[i])
		}
	}
	for i, b := range bias {
		bias[i] = roundSat(dt, b)
	}
	l := &Layer{
		Precision: g.cfg.prec, N: n, K: k, R: m.r,
		Codes: m.st.codes, Scales: m.st.scales, TensorScale: m.st.ts,
		Smooth: append([]float32(nil), g.lam...),
		Down:   m.st.down, Up: m.st.up, Bias: bias,
		Unsigned: g.shift != 0, DType: dt,
	}
	if err := l.Validate(); err != nil {
		panic("quant: pipeline built an inconsistent layer: " + err.Error())
	}
	return l
}

// SpectrumRank is the number of singular values Spectrum returns at most.
const SpectrumRank = 128

// Spectrum returns the leading min(N, K, SpectrumRank) singular values,
// descending, of W·diag(λ) (W [N, K]; λ [K], or nil for W itself), from a
// randomized SVD with the default options and seed 0: the spectrum the
// low-rank branch sees. Panics on inconsistent lengths.
func Spectrum(w []float32, n, k int, lam []float32) []float64 {
	if n <= 0 || k <= 0 || len(w) != n*k || (lam != nil && len(lam) != k) {
		panic(fmt.Sprintf("quant: Spectrum of %d values as [%d, %d] with %d factors", len(w), n, k, len(lam)))
	}
	a := w
	if lam != nil {
		a = make([]float32, n*k)
		smoothWeight(a, w, n, k, lam)
	}
	t, _ := svd.Randomized(a, n, k, min(n, k, SpectrumRank), svd.RandOptions{})
	return append([]float64(nil), t.S...)
}

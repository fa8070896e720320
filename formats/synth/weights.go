package synth

import (
	"encoding/binary"
	"math"

	"github.com/svdq/svdq/quant"
)

// The Weights pattern (package doc, "Patterns").
const (
	heavyRank      = 16         // components of the low-rank part
	heavyGain      = 0.4        // its first component's gain g_0
	heavyDecay     = 0.8        // g_i = heavyGain·heavyDecay^i
	heavySpikeRate = 1.0 / 2048 // fraction of scattered large entries
	heavyOutCol    = 8          // weight-outlier column factor
)

// newWeightsProfile: mild activations a_k = exp(0.3·g), no activation
// outliers; weight columns c_k = exp(0.25·h) with max(1, k/256) outlier
// columns ×8.
func newWeightsProfile(seed uint64, key string, k int) *profile {
	r := stream(seed, "input-weights", key, 0)
	p := &profile{act: make([]float32, k), wcol: make([]float32, k)}
	for i := range k {
		p.act[i] = float32(math.Exp(0.3 * r.NormFloat64()))
		p.wcol[i] = float32(math.Exp(0.25 * r.NormFloat64()))
	}
	p.wout = pick(r, max(1, k/256), k, nil)
	for _, i := range p.wout {
		p.wcol[i] *= heavyOutCol
	}
	return p
}

// fillHeavy writes the bf16 weight [n, len(col)] into dst (2·n·k bytes):
//
//	w[i,j] = σ·r_i·col_j·(t_ij + Σ_c g_c·u_ic·v_cj)
//
// with σ = 1/√k, t_ij Student-t (ν = 3, unit variance), r_i = exp(0.2·f_i)
// with max(1, n/512) outlier rows ×4, u, v ~ N(0,1), g_c = 0.4·0.8^c for
// c < 16; one entry in 2048 on average (geometric gaps) is multiplied by
// U(8, 16).
func fillHeavy(dst []byte, seed uint64, name string, n int, col []float32) {
	k := len(col)
	r := stream(seed, "weight-heavy", name, 0)
	sigma := 1 / math.Sqrt(float64(k))
	rows := make([]float64, n)
	for i := range rows {
		rows[i] = sigma * math.Exp(0.2*r.NormFloat64())
	}
	for _, i := range pick(r, max(1, n/512), n, nil) {
		rows[i] *= 4
	}
	u := make([]float64, n*heavyRank) // [n, heavyRank], gains folded in
	g := heavyGain
	for c := range heavyRank {
		for i := range n {
			u[i*heavyRank+c] = g * r.NormFloat64()
		}
		g *= heavyDecay
	}
	vt := make([]float64, k*heavyRank) // vᵀ: [k, heavyRank], drawn row by row of v
	for q := range heavyRank {
		for j := range k {
			vt[j*heavyRank+q] = r.NormFloat64()
		}
	}
	next := int(r.ExpFloat64() / heavySpikeRate)
	for i := range n {
		row := dst[2*i*k : 2*(i+1)*k]
		ui := u[i*heavyRank : (i+1)*heavyRank]
		for j, c := range col {
			x := studentT3(r)
			vj := vt[j*heavyRank : (j+1)*heavyRank]
			for q, uq := range ui {
				x += uq * vj[q]
			}
			if next--; next < 0 {
				x *= 8 + 8*r.Float64()
				next = int(r.ExpFloat64() / heavySpikeRate)
			}
			binary.LittleEndian.PutUint16(row[2*j:], quant.F32ToBF16(float32(rows[i]*float64(c)*x)))
		}
	}
}

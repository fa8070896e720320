package synth

import "math"

// The Massive pattern (package doc, "Patterns").
const (
	massiveChannels   = 4        // massive channels per input
	massiveSpread     = 0.2      // log-normal spread of a massive value across tokens
	outlierTokenRate  = 1.0 / 32 // fraction of tokens that are token-wise outliers
	outlierTokenMinLg = 0.5      // their scale is 10^U(0.5, 1): ×3.2–10
)

// newMassiveProfile: log-normal channels a_k = exp(0.4·g) and ordinary
// weight columns c_k = exp(0.25·h); massiveChannels channels get a fixed
// sign and a magnitude 10^U(2,3) (the median a_k is 1).
func newMassiveProfile(seed uint64, key string, k int) *profile {
	r := stream(seed, "input-massive", key, 0)
	p := &profile{act: make([]float32, k), wcol: make([]float32, k), mass: make([]float32, k)}
	for i := range k {
		p.act[i] = float32(math.Exp(0.4 * r.NormFloat64()))
		p.wcol[i] = float32(math.Exp(0.25 * r.NormFloat64()))
	}
	p.outliers = pick(r, min(massiveChannels, k), k, nil)
	for _, i := range p.outliers {
		m := math.Pow(10, 2+r.Float64())
		if r.IntN(2) == 0 {
			m = -m
		}
		p.mass[i] = float32(m)
	}
	return p
}

// massiveTokens: t_s = exp(0.3·e_s), and one token in 32 (on average) is
// a token-wise outlier with t_s multiplied by 10^U(0.5, 1).
func massiveTokens(seed uint64, s int) []float64 {
	r := stream(seed, "tokens-massive", "", 0)
	t := make([]float64, s)
	for i := range t {
		t[i] = math.Exp(0.3 * r.NormFloat64())
		if r.Float64() < outlierTokenRate {
			t[i] *= math.Pow(10, outlierTokenMinLg+(1-outlierTokenMinLg)*r.Float64())
		}
	}
	return t
}

// massiveRow: ordinary channels t·a_k·z; a massive channel
// m_k·exp(0.2·z) whatever the token (|m_k| on shifted inputs, which a
// GELU output can only carry with a positive sign); then GELU when shifted.
func massiveRow(x []float32, seed uint64, key string, s int, t float64, p *profile, shifted bool) {
	r := stream(seed, "sample-massive", key, s)
	for k, a := range p.act {
		z := r.NormFloat64()
		v := t * float64(a) * z
		if m := float64(p.mass[k]); m != 0 {
			if shifted {
				m = math.Abs(m)
			}
			v = m * math.Exp(massiveSpread*z)
		}
		if shifted {
			v = gelu(v)
		}
		x[k] = float32(v)
	}
}

// massiveBound: |m_j|·exp(0.2·4) on a massive channel, else 4·a_j·tmax.
func massiveBound(p *profile, j int, tmax float64) float32 {
	if m := p.mass[j]; m != 0 {
		return float32(math.Abs(float64(m)) * math.Exp(massiveSpread*absmaxBound))
	}
	return alignedBound(p, j, tmax)
}

package synth

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// A Pattern names one distribution of weights and calibration activations
// (package doc, "Patterns"). The zero value means Aligned.
type Pattern string

// The patterns. Their parameters were fixed from the literature cited in
// the package doc before any quantization was run on them; they are not
// tuned to make a method win.
const (
	// Aligned: activation outliers ×16–64 meeting small weight columns
	// (the original distribution; its bytes never change).
	Aligned Pattern = "aligned"
	// Massive: a handful of near-constant channels 100–1000× the median
	// with ordinary weights, plus token-wise outliers.
	Massive Pattern = "massive"
	// Weights: Student-t (ν = 3) weights with outlier columns, scattered
	// large entries and a decaying low-rank component; mild activations.
	Weights Pattern = "weights"
)

// Patterns lists the pattern names, the default first.
func Patterns() []string { return []string{string(Aligned), string(Massive), string(Weights)} }

// distribution is how one pattern draws each part of the files.
type distribution struct {
	// profile draws the channel profile of the input called key, k channels.
	profile func(seed uint64, key string, k int) *profile
	// weight writes the bf16 weight [n, len(col)] of a quantized layer's
	// source tensor into dst (2·n·len(col) bytes), col = the profile's wcol.
	weight func(dst []byte, seed uint64, name string, n int, col []float32)
	// tokens returns t_s for the S calibration rows (shared by all inputs).
	tokens func(seed uint64, s int) []float64
	// sample writes calibration row s of one input segment into x
	// (len(x) == len(p.act)); shifted inputs go through GELU.
	sample func(x []float32, seed uint64, key string, s int, t float64, p *profile, shifted bool)
	// bound is the expected maximum |x| of channel j over tokenCount
	// tokens, tmax = max of tokens' t_s; input_absmax is
	// max(sample maximum, bound).
	bound func(p *profile, j int, tmax float64) float32
}

// distributions is the table of patterns.
var distributions = map[Pattern]distribution{
	Aligned: {profile: newProfile, weight: fillLinear, tokens: tokenScales, sample: sampleRow, bound: alignedBound},
	Massive: {profile: newMassiveProfile, weight: fillLinear, tokens: massiveTokens, sample: massiveRow, bound: massiveBound},
	Weights: {profile: newWeightsProfile, weight: fillHeavy, tokens: tokenScales, sample: sampleRow, bound: alignedBound},
}

// lookupPattern returns the distribution of a pattern name ("" = Aligned).
func lookupPattern(name string) (Pattern, distribution, error) {
	p := Pattern(name)
	if p == "" {
		p = Aligned
	}
	d, ok := distributions[p]
	if !ok {
		return "", distribution{}, fmt.Errorf("synth: unknown pattern %q (want one of %v)", name, Patterns())
	}
	return p, d, nil
}

// alignedBound: 4·a_j·tmax, the expected maximum of |t·a_j·z| over
// tokenCount tokens.
func alignedBound(p *profile, j int, tmax float64) float32 {
	return float32(absmaxBound * float64(p.act[j]) * tmax)
}

// studentT3 draws Student's t with ν = 3, scaled to unit variance
// (Var t₃ = 3): z / √(χ²₃/3) / √3 = z / √χ²₃, with χ²₃ = 2·Exp(1) + g²
// (never 0: ExpFloat64 > 0).
func studentT3(r *rand.Rand) float64 {
	z := r.NormFloat64()
	g := r.NormFloat64()
	chi := 2*r.ExpFloat64() + g*g
	return z / math.Sqrt(chi)
}

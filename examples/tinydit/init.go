package tinydit

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/svdq/svdq/quant"
)

// The weight distributions of the package doc ("Weights"). Every tensor has
// its own PCG stream seeded from (Config.Seed, tensor name), so a tensor's
// values do not depend on the order in which the model is built, and every
// value is rounded to bf16: the float32 model IS the 16-bit checkpoint.

// stream returns the PCG stream of (seed, kind, name).
func stream(seed uint64, kind, name string) *rand.Rand {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(name))
	s := h.Sum64()
	return rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))
}

// studentT4 draws a Student-t variate with 4 degrees of freedom scaled to
// unit variance: the heavy-tailed entries of trained weight matrices
// (kurtosis well above the Gaussian's 3).
func studentT4(r *rand.Rand) float64 {
	z := r.NormFloat64()
	var chi float64
	for range 4 {
		g := r.NormFloat64()
		chi += g * g
	}
	return z / math.Sqrt(chi/4) / math.Sqrt2 // Var t₄ = 4/(4−2) = 2
}

// pickChannels returns n distinct sorted indices of [0, k).
func pickChannels(r *rand.Rand, n, k int) []int {
	n = min(n, k)
	seen := make(map[int]bool, n)
	out := make([]int, 0, n)
	for len(out) < n {
		i := r.IntN(k)
		if !seen[i] {
			seen[i] = true
			out = append(out, i)
		}
	}
	sort.Ints(out)
	return out
}

// weightSpec shapes one linear weight [n, k] drawn by heavyWeight.
type weightSpec struct {
	gain     float64 // overall scale times 1/√k
	rowOut   int     // rows whose scale is multiplied by rowGain
	rowGain  float64 //
	colOut   int     // input columns whose scale is multiplied by colGain (weight outliers)
	colGain  float64 //
	rowSigma float64 // log-normal spread of the row scales
	colSigma float64 // log-normal spread of the column scales
}

// defaultWeight is the distribution of a generic linear weight: Student-t₄
// entries, log-normal row and column scales, and max(1, k/128) weight-outlier
// input columns 4× larger.
func defaultWeight(k int) weightSpec {
	return weightSpec{gain: 1, colOut: max(1, k/128), colGain: 4, rowSigma: 0.2, colSigma: 0.25}
}

// heavyWeight draws w[i, j] = gain/√k · r_i · c_j · t₄ into a new [n, k]
// slice, rounded to bf16. It also returns the outlier rows it chose.
func heavyWeight(r *rand.Rand, n, k int, s weightSpec) (w []float32, hotRows []int) {
	rows := make([]float64, n)
	for i := range rows {
		rows[i] = math.Exp(s.rowSigma * r.NormFloat64())
	}
	cols := make([]float64, k)
	for j := range cols {
		cols[j] = math.Exp(s.colSigma * r.NormFloat64())
	}
	if s.rowOut > 0 {
		hotRows = pickChannels(r, s.rowOut, n)
		for _, i := range hotRows {
			rows[i] *= s.rowGain
		}
	}
	if s.colOut > 0 {
		for _, j := range pickChannels(r, s.colOut, k) {
			cols[j] *= s.colGain
		}
	}
	sigma := s.gain / math.Sqrt(float64(k))
	w = make([]float32, n*k)
	for i := range n {
		for j := range k {
			w[i*k+j] = quant.RoundBF16(float32(sigma * rows[i] * cols[j] * studentT4(r)))
		}
	}
	return w, hotRows
}

// normalVec returns n values mean + sd·N(0,1), rounded to bf16.
func normalVec(r *rand.Rand, n int, mean, sd float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = quant.RoundBF16(float32(mean + sd*r.NormFloat64()))
	}
	return v
}

// logUniform returns 2^U(lo, hi).
func logUniform(r *rand.Rand, lo, hi float64) float64 {
	return math.Exp2(lo + (hi-lo)*r.Float64())
}

// sign returns ±1 with equal probability.
func sign(r *rand.Rand) float64 {
	if r.IntN(2) == 0 {
		return -1
	}
	return 1
}

// quantBF16 rounds f to the nearest bf16 value.
func quantBF16(f float64) float32 { return quant.RoundBF16(float32(f)) }

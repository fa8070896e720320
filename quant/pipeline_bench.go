package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"
)

// A FLUX-shaped layer benchmark for `svdq bench cpu`, on a synthetic layer
// drawn like formats/synth's checkpoints (its doc.go, "Distribution").

// LayerBench is the outcome of BenchLayer.
type LayerBench struct {
	N, K      int
	Search    SearchMode
	Seconds   float64 // wall time of QuantizeGroup
	RelError  float64 // Result.RelError
	Evaluated int     // smoothing candidates evaluated
	Iters     int     // refinement iterations run
}

// BenchLayer quantizes one synthetic FLUX-like layer [n, k] with 256
// calibration rows (INT4, rank 32, bf16, the given search, default
// refinement) and returns the wall time of QuantizeGroup, its error and its
// work. The layer is generated before the clock starts (seeded: the same
// layer every call). It panics when n or k is not positive.
func BenchLayer(n, k int, mode SearchMode) (LayerBench, error) {
	if n <= 0 || k <= 0 {
		panic(fmt.Sprintf("quant: BenchLayer: bad shape [%d, %d]", n, k))
	}
	in, c := fluxLikeLayer(n, k, DefaultMaxRows, 1, false)
	start := time.Now()
	res, err := QuantizeGroup([]Input{in}, false, c, Options{Search: mode, Seed: 1})
	if err != nil {
		return LayerBench{}, err
	}
	return LayerBench{N: n, K: k, Search: mode, Seconds: time.Since(start).Seconds(),
		RelError: res[0].RelError, Evaluated: res[0].Evaluated, Iters: res[0].Iters}, nil
}

// fluxLikeLayer draws a layer [n, k] and s calibration rows the way
// formats/synth does: log-normal activation channels (σ 0.4) with
// max(2, k/256) outliers ×16–64 meeting weight columns /16, max(1, k/512)
// weight-outlier columns ×6, log-normal weight columns (σ 0.25) and rows
// (σ 0.2) with max(1, n/512) outlier rows ×4, one weight in 4096 ×8, per-token
// scales exp(0.3·e); gelu passes the rows through GELU (an MLP's second
// linear). AbsMax is max(sample max, 4·a_k·max token scale), the expected
// maximum over many more tokens. The name is "flux-like".
func fluxLikeLayer(n, k, s int, seed uint64, gelu bool) (Input, Calib) {
	rng := rand.New(rand.NewPCG(seed, 0xf1c5_11ce+uint64(n*7+k)))
	w := make([]float32, n*k)
	x := make([]float32, s*k)
	act := make([]float64, k)
	col := make([]float64, k)
	for j := range act {
		act[j] = math.Exp(0.4 * rng.NormFloat64())
		col[j] = math.Exp(0.25 * rng.NormFloat64())
	}
	perm := rng.Perm(k)
	nAct, nW := max(2, k/256), max(1, k/512)
	for _, j := range perm[:nAct] {
		act[j] *= 16 + 48*rng.Float64()
		col[j] /= 16
	}
	for _, j := range perm[nAct : nAct+nW] {
		col[j] *= 6
	}
	row := make([]float64, n)
	for i := range row {
		row[i] = math.Exp(0.2 * rng.NormFloat64())
	}
	for _, i := range rng.Perm(n)[:max(1, n/512)] {
		row[i] *= 4
	}
	sd := 1 / math.Sqrt(float64(k))
	for i := 0; i < n; i++ {
		for j := 0; j < k; j++ {
			v := sd * row[i] * col[j] * rng.NormFloat64()
			if rng.IntN(4096) == 0 {
				v *= 8
			}
			w[i*k+j] = float32(v)
		}
	}
	absMax := make([]float32, k)
	maxTok := 0.0
	for i := 0; i < s; i++ {
		t := math.Exp(0.3 * rng.NormFloat64())
		maxTok = max(maxTok, t)
		for j := 0; j < k; j++ {
			v := t * act[j] * rng.NormFloat64()
			if gelu {
				v = v * 0.5 * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(v+0.044715*v*v*v)))
			}
			x[i*k+j] = float32(v)
			absMax[j] = max(absMax[j], float32(math.Abs(v)))
		}
	}
	for j := range absMax {
		absMax[j] = max(absMax[j], float32(4*act[j]*maxTok))
	}
	bias := make([]float32, n)
	for i := range bias {
		bias[i] = float32(0.02 * rng.NormFloat64())
	}
	name := "flux-like"
	return Input{Name: name, W: w, N: n, K: k, Bias: bias}, Calib{X: x, S: s, AbsMax: absMax}
}

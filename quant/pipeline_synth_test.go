package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Synthetic layers for the pipeline tests: seeded weights and calibration
// rows with the outlier patterns SVDQuant addresses. Scales are chosen to
// look like transformer linears (W entries ~ 1/√K, activations ~ 1), not
// tuned to any method.

// synthPattern names one outlier pattern.
type synthPattern string

const (
	// A few input channels carry huge activations and the matching weight
	// columns are large too (attention and MLP inputs of DiTs).
	patActOutliers synthPattern = "act-outliers"
	// Student-t (ν = 3) weights with scattered large entries; activations
	// with log-normal per-channel scales.
	patHeavyTail synthPattern = "heavy-tail"
	// A strong rank-8 component plus noise in the weight, and a few
	// moderately large activation channels.
	patLowRank synthPattern = "lowrank-noise"
	// The distribution of formats/synth's checkpoints (its doc.go): log-normal
	// activation channels with K/256 outliers ×16–64 meeting small weight
	// columns, a few ×6 weight-outlier columns, ×4 outlier rows, sparse ×8
	// heavy tails and per-token scales. Not in synthPatterns (the accuracy
	// table); the speed harness and the fast-vs-full check use it.
	patFluxLike synthPattern = "flux-like"
)

var synthPatterns = []synthPattern{patActOutliers, patHeavyTail, patLowRank}

// synthCase is one generated layer with its calibration data.
type synthCase struct {
	name    string
	pattern synthPattern
	in      Input
	c       Calib
}

func (sc synthCase) String() string { return sc.name }

// newSynth generates a layer [n, k] of the given pattern with s
// calibration rows; gelu makes the input a GELU output (≥ −0.17), as the
// MLP's second linear sees it.
func newSynth(p synthPattern, n, k, s int, seed uint64, gelu bool) synthCase {
	if p == patFluxLike {
		name := fmt.Sprintf("%s[%d,%d]", p, n, k)
		in, c := fluxLikeLayer(n, k, s, seed, gelu)
		in.Name = name
		return synthCase{name: name, pattern: p, in: in, c: c}
	}
	rng := rand.New(rand.NewPCG(seed, uint64(len(p))*0x9e3779b97f4a7c15+uint64(n*7+k)))
	w := make([]float32, n*k)
	x := make([]float32, s*k)
	chScale := make([]float64, k) // activation scale per channel
	for j := range chScale {
		chScale[j] = 1
	}
	sd := 1 / math.Sqrt(float64(k))
	switch p {
	case patActOutliers:
		for i := range w {
			w[i] = float32(rng.NormFloat64() * sd)
		}
		for _, j := range rng.Perm(k)[:max(2, k/64)] {
			chScale[j] = 20 + 60*rng.Float64()
			f := 2 + 4*rng.Float64()
			for r := 0; r < n; r++ {
				w[r*k+j] *= float32(f)
			}
		}
	case patHeavyTail:
		for i := range w {
			w[i] = float32(studentT(rng, 3) * sd)
			if rng.Float64() < 0.002 {
				w[i] *= 15
			}
		}
		for j := range chScale {
			chScale[j] = math.Exp(0.8 * rng.NormFloat64())
		}
	case patLowRank:
		const r = 8
		a := make([]float64, n*r)
		b := make([]float64, r*k)
		for i := range a {
			a[i] = rng.NormFloat64()
		}
		for i := range b {
			b[i] = rng.NormFloat64()
		}
		for i := 0; i < n; i++ {
			for j := 0; j < k; j++ {
				var v float64
				for t := 0; t < r; t++ {
					v += a[i*r+t] * b[t*k+j] * math.Pow(0.7, float64(t))
				}
				w[i*k+j] = float32(3*sd*v/math.Sqrt(r) + sd*rng.NormFloat64())
			}
		}
		for _, j := range rng.Perm(k)[:max(2, k/32)] {
			chScale[j] = 5 + 10*rng.Float64()
		}
	default:
		panic(fmt.Sprintf("unknown pattern %q", p))
	}
	for i := 0; i < s; i++ {
		for j := 0; j < k; j++ {
			v := rng.NormFloat64() * chScale[j]
			if gelu {
				v = v * 0.5 * (1 + math.Erf(v/math.Sqrt2))
			}
			x[i*k+j] = float32(v)
		}
	}
	bias := make([]float32, n)
	for i := range bias {
		bias[i] = float32(0.1 * rng.NormFloat64())
	}
	absMax := make([]float32, k)
	for i := 0; i < s; i++ {
		for j := 0; j < k; j++ {
			absMax[j] = max(absMax[j], abs32(x[i*k+j]))
		}
	}
	name := fmt.Sprintf("%s[%d,%d]", p, n, k)
	return synthCase{
		name: name, pattern: p,
		in: Input{Name: name, W: w, N: n, K: k, Bias: bias},
		c:  Calib{X: x, S: s, AbsMax: absMax},
	}
}

// studentT draws from Student's t with nu degrees of freedom.
func studentT(rng *rand.Rand, nu int) float64 {
	var chi float64
	for range nu {
		g := rng.NormFloat64()
		chi += g * g
	}
	return rng.NormFloat64() / math.Sqrt(chi/float64(nu))
}

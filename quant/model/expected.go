package model

import (
	"runtime"
	"time"

	"github.com/svdq/svdq/quant"
)

// The expected-time model printed when quantize starts. Measured: a
// full-size synthetic FLUX.1-dev (8,607 M W4A4 weights, 3,228 M W4A16) took
// 12 min 25 s with the fast smoothing search and 45 min 38 s with the full
// one, 2 workers on a quiet 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-06
// (docs/cpu-performance.md). A W4A16 weight costs 0.24 of a W4A4 weight
// (per-layer times of the same model, docs/cost-model.md). Time scales
// about with the weights and inversely with the cores used.
const (
	measuredWeights = 8607 + 0.24*3228 // M W4A4-equivalent weights
	measuredCores   = 2
)

var measuredSeconds = map[quant.SearchMode]float64{quant.SearchFast: 745, quant.SearchFull: 2738}

// Expected returns the model's time for quantizing p with the given search
// and workers on this machine (ok false for a search that was not
// measured). It is an estimate for the user, not a promise: other CPUs
// (without AVX-512, say) and a loaded machine take longer.
func (p *Plan) Expected(search quant.SearchMode, workers int) (d time.Duration, ok bool) {
	s, ok := measuredSeconds[search]
	if !ok {
		return 0, false
	}
	var w float64
	for _, l := range p.Layers {
		mw := float64(l.N) * float64(l.K) / 1e6
		if l.Precision == "w4a16" || l.Precision == "w4a16g128" {
			mw *= 0.24
		}
		w += mw
	}
	cores := float64(max(1, min(workers, runtime.NumCPU())))
	return time.Duration(s * w / measuredWeights * measuredCores / cores * float64(time.Second)), true
}

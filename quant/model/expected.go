package model

import (
	"runtime"
	"time"

	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/quant"
)

// The expected-time model printed when quantize starts. Measured: a
// full-size synthetic FLUX.1-dev (8,607 M W4A4 weights, 3,228 M W4A16) took
// 12 min 25 s with the fast smoothing search and 45 min 38 s with the full
// one, 2 workers on a quiet 2-core AMD EPYC (Zen 4, AVX-512), 2026-12-06
// (docs/cpu-performance.md). Time scales about with the weights, each
// weighed by its role's cost (roleCost, shard.go: a W4A16 weight costs
// 0.24 of a W4A4 one), and inversely with the cores used.
const measuredCores = 2

// measuredWeights is the measured model's weights in W4A4 weights (M).
var measuredWeights = 8607 + roleCost[preset.W4A16]*3228

var measuredSeconds = map[quant.SearchMode]float64{quant.SearchFast: 745, quant.SearchFull: 2738}

// Measured returns the measured time of the full-size FLUX.1-dev above
// with the given search (ok false for a search that was not measured).
func Measured(search quant.SearchMode) (d time.Duration, ok bool) {
	s, ok := measuredSeconds[search]
	return time.Duration(s) * time.Second, ok
}

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
	for i := range p.Layers {
		w += p.Layers[i].cost() / 1e6
	}
	cores := float64(max(1, min(workers, runtime.NumCPU())))
	return time.Duration(s * w / measuredWeights * measuredCores / cores * float64(time.Second)), true
}

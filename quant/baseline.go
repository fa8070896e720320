package quant

import "fmt"

// Baselines of svdquant.md ("Baselines every accuracy table shows"), each
// measured like Result.RelError: the stored layer's output on the same
// calibration rows against X·Wᵀ + b, relative to ‖X·Wᵀ‖_F.

// Baseline keys, in the order the accuracy tables print them.
var BaselineKeys = []string{"naive_w4a4", "smoothquant_w4a4", "lowrank_w4a4", "svdquant_plain", "w4a16"}

// baselineConfigs declares the W4A4 baselines as pipeline variants; opt
// supplies precision, rank, search mode, dtype, seed and rows.
func baselineConfigs(opt Options) map[string]pipeConfig {
	base := pipeConfig{prec: opt.Precision, dt: opt.DType, seed: opt.Seed, maxRows: opt.MaxRows, search: opt.Search}
	none := SmoothCandidate{0, 0}
	with := func(rank int, fixed *SmoothCandidate) pipeConfig {
		c := base
		c.rank, c.fixed = rank, fixed
		return c
	}
	sq := with(0, nil) // SmoothQuant: the same search, no branch
	if opt.Search == SearchOff {
		sq.fixed = &plainCandidate
	}
	return map[string]pipeConfig{
		"naive_w4a4":       with(0, &none),                  // no smoothing, no branch
		"smoothquant_w4a4": sq,                              // smoothing only
		"lowrank_w4a4":     with(opt.Rank, &none),           // rank R, no smoothing, one SVD
		"svdquant_plain":   with(opt.Rank, &plainCandidate), // α = β = 0.5, one SVD, no refinement
	}
}

// Baselines returns the relative output error of the baselines on the
// layer in, with the calibration rows and the options QuantizeGroup uses
// (opt.Iters and opt.GPTQ do not apply): keys naive_w4a4 (no smoothing, no
// low rank), smoothquant_w4a4 (the same smoothing search, no low rank),
// lowrank_w4a4 (rank R, no smoothing), svdquant_plain (α = β = 0.5, one
// SVD, no refinement) and w4a16 (QuantizeWeightOnly, activations in
// float32). shifted is as for QuantizeGroup and applies to the W4A4 ones.
func Baselines(in Input, shifted bool, c Calib, opt Options) (map[string]float64, error) {
	opt = opt.withDefaults()
	ins := []Input{in}
	if err := checkInputs(ins, c); err != nil {
		return nil, err
	}
	out := make(map[string]float64, len(BaselineKeys))
	for key, cfg := range baselineConfigs(opt) {
		res, err := runPipeline(ins, shifted, c, cfg)
		if err != nil {
			return nil, fmt.Errorf("baseline %s: %w", key, err)
		}
		out[key] = res[0].RelError
	}
	x, s := calibRows(c, in.K, opt.MaxRows)
	yref := make([]float64, s*in.N)
	RefOutput(yref, x, s, in.K, in.W, in.N, in.Bias)
	wo := QuantizeWeightOnly(in.W, in.N, in.K, in.Bias, opt.DType)
	yq := make([]float32, s*in.N)
	wo.Forward(yq, x, s)
	// RelError against X·Wᵀ + b, rescaled to ‖X·Wᵀ‖ like the others.
	var num, den float64
	for i, r := range yref {
		d := float64(yq[i]) - r
		num += d * d
		if in.Bias != nil {
			r -= float64(in.Bias[i%in.N])
		}
		den += r * r
	}
	out["w4a16"] = relFromSquared(num, den)
	return out, nil
}

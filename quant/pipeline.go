package quant

import (
	"fmt"
	"math"
)

// The SVDQuant layer pipeline (svdquant.md, steps 1–6): for a group of
// linear layers that read the same input, search one smoothing vector λ,
// then give every member a rank-R low-rank branch from a truncated SVD of
// its smoothed weight, refine the branch, and quantize the residual to 4
// bits. The objective everywhere is the squared output error on calibration
// rows with 4-bit activations, measured by the fast emulation in
// pipeline_eval.go; the reported error of the final layer comes from the
// layer as stored (pipeline_measure.go).

// Pipeline defaults (deepcompressor's examples/diffusion/configs/svdquant).
const (
	DefaultRank    = 32  // low-rank branch rank
	DefaultIters   = 100 // refinement iterations at most (the first worse one stops them)
	DefaultMaxRows = 256 // calibration rows in the objective (ours)
)

// The fast search's economies (pipeline_speed_test.go measures them; see
// NOTES.md): candidates ranked on an evenly spread quarter of the rows, and
// a refinement capped at fastIters iterations that also stops at the first
// one gaining less than fastRefineTol of the error (the gain per iteration
// falls below 0.1% after 5–10 iterations on every synthetic pattern).
//
// The full search ranks its 39 candidates on the same quarter of the rows
// and evaluates the fullRecheck best of them again on every row: the
// choice is the reference's whenever its best candidate is among those.
var (
	fullRankRows    = 64
	fullRecheck     = 4
	fullRefineTol   = 2e-4
	refineRanked    = true
	fastRankRows    = 64
	fastIters       = 6
	fastRefinePower = -1
	fastOversample  = 8
	fastRefineTol   = 1e-3
)

// Input is one linear layer y = x·Wᵀ + b to quantize.
type Input struct {
	Name string    // tensor name, for error messages
	W    []float32 // [N, K] row-major
	N, K int
	Bias []float32 // [N], or nil for none
}

// Calib holds the calibration statistics of a layer's input.
type Calib struct {
	X      []float32 // [S, K] raw input rows (tokens), row-major
	S      int
	AbsMax []float32 // [K] max |x_j| over every calibration token, not only the rows in X
}

// SearchMode selects how the smoothing exponents (α, β) are chosen.
type SearchMode uint8

const (
	// SearchFull evaluates the reference's 39 candidates (SmoothCandidates),
	// ranked on a quarter of the objective's rows, and evaluates the best 4
	// again on every row to choose; the refinement stops at the first
	// iteration that is not better or gains less than 0.02%.
	SearchFull SearchMode = iota
	// SearchFast evaluates a coarse subset of the same grid (α = 0.25, 0.5,
	// 0.75 in both families, plus (0, 0)), then walks the fine grid (step
	// 0.05) from the best coarse point while the error improves (and from
	// the other family's best when it is within 2%): 9–12 candidates, ranked
	// on a quarter of the rows. Its refinement is judged on those rows too
	// and runs at most 6 iterations, stopping below a 0.1% gain.
	SearchFast
	// SearchOff uses the fixed (α, β) = (0.5, 0.5) of plain SVDQuant; the
	// refinement of the low-rank branch still runs.
	SearchOff
)

// String returns "full", "fast" or "off".
func (m SearchMode) String() string {
	switch m {
	case SearchFull:
		return "full"
	case SearchFast:
		return "fast"
	case SearchOff:
		return "off"
	}
	return fmt.Sprintf("SearchMode(%d)", uint8(m))
}

// ParseSearchMode accepts "full", "fast" or "off".
func ParseSearchMode(s string) (SearchMode, error) {
	for _, m := range []SearchMode{SearchFull, SearchFast, SearchOff} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown smoothing search %q (want full, fast or off)", s)
}

// Options configures QuantizeGroup. The zero value selects the defaults:
// INT4, rank 32, full search, up to 100 refinement iterations, no GPTQ,
// bf16, 256 calibration rows.
type Options struct {
	Precision Precision  // INT4 or NVFP4; 0 means INT4
	Rank      int        // low-rank branch rank; 0: DefaultRank; negative: no branch
	Search    SearchMode // smoothing search
	Iters     int        // refinement iterations at most (SearchFast: at most 6 whatever this); 0: DefaultIters; negative: none
	GPTQ      bool       // quantize the final residual with GPTQ (damp 0.01, block 128)
	DType     Float16    // storage type of the 16-bit values
	Seed      uint64     // seed of the randomized SVD
	MaxRows   int        // calibration rows in the objective; 0: DefaultMaxRows
	// Pow2TensorScale rounds NVFP4's per-tensor scale up to a power of two
	// (Pow2Up), for loaders that take it only as a uniform per-channel
	// scale (nunchaku's SDXL: no wtscale, wcscales required).
	Pow2TensorScale bool
}

// withDefaults returns o with its zero fields replaced by the defaults; it
// panics on values no caller can mean.
func (o Options) withDefaults() Options {
	if o.Precision == 0 {
		o.Precision = INT4
	}
	if o.Precision != INT4 && o.Precision != NVFP4 {
		panic(fmt.Sprintf("quant: bad precision %v", o.Precision))
	}
	if o.Search > SearchOff {
		panic(fmt.Sprintf("quant: bad search mode %v", o.Search))
	}
	if o.DType != BF16 && o.DType != F16 {
		panic(fmt.Sprintf("quant: bad dtype %v", o.DType))
	}
	switch {
	case o.Rank == 0:
		o.Rank = DefaultRank
	case o.Rank < 0:
		o.Rank = 0
	}
	switch {
	case o.Iters == 0:
		o.Iters = DefaultIters
	case o.Iters < 0:
		o.Iters = 0
	}
	if o.MaxRows <= 0 {
		o.MaxRows = DefaultMaxRows
	}
	return o
}

// Result is the outcome of the pipeline for one layer.
type Result struct {
	Layer       *Layer
	Alpha, Beta float64 // the chosen smoothing exponents (shared by the group)
	// RelError is ‖Y_q − Y‖_F / ‖X·Wᵀ‖_F on the calibration rows of the
	// objective, where Y = X·Wᵀ + b in float64 and Y_q is the stored Layer
	// emulated with 4-bit activations (the bias is in both, so its rounding
	// counts, but a large bias does not dilute the error).
	RelError float64
	// SearchError is the same measure for the chosen λ with one SVD and a
	// round-to-nearest residual, before refinement and GPTQ (fast emulation,
	// bias excluded).
	SearchError float64
	Iters       int  // refinement iterations run, the one that got worse included
	Evaluated   int  // smoothing candidates evaluated (shared by the group)
	GPTQ        bool // the residual was quantized by GPTQ (it beat round-to-nearest)
}

// QuantizeGroup runs the SVDQuant pipeline on layers that read the same
// input tensor (FLUX single-block qkv_proj and mlp_fc1, or a single layer):
// one smoothing vector λ is searched for the group, minimising the sum of
// the members' squared output errors, and each member then gets its own
// SVD, refinement and residual quantization. Fused projections (q|k|v
// along N) arrive as one Input. shifted marks an INT4 input that the kernel
// quantizes unsigned after adding ShiftINT4 (the MLP's second linear); the
// stored Bias then carries −Q(Ŵres)·(ShiftINT4/λ), computed with the
// dequantized residual so that the correction cancels the shift exactly in
// the kernel. NVFP4 ignores shifted.
//
// The activation statistic of the smoothing is c.AbsMax (plus ShiftINT4 in
// the shifted case: the kernel quantizes x + ShiftINT4); the objective uses
// at most opt.MaxRows of c.X's rows, evenly spaced. Results are in the
// order of ins; every value in each Layer is rounded as the file stores it.
// Errors name the offending tensor; inconsistent Options panic.
func QuantizeGroup(ins []Input, shifted bool, c Calib, opt Options) ([]Result, error) {
	opt = opt.withDefaults()
	cfg := pipeConfig{
		prec: opt.Precision, dt: opt.DType, rank: opt.Rank, iters: opt.Iters,
		gptq: opt.GPTQ, seed: opt.Seed, maxRows: opt.MaxRows, search: opt.Search,
		refinePower: refinePower, pow2ts: opt.Pow2TensorScale,
	}
	switch opt.Search {
	case SearchOff:
		cfg.fixed = &plainCandidate
	case SearchFull:
		cfg.rankRows, cfg.recheck, cfg.refineTol = fullRankRows, fullRecheck, fullRefineTol
	case SearchFast:
		cfg.rankRows, cfg.refineRanked = fastRankRows, refineRanked
		cfg.refinePower, cfg.oversample = fastRefinePower, fastOversample
		cfg.iters = min(cfg.iters, fastIters)
		cfg.refineTol = fastRefineTol
	}
	return runPipeline(ins, shifted, c, cfg)
}

// pipeConfig is one variant of the pipeline: QuantizeGroup's and the
// baselines' (baseline.go).
type pipeConfig struct {
	pow2ts  bool // NVFP4 tensor scale rounded up to a power of two
	prec    Precision
	dt      Float16
	rank    int // 0: no low-rank branch
	iters   int // refinement iterations at most
	gptq    bool
	seed    uint64
	maxRows int
	search  SearchMode
	fixed   *SmoothCandidate // when set, no search: this candidate
	// rankRows, when positive, is the number of calibration rows (an evenly
	// spread subset) on which the search ranks candidates; the fit at the
	// chosen λ, the refinement and the reported errors use all rows.
	rankRows int
	// recheck, with rankRows, is the number of best-ranked candidates
	// evaluated again on every row to choose among them.
	recheck int
	// refineRanked makes the refinement judge its iterations on the
	// rankRows rows too.
	refineRanked bool
	// oversample is the randomized SVDs' oversampling (0: svd's default).
	oversample int
	// refinePower is the power iterations of the refinement's warm SVDs
	// (and of the fit at the chosen λ).
	refinePower int
	// refineTol, when positive, also stops the refinement at the first
	// iteration improving the error by less than this fraction.
	refineTol float64
}

// checkInputs validates a group and its calibration data.
func checkInputs(ins []Input, c Calib) error {
	if len(ins) == 0 {
		return fmt.Errorf("quant: empty layer group")
	}
	k := ins[0].K
	for _, in := range ins {
		if in.N <= 0 || in.K <= 0 {
			return fmt.Errorf("%s: bad weight shape [%d, %d]", in.Name, in.N, in.K)
		}
		if in.K != k {
			return fmt.Errorf("%s: %d input channels, but %s of the same group has %d", in.Name, in.K, ins[0].Name, k)
		}
		if len(in.W) != in.N*in.K {
			return fmt.Errorf("%s: weight has %d values, want %d for [%d, %d]", in.Name, len(in.W), in.N*in.K, in.N, in.K)
		}
		if in.Bias != nil && len(in.Bias) != in.N {
			return fmt.Errorf("%s: bias has %d values, want %d", in.Name, len(in.Bias), in.N)
		}
		if i := FirstNonFinite(in.W); i >= 0 {
			return fmt.Errorf("%s: weight element %d (row %d, column %d) is %v", in.Name, i, i/in.K, i%in.K, in.W[i])
		}
		if i := FirstNonFinite(in.Bias); i >= 0 {
			return fmt.Errorf("%s: bias element %d is %v", in.Name, i, in.Bias[i])
		}
	}
	name := ins[0].Name
	if c.S <= 0 || len(c.X) != c.S*k {
		return fmt.Errorf("%s: calibration input has %d values, want %d rows × %d channels", name, len(c.X), c.S, k)
	}
	if len(c.AbsMax) != k {
		return fmt.Errorf("%s: calibration absmax has %d channels, want %d", name, len(c.AbsMax), k)
	}
	if i := FirstNonFinite(c.X); i >= 0 {
		return fmt.Errorf("%s: calibration input row %d channel %d is %v", name, i/k, i%k, c.X[i])
	}
	for j, a := range c.AbsMax {
		if !(a >= 0) || math.IsInf(float64(a), 0) {
			return fmt.Errorf("%s: calibration absmax of channel %d is %v", name, j, a)
		}
	}
	return nil
}

// calibRows returns at most maxRows rows of c.X, evenly spaced (all of them
// when S ≤ maxRows, without copying), and their count.
func calibRows(c Calib, k, maxRows int) ([]float32, int) {
	if c.S <= maxRows {
		return c.X, c.S
	}
	x := make([]float32, maxRows*k)
	for i := 0; i < maxRows; i++ {
		src := i * c.S / maxRows
		copy(x[i*k:(i+1)*k], c.X[src*k:(src+1)*k])
	}
	return x, maxRows
}

// spreadFirst returns a copy of the [s, k] rows x reordered so that its
// first first rows are an evenly spread subset (rows i·s/first) and the
// others follow in their order.
func spreadFirst(x []float32, s, k, first int) []float32 {
	out := make([]float32, 0, s*k)
	picked := make([]bool, s)
	for i := 0; i < first; i++ {
		src := i * s / first
		picked[src] = true
		out = append(out, x[src*k:(src+1)*k]...)
	}
	for i := 0; i < s; i++ {
		if !picked[i] {
			out = append(out, x[i*k:(i+1)*k]...)
		}
	}
	return out
}

// runPipeline is QuantizeGroup for any variant.
func runPipeline(ins []Input, shifted bool, c Calib, cfg pipeConfig) ([]Result, error) {
	if err := checkInputs(ins, c); err != nil {
		return nil, err
	}
	if cfg.refinePower == 0 { // the baselines' configurations
		cfg.refinePower = refinePower
	}
	g := newGroupEval(ins, shifted, c, cfg)

	// Step 2: the smoothing search (each candidate runs steps 3–4).
	best, evaluated := g.search()
	// The fit at the chosen λ and the refinement read every row, or the
	// ranking rows only (cfg.refineRanked).
	if cfg.refineRanked && cfg.rankRows > 0 && cfg.rankRows < g.s {
		g.rows = cfg.rankRows
	}
	g.setCandidate(best)

	out := make([]Result, len(ins))
	for i, m := range g.mem {
		// Steps 3–5 at the chosen λ: one SVD, then the refinement.
		m.basis = m.bestBasis
		g.fit(m, m.what, cfg.refinePower)
		searchErr, searchNorm := m.st.err, g.refNorm(m)
		iters := g.refine(m)
		// Step 6: GPTQ on the final residual, kept only where it wins on
		// every row.
		usedGPTQ := false
		if cfg.gptq {
			if g.rows != g.s {
				g.rows = g.s
				g.setCandidate(best)
				m.st.err = g.outputError(m)
			}
			usedGPTQ = g.gptqResidual(m, c)
		}
		l := g.layer(m)
		rel, err := layerRelError(l, m.in, g.x, g.s, m.yref)
		if err != nil {
			return nil, err
		}
		out[i] = Result{
			Layer: l, Alpha: best.Alpha, Beta: best.Beta,
			RelError: rel, SearchError: relFromSquared(searchErr, searchNorm),
			Iters: iters, Evaluated: evaluated, GPTQ: usedGPTQ,
		}
		m.release()
	}
	return out, nil
}

// relFromSquared turns a squared error and a squared norm into a relative
// error (0 when the reference is zero and the error too).
func relFromSquared(e2, n2 float64) float64 {
	if n2 == 0 {
		if e2 == 0 {
			return 0
		}
		return math.Inf(1)
	}
	return math.Sqrt(e2 / n2)
}

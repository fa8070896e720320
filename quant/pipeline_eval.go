package quant

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/svd"
)

// The objective of the search and the refinement: the squared output error
// on the calibration rows of a fast emulation of the layer, the arithmetic
// of Layer.ForwardFast: the kernel's own activation path (16-bit input,
// x̂ = round16((x + shift)/λ), per-token group quantization as the kernel
// rounds it), the dequantized 4-bit residual, the low-rank branch on the
// 16-bit raw input, the shift's bias correction, float32 products through
// svd.Gemm. The bias is left out (it is the same for every candidate).

// groupEval holds a group's shared state at the current smoothing candidate.
type groupEval struct {
	cfg   pipeConfig
	shift float32   // ShiftINT4 for the unsigned input, else 0
	x     []float32 // [s, k] calibration rows of the objective
	x16   []float32 // [s, k] the same rounded to the dtype (the kernel's input)
	xpre  []float32 // [s, k] x16 + shift in 16-bit arithmetic: the input the kernel smooths
	s, k  int
	rows  int       // rows the objective reads now: the first rows of x (≤ s)
	ax    []float64 // [k] activation statistic (shift included)
	aw    []float64 // [k] weight statistic over the group
	cand  SmoothCandidate
	lam   []float32 // [k] λ of cand, rounded to the dtype
	xq    []float32 // [s, k] dequantized 4-bit activations
	mem   []*memberEval
}

// memberEval holds one member's buffers: about 2.5 copies of its weight
// besides the weight itself.
type memberEval struct {
	in        Input
	r         int       // rank of its branch: min(cfg.rank, N, K)
	yref      []float64 // [s, n] X·Wᵀ in float64
	yrefT     []float64 // [n, s] its transpose, for outputError
	ynorm     float64   // ‖yref‖²
	what      []float32 // [n, k] Ŵ = W·diag(λ)
	deq       []float32 // [n, k] work buffer: SVD target, residual, dequantized residual
	yq        []float32 // [n, s] the output, transposed
	xt        []float32 // [s, r] x16·Downᵀ
	st        lrState   // the current fit
	basis     []float32 // warm start of the next randomized SVD
	bestBasis []float32 // basis after the fit of the best search candidate
}

// lrState is one fit of a member: the stored low-rank branch and the
// quantized residual, with its squared output error.
type lrState struct {
	up, down []float32 // [n, r], [r, k]; down multiplies the raw input
	codes    []int8    // [n, k]
	scales   []float32 // [n, groups]
	ts       float32   // NVFP4 tensor scale; 1 for INT4
	err      float64
}

func (st *lrState) copyFrom(o *lrState) {
	st.up = append(st.up[:0], o.up...)
	st.down = append(st.down[:0], o.down...)
	st.codes = append(st.codes[:0], o.codes...)
	st.scales = append(st.scales[:0], o.scales...)
	st.ts, st.err = o.ts, o.err
}

func newGroupEval(ins []Input, shifted bool, c Calib, cfg pipeConfig) *groupEval {
	k := ins[0].K
	g := &groupEval{cfg: cfg, k: k}
	if shifted && cfg.prec == INT4 {
		g.shift = ShiftINT4
	}
	g.x, g.s = calibRows(c, k, cfg.maxRows)
	g.rows = g.s
	if cfg.rankRows > 0 && cfg.rankRows < g.s {
		g.x = spreadFirst(g.x, g.s, k, cfg.rankRows)
	}
	g.x16 = make([]float32, len(g.x))
	for i, v := range g.x {
		g.x16[i] = cfg.dt.Round(v)
	}
	g.xpre = g.x16
	if g.shift != 0 { // λ-independent: once per layer, not per candidate
		g.xpre = make([]float32, len(g.x16))
		parallelRows(g.s, func(lo, hi int) {
			for i, v := range g.x16[lo*k : hi*k] {
				g.xpre[lo*k+i] = add16(cfg.dt, v, g.shift)
			}
		})
	}
	g.ax = activationStat(c.AbsMax, g.shift)
	g.aw = weightAbsMax(ins)
	g.lam = make([]float32, k)
	g.xq = make([]float32, g.s*k)
	groups := (k + cfg.prec.GroupSize() - 1) / cfg.prec.GroupSize()
	for _, in := range ins {
		n := in.N
		m := &memberEval{
			in:   in,
			r:    min(cfg.rank, n, k),
			yref: make([]float64, g.s*n),
			what: make([]float32, n*k),
			deq:  make([]float32, n*k),
			yq:   make([]float32, g.s*n),
		}
		RefOutput32(m.yref, g.x, g.s, k, in.W, n)
		for _, v := range m.yref {
			m.ynorm += v * v
		}
		m.yrefT = make([]float64, n*g.s)
		for i := 0; i < g.s; i++ {
			for j, v := range m.yref[i*n : (i+1)*n] {
				m.yrefT[j*g.s+i] = v
			}
		}
		m.xt = make([]float32, g.s*m.r)
		m.st = lrState{
			up: make([]float32, n*m.r), down: make([]float32, m.r*k),
			codes: make([]int8, n*k), scales: make([]float32, n*groups), ts: 1,
		}
		g.mem = append(g.mem, m)
	}
	return g
}

// RefOutput32 writes X·Wᵀ (x [s, k], w [n, k], no bias) into the caller's
// y [s, n]: float32 products through svd.Gemm, widened. Against the float64
// product of RefOutput it differs by about 1e-6 of ‖Y‖ (K ≤ 16384), four
// orders below the errors the pipeline measures, at a tenth of the cost
// (RefOutput's float64 gonum GEMM took 0.6 s per 3072×3072 layer with 256
// rows). It panics when a slice is too short.
func RefOutput32(y []float64, x []float32, s, k int, w []float32, n int) {
	if s < 0 || n < 0 || k < 0 || len(y) < s*n || len(x) < s*k || len(w) < n*k {
		panic(fmt.Sprintf("quant: RefOutput32: y %d, x %d, w %d values for s=%d n=%d k=%d", len(y), len(x), len(w), s, n, k))
	}
	y32 := make([]float32, s*n)
	svd.Gemm(false, true, s, n, k, 1, x, k, w, k, 0, y32, n)
	for i, v := range y32 {
		y[i] = float64(v)
	}
}

// release drops a member's large buffers once its layer is built.
func (m *memberEval) release() {
	m.what, m.deq, m.yq, m.yref, m.yrefT, m.st = nil, nil, nil, nil, nil, lrState{}
}

// search runs the configured search and returns the chosen candidate and
// the number of candidates evaluated. Each member remembers the basis of
// its fit at the best candidate, to start the final fit from it.
//
// With cfg.rankRows set, candidates are ranked on that many rows; with
// cfg.recheck > 1 as well, the recheck best of them by that ranking are
// evaluated again on every row, each from its own basis, and the best of
// those wins: the exact objective decides among the close ones.
func (g *groupEval) search() (SmoothCandidate, int) {
	if g.cfg.fixed != nil {
		return *g.cfg.fixed, 1
	}
	if g.cfg.rankRows > 0 {
		g.rows = min(g.cfg.rankRows, g.s)
		defer func() { g.rows = g.s }()
	}
	keep := 1
	if g.cfg.rankRows > 0 && g.cfg.recheck > 1 {
		keep = g.cfg.recheck
	}
	var top []scoredCandidate // the best keep so far, best first
	best, _, n := searchCandidates(g.cfg.search, func(c SmoothCandidate) float64 {
		g.setCandidate(c)
		var sum float64
		for _, m := range g.mem {
			g.fit(m, m.what, searchPower)
			sum += m.st.err
		}
		top = g.insertTop(top, keep, c, sum)
		return sum
	})
	if len(top) > 1 {
		g.rows = g.s
		bestSum := math.Inf(1)
		for _, t := range top {
			g.setCandidate(t.c)
			var sum float64
			for i, m := range g.mem {
				m.basis = t.bases[i]
				g.fit(m, m.what, searchPower)
				sum += m.st.err
			}
			if sum < bestSum { // ties: the better ranked
				bestSum, best = sum, t.c
				for _, m := range g.mem {
					m.bestBasis = append(m.bestBasis[:0], m.basis...)
				}
			}
		}
		return best, n
	}
	for i, m := range g.mem {
		m.bestBasis = top[0].bases[i]
	}
	return best, n
}

// scoredCandidate is a candidate of the search with its objective and the
// members' SVD bases after its fit.
type scoredCandidate struct {
	c     SmoothCandidate
	err   float64
	bases [][]float32
}

// insertTop inserts candidate c with objective e (the members' current
// bases) into top, kept sorted (ties: earlier first) and at most keep long.
func (g *groupEval) insertTop(top []scoredCandidate, keep int, c SmoothCandidate, e float64) []scoredCandidate {
	if e != e {
		e = math.Inf(1)
	}
	at := len(top)
	for at > 0 && e < top[at-1].err {
		at--
	}
	if at >= keep {
		return top
	}
	var bases [][]float32
	if len(top) == keep { // reuse the evicted entry's buffers
		bases = top[keep-1].bases
		top = top[:keep-1]
	}
	if bases == nil {
		bases = make([][]float32, len(g.mem))
	}
	for i, m := range g.mem {
		bases[i] = append(bases[i][:0], m.basis...)
	}
	top = append(top, scoredCandidate{})
	copy(top[at+1:], top[at:])
	top[at] = scoredCandidate{c: c, err: e, bases: bases}
	return top
}

// setCandidate sets λ for c, quantizes the activations as the kernel does
// and forms every member's smoothed weight.
func (g *groupEval) setCandidate(c SmoothCandidate) {
	g.cand = c
	SmoothVector(g.lam, g.ax, g.aw, c, g.cfg.dt)
	// A layer with only the fields the activation path reads.
	act := &Layer{Precision: g.cfg.prec, K: g.k, Smooth: g.lam, Unsigned: g.shift != 0, DType: g.cfg.dt}
	dt := g.cfg.dt
	parallelRows(g.rows, func(lo, hi int) {
		s := act.newScratch()
		for i := lo; i < hi; i++ {
			// Layer.prepareRow from the precomputed 16-bit input.
			for j, v := range g.xpre[i*g.k : (i+1)*g.k] {
				s.xhat[j] = dt.Round(v / g.lam[j])
			}
			if act.Precision == NVFP4 {
				QuantizeActNVFP4(s.codes, s.scales, s.xhat)
			} else {
				QuantizeActInt4(s.codes, s.scales, s.xhat, act.Unsigned, dt)
			}
			act.dequantizeActRow(g.xq[i*g.k:(i+1)*g.k], s)
		}
	})
	k := g.k
	for _, m := range g.mem {
		parallelRows(m.in.N, func(lo, hi int) {
			smoothWeight(m.what[lo*k:hi*k], m.in.W[lo*k:hi*k], hi-lo, k, g.lam)
		})
	}
}

// fit runs steps 3–4 for member m: the rank-r SVD of target (Ŵ itself, or
// Ŵ − Q(Ŵres) in the refinement), the stored branch rounded to the dtype,
// the residual Ŵres = Ŵ − Up·(Down·diag(λ)) from the stored values, its
// round-to-nearest quantization, and the output error on the first g.rows
// rows. target may alias m.deq (only the SVD reads it); m.what must hold Ŵ.
// The SVD starts from m.basis when set, with power subspace iterations
// (svd.RandOptions.PowerIters: negative for none), cold with the defaults
// otherwise, and leaves its basis in m.basis.
func (g *groupEval) fit(m *memberEval, target []float32, power int) {
	n, k := m.in.N, g.k
	if m.r > 0 {
		opt := svd.RandOptions{Seed: g.cfg.seed, Warm: m.basis, Oversample: g.cfg.oversample}
		if m.basis != nil {
			opt.PowerIters = power
		}
		t, basis := svd.Randomized(target, n, k, m.r, opt)
		m.basis = basis
		g.storeBranch(m, t)
	}
	g.residual(m)
	quantizeResidual(&m.st, m.deq, n, k, g.cfg.prec, g.cfg.dt, g.cfg.pow2ts)
	m.st.err = g.outputError(m)
}

// Power iterations of the warm-started SVDs (svd.RandOptions.PowerIters).
// A search candidate starts from the previous candidate's basis: the chain
// of candidates is itself a subspace iteration, and the ranking of
// candidates needs no more (pipeline_speed_test.go measures it). The fit at
// the chosen λ and the refinement keep one iteration each: without it the
// weights with a flat spectrum tail lose up to 2% (lowrank-noise).
var (
	searchPower = -1
	refinePower = 1
)

// storeBranch rounds Up = L_up = U·S and Down = L_down·diag(1/λ) to the
// dtype, saturating at its largest finite value: the values the file
// stores (the residual is formed from them, so it absorbs a saturation).
func (g *groupEval) storeBranch(m *memberEval, t *svd.Truncated) {
	n, k, r, dt := m.in.N, g.k, m.r, g.cfg.dt
	for i := 0; i < n; i++ {
		for p := 0; p < r; p++ {
			m.st.up[i*r+p] = roundSat(dt, float32(float64(t.U[i*r+p])*t.S[p]))
		}
	}
	for p := 0; p < r; p++ {
		for j := 0; j < k; j++ {
			m.st.down[p*k+j] = roundSat(dt, t.Vt[p*k+j]/g.lam[j])
		}
	}
}

// residual writes Ŵres = Ŵ − Up·(Down·diag(λ)) into m.deq: the weight the
// 4-bit path must carry once the stored branch, which the kernel applies to
// the raw input, is taken out. λ and Down are 16-bit values, so Down·λ is
// exact in float32.
func (g *groupEval) residual(m *memberEval) {
	n, k, r := m.in.N, g.k, m.r
	copy(m.deq, m.what)
	if r == 0 {
		return
	}
	ld := make([]float32, r*k) // [r, k] L_down as the smoothed side sees it
	for p := 0; p < r; p++ {
		for j := 0; j < k; j++ {
			ld[p*k+j] = m.st.down[p*k+j] * g.lam[j]
		}
	}
	svd.Gemm(false, false, n, k, r, -1, m.st.up, r, ld, k, 1, m.deq, k)
}

// refNorm returns ‖X·Wᵀ‖² of member m over the first g.rows rows.
func (g *groupEval) refNorm(m *memberEval) float64 {
	if g.rows == g.s {
		return m.ynorm
	}
	var n2 float64
	for _, v := range m.yref[:g.rows*m.in.N] {
		n2 += v * v
	}
	return n2
}

// outputError returns Σ (Y_q − X·Wᵀ)² over the first g.rows rows, with the
// dequantized residual in m.deq and the branch in m.st.
func (g *groupEval) outputError(m *memberEval) float64 {
	// Transposed, Y_qᵀ [n, rows] = Ŵresq·X̂qᵀ + Up·(Down·X16ᵀ): the GEMM
	// then packs the small activation side, not the weight.
	n, k, r, s, rows := m.in.N, g.k, m.r, g.s, g.rows
	svd.Gemm(false, true, n, rows, k, 1, m.deq, k, g.xq, k, 0, m.yq, s)
	if r > 0 {
		svd.Gemm(false, true, rows, r, k, 1, g.x16, k, m.st.down, k, 0, m.xt, r)
		svd.Gemm(false, true, n, rows, r, 1, m.st.up, r, m.xt, r, 1, m.yq, s)
	}
	var corr []float32
	if g.shift != 0 { // Ŵresq·(shift/λ), float32 through svd.Gemm: the objective only
		sl := make([]float32, k)
		for j, l := range g.lam {
			sl[j] = g.shift / l
		}
		corr = make([]float32, n)
		svd.Gemm(false, false, n, 1, k, 1, m.deq, k, sl, 1, 0, corr, 1)
	}
	var e float64
	for j := 0; j < n; j++ {
		yq, yr := m.yq[j*s:j*s+rows], m.yrefT[j*s:j*s+rows]
		c := 0.0
		if corr != nil {
			c = float64(corr[j])
		}
		for i, v := range yq {
			d := float64(v) - yr[i] - c
			e += d * d
		}
	}
	return e
}

// shiftCorrection returns c_n = Σ_k deq[n, k]·(shift/λ_k), the term the
// shifted input adds to the quantized product; the stored bias subtracts it.
func shiftCorrection(deq []float32, n, k int, lam []float32, shift float32) []float64 {
	sl := make([]float64, k)
	for j, l := range lam {
		sl[j] = float64(shift) / float64(l)
	}
	c := make([]float64, n)
	parallelRows(n, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			var s float64
			for j, w := range deq[i*k : (i+1)*k] {
				s += float64(w) * sl[j]
			}
			c[i] = s
		}
	})
	return c
}

// quantizeResidual quantizes the residual in deq ([n, k]) round-to-nearest
// into st's codes, scales and tensor scale, and replaces deq by its
// dequantized value. Rows are quantized in parallel.
func quantizeResidual(st *lrState, deq []float32, n, k int, prec Precision, dt Float16, pow2 bool) {
	st.ts = 1
	if prec == NVFP4 {
		st.ts = NVFP4TensorScale(deq)
		if pow2 {
			st.ts = Pow2Up(st.ts)
		}
	}
	ng := len(st.scales) / n
	parallelRows(n, func(lo, hi int) {
		c, sc, v := st.codes[lo*k:hi*k], st.scales[lo*ng:hi*ng], deq[lo*k:hi*k]
		if prec == NVFP4 {
			QuantizeNVFP4(c, sc, v, hi-lo, k, st.ts)
			DequantizeNVFP4(v, c, sc, hi-lo, k, st.ts)
		} else {
			quantizeDequantInt4(c, sc, v, hi-lo, k, dt)
		}
	})
}

// dequantize writes the [n, k] weight that st's codes stand for into dst.
func dequantize(dst []float32, st *lrState, n, k int, prec Precision) {
	if prec == NVFP4 {
		DequantizeNVFP4(dst, st.codes, st.scales, n, k, st.ts)
	} else {
		DequantizeInt4(dst, st.codes, st.scales, n, k)
	}
}

// maxFinite16 returns the largest finite value of a 16-bit type.
func maxFinite16(dt Float16) float32 {
	if dt == F16 {
		return 65504
	}
	return 0x1.fep127
}

// roundSat rounds v to dt, saturating at ±maxFinite16 instead of ±Inf.
func roundSat(dt Float16, v float32) float32 {
	r := dt.Round(v)
	if m := maxFinite16(dt); r > m || r < -m {
		return float32(math.Copysign(float64(m), float64(v)))
	}
	return r
}

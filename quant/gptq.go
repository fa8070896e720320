package quant

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/svd"
	"gonum.org/v1/gonum/blas"
	"gonum.org/v1/gonum/blas/blas64"
	"gonum.org/v1/gonum/lapack/lapack64"
)

// GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for
// Generative Pre-trained Transformers", arXiv 2210.17323) on the residual
// Ŵres, as deepcompressor's svdquant/gptq.yaml configures it: damping 1% of
// the mean Hessian diagonal, blocks of 128 columns, no reordering. Columns
// are quantized left to right; each one's rounding error, scaled by the
// Cholesky factor of H⁻¹, is pushed onto the columns not yet quantized.
// Group scales are taken when a group's first column is reached, from the
// group's values updated so far (as GPTQ with groups does), in exactly the
// formats' conventions (QuantizeInt4, QuantizeNVFP4).

const (
	gptqDamp  = 0.01 // fraction of the mean Hessian diagonal added to it
	gptqBlock = 128  // columns per lazy-update block
	gptqTries = 20   // damping doublings tried when H + damp·I is not positive definite
)

// gptqHessian returns H = Xsᵀ·Xs ([k, k], float64) for the smoothed input
// rows xs = x/λ of every calibration row: the input the residual multiplies
// (the shift of an unsigned input cancels against its bias correction).
// lam nil: no smoothing (xs = x, a weight-only layer's input).
func gptqHessian(x []float32, s, k int, lam []float32) []float64 {
	xs := x[:s*k]
	if lam != nil {
		xs = make([]float32, s*k)
		for i := 0; i < s; i++ {
			for j, l := range lam {
				xs[i*k+j] = x[i*k+j] / l
			}
		}
	}
	h32 := make([]float32, k*k)
	svd.Gemm(true, false, k, k, s, 1, xs, k, xs, k, 0, h32, k)
	h := make([]float64, k*k)
	for i, v := range h32 {
		h[i] = float64(v)
	}
	return h
}

// gptqGrid is the grid GPTQ rounds onto. group is called at the first
// column j of each group with the group's current values grp [n, gw] (the
// rows' values updated so far), to fix the group's parameters; round
// rounds row i's value v of column j (recording its code) and returns the
// dequantized value.
type gptqGrid interface {
	group(grp []float32, n, gw, j int)
	round(i, j int, v float32) float32
}

// gptqFactored is what GPTQ needs from a Hessian: the upper Cholesky
// factor U of (H + damp·I)⁻¹ ([k, k], float32) and the dead input columns
// (zero diagonal: they do not reach the output on the calibration rows).
// It is read-only once built, so layers with the same input may share it.
type gptqFactored struct {
	k    int
	u    []float32
	dead []int
}

// gptqPrepare factors the Hessian h ([k, k], destroyed) with damping 1% of
// its mean diagonal (doubled until positive definite); false when no
// damping up to 2^gptqTries·1% works. Memory: h plus the [k, k] factor.
func gptqPrepare(h []float64, k int) (*gptqFactored, bool) {
	f := &gptqFactored{k: k}
	var mean float64
	for j := 0; j < k; j++ {
		if h[j*k+j] == 0 {
			h[j*k+j] = 1
			f.dead = append(f.dead, j)
		}
		mean += h[j*k+j]
	}
	mean /= float64(k)
	var ok bool
	f.u, ok = gptqFactor(h, k, gptqDamp*mean)
	return f, ok
}

// gptqRun runs GPTQ on w ([n, k], row-major) with the factored Hessian f
// and groups of g columns on grid. On return w holds the dequantized
// values (dead columns zero).
func gptqRun(w []float32, n, k int, f *gptqFactored, g int, grid gptqGrid) {
	if f.k != k {
		panic(fmt.Sprintf("quant: gptqRun: a factor for %d columns on a [%d, %d] weight", f.k, n, k))
	}
	for _, j := range f.dead {
		for i := 0; i < n; i++ {
			w[i*k+j] = 0
		}
	}
	u := f.u

	// Column by column, in blocks; blk holds the block's columns [n, bw],
	// errs their scaled rounding errors.
	blk := make([]float32, n*gptqBlock)
	errs := make([]float32, n*gptqBlock)
	grp := make([]float32, n*g)
	for b0 := 0; b0 < k; b0 += gptqBlock {
		bw := min(gptqBlock, k-b0)
		for i := 0; i < n; i++ {
			copy(blk[i*bw:(i+1)*bw], w[i*k+b0:i*k+b0+bw])
		}
		for c := 0; c < bw; c++ {
			j := b0 + c
			if j%g == 0 { // a new group: its parameters from the values so far
				gw := min(g, k-j)
				for i := 0; i < n; i++ {
					copy(grp[i*gw:(i+1)*gw], blk[i*bw+c:i*bw+c+gw])
				}
				grid.group(grp[:n*gw], n, gw, j)
			}
			d := u[j*k+j]
			for i := 0; i < n; i++ {
				v := blk[i*bw+c]
				q := grid.round(i, j, v)
				blk[i*bw+c] = q
				e := (v - q) / d
				errs[i*bw+c] = e
				row := blk[i*bw : (i+1)*bw]
				urow := u[j*k : (j+1)*k]
				for t := c + 1; t < bw; t++ {
					row[t] -= e * urow[b0+t]
				}
			}
		}
		for i := 0; i < n; i++ {
			copy(w[i*k+b0:i*k+b0+bw], blk[i*bw:(i+1)*bw])
		}
		if rest := k - b0 - bw; rest > 0 { // W[:, b1:] −= Errs · U[b0:b1, b1:]
			svd.Gemm(false, false, n, rest, bw, -1, errs, bw, u[b0*k+b0+bw:], k, 1, w[b0+bw:], k)
		}
	}
}

// w4a4Grid is the INT4 / NVFP4 grid of a W4A4 residual: group scales in
// exactly QuantizeInt4's / QuantizeNVFP4's conventions.
type w4a4Grid struct {
	prec     Precision
	dt       Float16
	ts       float32 // NVFP4 tensor scale (1 for INT4)
	k, ng, g int
	codes    []int8    // [n, k] out
	scales   []float32 // [n, ng] out
	gcodes   []int8    // scratch: one group's codes
	gscales  []float32 // the current group's scale of each row
}

// gptqQuantize quantizes w ([n, k], row-major) with GPTQ under the Hessian h
// ([k, k], destroyed) into codes [n, k] and scales [n, groups] in the
// conventions of prec (INT4 scales rounded to dt; NVFP4 with the tensor
// scale of the original w, returned). On return w holds the dequantized
// values. It returns false, leaving w and codes untouched, when no damping
// up to 2^gptqTries·1% makes H positive definite.
func gptqQuantize(w []float32, n, k int, h []float64, prec Precision, dt Float16, pow2 bool, codes []int8, scales []float32) (ts float32, ok bool) {
	if len(w) != n*k || len(h) != k*k || len(codes) != n*k {
		panic(fmt.Sprintf("quant: gptqQuantize with %d weights, %d Hessian values, %d codes for [%d, %d]", len(w), len(h), len(codes), n, k))
	}
	ts = 1
	if prec == NVFP4 {
		ts = NVFP4TensorScale(w)
		if pow2 {
			ts = Pow2Up(ts)
		}
	}
	f, ok := gptqPrepare(h, k)
	if !ok {
		return ts, false
	}
	g := prec.GroupSize()
	grid := &w4a4Grid{prec: prec, dt: dt, ts: ts, k: k, ng: (k + g - 1) / g, g: g, codes: codes, scales: scales,
		gcodes: make([]int8, n*g), gscales: make([]float32, n)}
	gptqRun(w, n, k, f, g, grid)
	return ts, true
}

func (q *w4a4Grid) group(grp []float32, n, gw, j int) {
	if q.prec == NVFP4 {
		QuantizeNVFP4(q.gcodes[:n*gw], q.gscales, grp, n, gw, q.ts)
	} else {
		QuantizeInt4(q.gcodes[:n*gw], q.gscales, grp, n, gw, q.dt.Round)
	}
	for i := 0; i < n; i++ {
		q.scales[i*q.ng+j/q.g] = q.gscales[i]
	}
}

func (q *w4a4Grid) round(i, j int, v float32) float32 {
	code, d := quantizeScalar(v, q.gscales[i], q.ts, q.prec)
	q.codes[i*q.k+j] = code
	return d
}

// gptqFactor returns, as float32 [k, k], the upper Cholesky factor U of
// (H + damp·I)⁻¹ = UᵀU, doubling damp until H + damp·I is positive definite.
// h is overwritten.
func gptqFactor(h []float64, k int, damp float64) ([]float32, bool) {
	diag := make([]float64, k)
	for j := range diag {
		diag[j] = h[j*k+j]
	}
	// Dpotrf reads and writes only the upper triangle; the lower one keeps H
	// for a retry.
	for try := 0; try < gptqTries; try, damp = try+1, 2*damp {
		for j := 0; j < k; j++ {
			for i := j + 1; i < k; i++ { // restore the upper triangle from the lower
				h[j*k+i] = h[i*k+j]
			}
			h[j*k+j] = diag[j] + damp
		}
		a := blas64.Symmetric{Uplo: blas.Upper, N: k, Stride: k, Data: h}
		t, ok := lapack64.Potrf(a)
		if !ok {
			continue
		}
		inv, ok := lapack64.Potri(t)
		if !ok {
			continue
		}
		if _, ok := lapack64.Potrf(inv); !ok {
			continue
		}
		u := make([]float32, k*k)
		for i := 0; i < k; i++ {
			for j := i; j < k; j++ {
				u[i*k+j] = float32(h[i*k+j])
			}
		}
		return u, true
	}
	return nil, false
}

// quantizeScalar rounds v to the grid of one group with scale s (and NVFP4
// tensor scale ts) exactly as QuantizeInt4 and QuantizeNVFP4 round each
// value, returning the code and the value DequantizeInt4/DequantizeNVFP4
// give it.
func quantizeScalar(v, s, ts float32, prec Precision) (int8, float32) {
	if prec == NVFP4 {
		full := s * ts
		if full == 0 {
			return 0, 0
		}
		c := NearestE2M1(v / full)
		return c, E2M1(c) * full
	}
	if s == 0 {
		return 0, 0
	}
	q := min(max(math.RoundToEven(float64(v/s)), -8), 7)
	return int8(q), float32(q) * s
}

// gptqResidual requantizes member m's final residual with GPTQ and keeps
// the result when its output error beats round-to-nearest; it reports
// whether it did. On return m.deq holds the kept dequantized residual.
func (g *groupEval) gptqResidual(m *memberEval, c Calib) bool {
	n, k := m.in.N, g.k
	rtnDeq := append([]float32(nil), m.deq...)
	g.residual(m) // Ŵres of the current branch into m.deq
	h := gptqHessian(c.X, c.S, k, g.lam)
	var st lrState
	st.copyFrom(&m.st)
	ts, ok := gptqQuantize(m.deq, n, k, h, g.cfg.prec, g.cfg.dt, g.cfg.pow2ts, st.codes, st.scales)
	if ok {
		st.ts = ts
		st.err = g.outputError(m)
		if st.err < m.st.err {
			m.st.copyFrom(&st)
			return true
		}
	}
	copy(m.deq, rtnDeq)
	return false
}

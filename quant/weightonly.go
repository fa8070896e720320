package quant

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/svd"
)

// W4A16 weight-only quantization (adaLN modulation layers; nunchaku's
// 4-bit T5 text encoder).
//
//	format     codes  group  scale, zero          bits per weight
//	w4a16      0..15  64     16-bit each          4 + 32/64 = 4.5
//	w4a16g128  0..15  128    16-bit each          4 + 32/128 = 4.25
//
// The group size is WeightOnly.Group (0: 64, the adaLN layers' and every
// file before the field existed). nunchaku's T5 W4Linear
// (nunchaku/models/text_encoders/linear.py, tinychat_utils.py
// convert_to_tinychat_w4x16y16_linear_weight) uses group 128 and stores
// scaled_zeros = −zero with q = round((w + zero)/scale), i.e. the same
// w = q·scale + z with z the stored scaled_zeros, so one grid serves both.
//
// nunchaku's GEMV dequantizes w = q·wscales + wzeros. The reference
// converter (deepcompressor backend/nunchaku/utils.py,
// convert_to_nunchaku_w4x16_linear_weight) uses a symmetric scale with
// zero = −7·scale, which leaves code 15 unused and spends its grid on both
// signs even when a group is one-sided. We use the asymmetric min/max form,
// which the format allows and whose grid step, (max − min)/15, is always
// finer than the symmetric absmax/7, so its worst-case error is smaller:
// scale = (max − min)/15 and zero = min, both rounded to the model's 16-bit
// type, and codes q = clamp(RoundToEven((w − zero)/scale), 0, 15)
// computed with the rounded values, so every weight gets the nearest point of
// the stored grid. A constant group gets scale 0, zero = its value rounded,
// codes 0.

// QuantizeWeightOnly returns the W4A16 form of W [n, k] with optional bias [n]
// (nil: zeros), every stored value rounded to dt, in groups of 64
// (WeightOnly.Group 0). The result's slices are newly allocated; w and bias
// are not modified. It panics when a slice is too short or w or bias holds
// NaN or ±Inf.
func QuantizeWeightOnly(w []float32, n, k int, bias []float32, dt Float16) *WeightOnly {
	return QuantizeWeightOnlyGroup(w, n, k, 0, bias, dt)
}

// QuantizeWeightOnlyGroup is QuantizeWeightOnly with groups of `group`
// input channels (0: 64); the result's Group is group as given. A last
// group shorter than group (k not a multiple) takes the remaining columns.
// It also panics when group is negative.
func QuantizeWeightOnlyGroup(w []float32, n, k, group int, bias []float32, dt Float16) *WeightOnly {
	const fn = "QuantizeWeightOnly"
	if n <= 0 || k <= 0 || len(w) < n*k {
		panic(fmt.Sprintf("quant: %s: weight has %d values for n=%d k=%d", fn, len(w), n, k))
	}
	if bias != nil && len(bias) < n {
		panic(fmt.Sprintf("quant: %s: bias has %d values, want %d", fn, len(bias), n))
	}
	if group < 0 {
		panic(fmt.Sprintf("quant: %s: group %d", fn, group))
	}
	wo := &WeightOnly{N: n, K: k, Group: group, DType: dt}
	gs, g := wo.GroupSize(), wo.Groups()
	wo.Codes = make([]uint8, n*k)
	wo.Scales = make([]float32, n*g)
	wo.Zeros = make([]float32, n*g)
	wo.Bias = make([]float32, n)
	for r := 0; r < n; r++ {
		row := w[r*k : (r+1)*k]
		for j := 0; j < g; j++ {
			b, e := j*gs, min((j+1)*gs, k)
			lo, hi := float32(math.Inf(1)), float32(math.Inf(-1))
			for i, x := range row[b:e] {
				if x-x != 0 {
					panic(fmt.Sprintf("quant: %s: non-finite weight %v at row %d, column %d", fn, x, r, b+i))
				}
				lo, hi = min(lo, x), max(hi, x)
			}
			s, z := w4a16Params(lo, hi, dt)
			wo.Scales[r*g+j], wo.Zeros[r*g+j] = s, z
			out := wo.Codes[r*k+b : r*k+e]
			for i, x := range row[b:e] {
				out[i] = w4a16Code(x, s, z)
			}
		}
	}
	if bias != nil {
		for i := range wo.Bias {
			if x := bias[i]; x-x != 0 {
				panic(fmt.Sprintf("quant: %s: non-finite bias %v at %d", fn, x, i))
			}
			wo.Bias[i] = dt.Round(bias[i])
		}
	}
	return wo
}

// GroupSize is the number of input channels sharing a scale and zero:
// Group, or 64 when Group is 0.
func (w *WeightOnly) GroupSize() int {
	if w.Group == 0 {
		return Int4Group
	}
	return w.Group
}

// Groups is the number of groups per output row, ceil(K / GroupSize).
func (w *WeightOnly) Groups() int {
	gs := w.GroupSize()
	return (w.K + gs - 1) / gs
}

// Dequantize returns the [N, K] float32 weight q·scale + zero (a new slice).
func (w *WeightOnly) Dequantize() []float32 {
	w.check("Dequantize")
	gs, g := w.GroupSize(), w.Groups()
	out := make([]float32, w.N*w.K)
	for r := 0; r < w.N; r++ {
		for i := 0; i < w.K; i++ {
			j := r*g + i/gs
			out[r*w.K+i] = float32(w.Codes[r*w.K+i])*w.Scales[j] + w.Zeros[j]
		}
	}
	return out
}

// Forward computes y = x·Wᵀ + b for the [m, K] input x into the [m, N]
// output y with the dequantized weight, in float32 (svd.Gemm). Activations
// are not quantized. It panics when x or y is too short for m.
func (w *WeightOnly) Forward(y, x []float32, m int) {
	w.check("Forward")
	if m < 0 || len(x) < m*w.K || len(y) < m*w.N {
		panic(fmt.Sprintf("quant: WeightOnly.Forward: x has %d values, y %d, for m=%d K=%d N=%d", len(x), len(y), m, w.K, w.N))
	}
	if m == 0 {
		return
	}
	wd := w.Dequantize()
	svd.Gemm(false, true, m, w.N, w.K, 1, x, w.K, wd, w.K, 0, y, w.N)
	for i := 0; i < m; i++ {
		row := y[i*w.N : (i+1)*w.N]
		for n, b := range w.Bias {
			row[n] += b
		}
	}
}

// ForwardKernel computes y = x·Wᵀ + b for the [m, K] input x into the
// [m, N] output y the way nunchaku's W4A16 GEMV does (src/kernels/awq/
// gemv_awq.cu, then Linear.cpp's add_bias_dim0; the T5 W4Linear calls the
// same gemv_awq below 8 tokens, gemm_awq from 8, whose order of
// accumulation is not emulated), every output a value of
// w.DType: x rounded to 16 bits; w = round16(q·scale + zero) (__hfma2);
// each product round16(w·x) (__hmul2) accumulated in float32 (we add in
// index order; the GPU's warp reduction order differs, so its sums may
// differ by float32 rounding); y = round16(acc); then y = round16(y + b).
// Forward is the float32 version of the same product. It panics like
// Forward.
func (w *WeightOnly) ForwardKernel(y, x []float32, m int) {
	w.check("ForwardKernel")
	if m < 0 || len(x) < m*w.K || len(y) < m*w.N {
		panic(fmt.Sprintf("quant: WeightOnly.ForwardKernel: x has %d values, y %d, for m=%d K=%d N=%d", len(x), len(y), m, w.K, w.N))
	}
	dt, gs, g := w.DType, w.GroupSize(), w.Groups()
	wd := make([]float32, w.N*w.K)
	for r := 0; r < w.N; r++ {
		for i := 0; i < w.K; i++ {
			j := r*g + i/gs
			wd[r*w.K+i] = fma16(dt, float32(w.Codes[r*w.K+i]), w.Scales[j], w.Zeros[j])
		}
	}
	parallelRows(m, func(lo, hi int) {
		x16 := make([]float32, w.K)
		for i := lo; i < hi; i++ {
			for k, v := range x[i*w.K : (i+1)*w.K] {
				x16[k] = dt.Round(v)
			}
			for n := 0; n < w.N; n++ {
				var acc float32
				for k, v := range wd[n*w.K : (n+1)*w.K] {
					acc += mul16(dt, v, x16[k])
				}
				y[i*w.N+n] = add16(dt, dt.Round(acc), w.Bias[n])
			}
		}
	})
}

func (w *WeightOnly) check(fn string) {
	if w.Group < 0 {
		panic(fmt.Sprintf("quant: WeightOnly.%s: group %d", fn, w.Group))
	}
	g := w.Groups()
	if w.N <= 0 || w.K <= 0 || len(w.Codes) != w.N*w.K || len(w.Scales) != w.N*g ||
		len(w.Zeros) != w.N*g || len(w.Bias) != w.N {
		panic(fmt.Sprintf("quant: WeightOnly.%s: inconsistent layer N=%d K=%d group %d: codes %d, scales %d, zeros %d, bias %d",
			fn, w.N, w.K, w.GroupSize(), len(w.Codes), len(w.Scales), len(w.Zeros), len(w.Bias)))
	}
}

// w4a16Params returns the stored scale and zero of a group whose values
// lie in [lo, hi].
func w4a16Params(lo, hi float32, dt Float16) (s, z float32) {
	return dt.Round((hi - lo) / 15), dt.Round(lo)
}

// w4a16Code returns the code of x on the grid (s, z); 0 (w = zero) for a
// constant group (s = 0) or an infinite scale.
func w4a16Code(x, s, z float32) uint8 {
	if s == 0 || math.IsInf(float64(s), 0) {
		return 0
	}
	return uint8(max(0, min(15, math.RoundToEven(float64((x-z)/s)))))
}

// GPTQWeightOnly is QuantizeWeightOnly with GPTQ (gptq.go: damping 1% of
// the mean Hessian diagonal, blocks of 128 columns, no reordering) under
// the Hessian of the s calibration rows x [s, k]: each column's rounding
// error is pushed onto the columns not yet quantized, so the output on
// rows like x moves less than with round-to-nearest. Each group's scale
// and zero are the min/max form of QuantizeWeightOnly, taken from the
// group's values as updated when its first column is reached. It returns
// the round-to-nearest result and false when the Hessian cannot be made
// positive definite. It panics like QuantizeWeightOnly, or when x holds
// fewer than s·k values.
func GPTQWeightOnly(w []float32, n, k int, bias []float32, dt Float16, x []float32, s int) (*WeightOnly, bool) {
	return GPTQWeightOnlyGroup(w, n, k, 0, bias, dt, x, s)
}

// GPTQWeightOnlyGroup is GPTQWeightOnly with groups of `group` columns (0:
// 64). It also panics when group does not divide GPTQ's block of 128
// columns (a group must start inside one block).
func GPTQWeightOnlyGroup(w []float32, n, k, group int, bias []float32, dt Float16, x []float32, s int) (*WeightOnly, bool) {
	if s <= 0 || len(x) < s*k {
		panic(fmt.Sprintf("quant: GPTQWeightOnly: %d calibration values for s=%d k=%d", len(x), s, k))
	}
	rtn := QuantizeWeightOnlyGroup(w, n, k, group, bias, dt)
	f, ok := gptqPrepare(gptqHessian(x, s, k, nil), k)
	if !ok {
		return rtn, false
	}
	return gptqWeightOnly(w, rtn, f), true
}

// gptqWeightOnly runs GPTQ with the factored Hessian f on the W4A16 grid;
// rtn is QuantizeWeightOnlyGroup's result for w (validated; its group and
// bias are kept).
func gptqWeightOnly(w []float32, rtn *WeightOnly, f *gptqFactored) *WeightOnly {
	n, k, gs := rtn.N, rtn.K, rtn.GroupSize()
	if gptqBlock%gs != 0 {
		panic(fmt.Sprintf("quant: GPTQ on W4A16: group %d does not divide the block of %d columns", gs, gptqBlock))
	}
	g := rtn.Groups()
	wo := &WeightOnly{N: n, K: k, Group: rtn.Group, DType: rtn.DType, Codes: make([]uint8, n*k), Scales: make([]float32, n*g),
		Zeros: make([]float32, n*g), Bias: rtn.Bias}
	wq := append([]float32(nil), w[:n*k]...)
	gptqRun(wq, n, k, f, gs, &w4a16Grid{wo: wo, ng: g, gs: gs})
	return wo
}

// w4a16Grid is the W4A16 grid for GPTQ: per row and group, the min/max
// scale and zero of QuantizeWeightOnly and codes 0..15.
type w4a16Grid struct {
	wo     *WeightOnly
	ng, gs int // groups per row, group size
}

func (q *w4a16Grid) group(grp []float32, n, gw, j int) {
	dt := q.wo.DType
	for i := 0; i < n; i++ {
		lo, hi := float32(math.Inf(1)), float32(math.Inf(-1))
		for _, x := range grp[i*gw : (i+1)*gw] {
			lo, hi = min(lo, x), max(hi, x)
		}
		q.wo.Scales[i*q.ng+j/q.gs], q.wo.Zeros[i*q.ng+j/q.gs] = w4a16Params(lo, hi, dt)
	}
}

func (q *w4a16Grid) round(i, j int, v float32) float32 {
	s, z := q.wo.Scales[i*q.ng+j/q.gs], q.wo.Zeros[i*q.ng+j/q.gs]
	c := w4a16Code(v, s, z)
	q.wo.Codes[i*q.wo.K+j] = c
	return float32(c)*s + z
}

// WeightOnlyCalib is the calibration side of WeightOnlyBest for one input
// of k columns: GPTQ's factored Hessian of the even calibration rows and
// the odd rows, held out. Built once (the factorisation is O(k³): 5.2 s at
// k = 3072 here), it serves every layer that reads the same rows and is
// safe for concurrent use.
type WeightOnlyCalib struct {
	k, m int
	held []float32 // [m, k]
	f    *gptqFactored
}

// NewWeightOnlyCalib splits the s rows of x [s, k] and factors the even
// rows' Hessian. It returns nil (Best then gives round-to-nearest) for
// fewer than 4 rows, a short x, or a Hessian no damping makes positive
// definite.
func NewWeightOnlyCalib(x []float32, s, k int) *WeightOnlyCalib {
	if s < 4 || k <= 0 || len(x) < s*k {
		return nil
	}
	fit, held := make([]float32, 0, (s+1)/2*k), make([]float32, 0, s/2*k)
	for i := 0; i < s; i++ {
		if i%2 == 0 {
			fit = append(fit, x[i*k:(i+1)*k]...)
		} else {
			held = append(held, x[i*k:(i+1)*k]...)
		}
	}
	f, ok := gptqPrepare(gptqHessian(fit, (s+1)/2, k, nil), k)
	if !ok {
		return nil
	}
	return &WeightOnlyCalib{k: k, m: s / 2, held: held, f: f}
}

// Best quantizes W [n, k] (bias [n] or nil) for W4A16 with round-to-nearest
// and with GPTQ, and keeps GPTQ only where its output error on the held-out
// rows is at least 2% below round-to-nearest's: with fewer rows than
// inputs GPTQ can fit the calibration rows and lose elsewhere (measured on
// white-noise inputs, TestGPTQWeightOnly). It reports whether it kept
// GPTQ. A nil c gives round-to-nearest. It panics like QuantizeWeightOnly,
// or when k is not c's.
func (c *WeightOnlyCalib) Best(w []float32, n, k int, bias []float32, dt Float16) (*WeightOnly, bool) {
	return c.BestGroup(w, n, k, 0, bias, dt)
}

// BestGroup is Best with groups of `group` columns (0: 64; GPTQ needs a
// group dividing 128, see GPTQWeightOnlyGroup).
func (c *WeightOnlyCalib) BestGroup(w []float32, n, k, group int, bias []float32, dt Float16) (*WeightOnly, bool) {
	rtn := QuantizeWeightOnlyGroup(w, n, k, group, bias, dt)
	if c == nil {
		return rtn, false
	}
	if k != c.k {
		panic(fmt.Sprintf("quant: WeightOnlyCalib for %d columns used on k=%d", c.k, k))
	}
	gq := gptqWeightOnly(w, rtn, c.f)
	yref := make([]float64, c.m*n)
	RefOutput32(yref, c.held, c.m, k, w, n)
	if gq.outputError(c.held, c.m, yref) < 0.98*rtn.outputError(c.held, c.m, yref) {
		return gq, true
	}
	return rtn, false
}

// outputError is the relative error ‖x·Ŵᵀ − yref‖_F / ‖yref‖_F of w's
// output without its bias on the s rows of x, yref = x·Wᵀ [s, N].
func (w *WeightOnly) outputError(x []float32, s int, yref []float64) float64 {
	y := make([]float32, s*w.N)
	w.Forward(y, x, s)
	for i := 0; i < s; i++ {
		for j, b := range w.Bias {
			y[i*w.N+j] -= b
		}
	}
	return RelError(y, yref)
}

// WeightOnlyBest is NewWeightOnlyCalib(x, s, k).Best(w, n, k, bias, dt).
func WeightOnlyBest(w []float32, n, k int, bias []float32, dt Float16, x []float32, s int) (*WeightOnly, bool) {
	return NewWeightOnlyCalib(x, s, k).Best(w, n, k, bias, dt)
}

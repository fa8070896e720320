package quant

import (
	"fmt"
	"math"
	"runtime"
	"sync"
)

// The CPU reference of nunchaku's W4A4 layer, read from the public kernel
// sources (nunchaku src/kernels/zgemm/gemm_w4a4.cuh, gemm_base.cuh, lora.cuh,
// gemm_utils.cuh, gemm_w4a4_launch_impl.cuh, src/Linear.cpp). "round16"
// below is rounding to the model's 16-bit type (Layer.DType), ties to even.
// For one token row x (length K):
//
//  1. x16 = round16(x): the kernel's input is a 16-bit tensor.
//  2. Low-rank down projection on the raw input: a[r] = Σ_k x16[k]·Down[r,k]
//     on the tensor cores (mmaDown: per 128-column block a chain of
//     m16n8k16 MMAs, whose float32 accumulation mmaK16 models exactly; the
//     blocks' sums added with float atomics, here in block order); the
//     buffer lora_act is float32 [M, R].
//  3. x̂ = round16(x16/λ) (h2div: __fdividef, i.e. x16·rcp.approx(λ) in
//     float32, then round16; kernelDiv); for Unsigned layers
//     x̂ = round16(round16(x16 + 0.171875)/λ) (__hadd2).
//  4. x̂ is quantized per group: QuantizeActInt4 / QuantizeActNVFP4.
//  5. INT4 main GEMM, for each output n, groups g in order:
//     p = Σ_{k∈g} a_code·w_code (exact int32 MMA),
//     acc = round16(round16(p)·round16(ascale·wscale) + acc) (__hfma2):
//     the accumulator is 16-bit, not float32 (gemm_w4a4_kernel instantiates
//     gemm_w4a4_block with USE_FP32_ACCUM = false; apply_scales on a
//     fpsum_warp of half2).
//     NVFP4 main GEMM: acc = Σ_g (Σ_{k∈g} e2m1·e2m1)·ascale·wscale in float32
//     (block-scaled MMA with FP32 accumulators; each group term is exact in
//     float32, we add the groups in order), then acc·TensorScale in float32
//     when TensorScale ≠ 1, then round16 (packed_fp32_to_fp16).
//  6. Bias: acc = round16(acc + bias) (EpilogueBias, __hadd2), applied before
//     the low-rank branch.
//  7. Low-rank up projection (EpilogueLoraUp): the float32 lora_act is
//     rounded to 16 bits first (packed_fp32_to_fp16 of lora_act·lora_scale,
//     scale 1), then y = round16(MMA chain from float(acc) over 16-rank
//     tiles of round16(a[r])·Up[n,r]) (mmaUp, mmaK16). So lora_act is kept in
//     float32 in memory but enters the up projection as a 16-bit value.
//  8. FP16 models clamp the output to ±65504 (EpilogueDefault).
//
// What is not bit-exact: the order in which the GPU's atomics add the down
// projection's 128-column block sums (nunchaku does not fix it: two runs of
// its kernel can differ; ForwardLoRA takes the GPU's sums instead), the
// NVFP4 accumulation (block-scaled MMA, sm_120 only, not measured here: we
// add the group terms in order), and NaN handling (the GPU's __hmin/__hmax
// drop NaNs; here they propagate to the output). Everything else is the
// GPU's arithmetic, measured on an H100: the 16-bit accumulator chains
// (emulate_hw_test.go with testdata/hwcheck.cu: 2048 random 48-group
// chains plus bias, bit for bit in BF16 and FP16), rcp.approx and
// __fdividef (kernel_rcp.go), and the tensor cores' float32 accumulation
// (mma.go).

// Forward emulates the layer on the [m, K] input x exactly as nunchaku's
// kernel computes it (see above) and writes the [m, N] result into y; every
// output value is a value of l.DType. Rows are processed in parallel. It is
// the plain reference that ForwardFast, `svdq check` and the GPU runner are
// compared against. It panics (prefix "quant:") when the layer is
// inconsistent (Validate), an NVFP4 layer is marked Unsigned, or x or y is
// too short for m.
func (l *Layer) Forward(y, x []float32, m int) {
	l.checkForward("Forward", y, x, m)
	l.forward(y, x, m, nil, 0)
}

// ForwardLoRA is Forward with the float32 down-projection sums x·proj_down
// supplied instead of computed: lora holds row i's sums at
// lora[i*stride : i*stride+R] (unrounded; step 7 rounds them to l.DType).
// The GPU runner's check uses it to follow a sum that the GPU, adding in
// another order, rounded to the other 16-bit neighbour. It panics as
// Forward does, and when lora is too short.
func (l *Layer) ForwardLoRA(y, x []float32, m int, lora []float32, stride int) {
	l.checkForward("ForwardLoRA", y, x, m)
	if stride < l.R || m > 0 && len(lora) < (m-1)*stride+l.R {
		panic(fmt.Sprintf("quant: Layer.ForwardLoRA: %d sums with stride %d for m=%d, R=%d", len(lora), stride, m, l.R))
	}
	l.forward(y, x, m, lora, stride)
}

// forward runs the rows in parallel; lora == nil: the down projection is
// computed (step 2).
func (l *Layer) forward(y, x []float32, m int, lora []float32, stride int) {
	parallelRows(m, func(lo, hi int) {
		s := l.newScratch()
		for i := lo; i < hi; i++ {
			if lora != nil {
				copy(s.lora, lora[i*stride:i*stride+l.R])
			}
			l.forwardRow(y[i*l.N:(i+1)*l.N], x[i*l.K:(i+1)*l.K], s, lora == nil)
		}
	})
}

// rowScratch holds one worker's per-row buffers.
type rowScratch struct {
	x16, xhat []float32 // [K]
	codes     []int8    // [K] activation codes
	scales    []float32 // [G] activation scales (stored form)
	lora      []float32 // [R] lora_act, float32 then rounded
}

func (l *Layer) newScratch() *rowScratch {
	return &rowScratch{
		x16:    make([]float32, l.K),
		xhat:   make([]float32, l.K),
		codes:  make([]int8, l.K),
		scales: make([]float32, l.Groups()),
		lora:   make([]float32, l.R),
	}
}

// prepareRow performs steps 1, 3 and 4 for one row: s.x16, s.xhat, s.codes
// and s.scales.
func (l *Layer) prepareRow(x []float32, s *rowScratch) {
	dt := l.DType
	for k, v := range x {
		s.x16[k] = dt.Round(v)
	}
	for k, v := range s.x16 {
		if l.Unsigned {
			v = add16(dt, v, ShiftINT4)
		}
		s.xhat[k] = dt.Round(kernelDiv(v, l.Smooth[k]))
	}
	if l.Precision == NVFP4 {
		QuantizeActNVFP4(s.codes, s.scales, s.xhat)
	} else {
		QuantizeActInt4(s.codes, s.scales, s.xhat, l.Unsigned, dt)
	}
}

// loraDown performs step 2 into s.lora, unrounded.
func (l *Layer) loraDown(s *rowScratch) {
	for r := 0; r < l.R; r++ {
		s.lora[r] = mmaDown(l.DType, s.x16, l.Down[r*l.K:(r+1)*l.K])
	}
}

// forwardRow emulates one row; down: compute s.lora (step 2), else s.lora
// already holds the sums.
func (l *Layer) forwardRow(y, x []float32, s *rowScratch, down bool) {
	dt := l.DType
	l.prepareRow(x, s)
	if down {
		l.loraDown(s)
	}
	for r, a := range s.lora {
		s.lora[r] = dt.Round(a)
	}
	G, gs := l.Groups(), l.Precision.GroupSize()
	for n := 0; n < l.N; n++ {
		wc := l.Codes[n*l.K : (n+1)*l.K]
		ws := l.Scales[n*G : (n+1)*G]
		var acc float32
		if l.Precision == NVFP4 {
			var acc32 float32
			for g := 0; g < G; g++ {
				b, e := g*gs, min((g+1)*gs, l.K)
				var d float32 // multiples of 0.25, |d| ≤ 576: exact
				for k := b; k < e; k++ {
					d += e2m1Values[s.codes[k]] * e2m1Values[wc[k]]
				}
				acc32 += d * float32(s.scales[g]*ws[g]) // exact product
			}
			if l.TensorScale != 1 {
				acc32 *= l.TensorScale
			}
			acc = dt.Round(acc32)
		} else {
			for g := 0; g < G; g++ {
				b, e := g*gs, min((g+1)*gs, l.K)
				var p int32
				for k := b; k < e; k++ {
					p += int32(s.codes[k]) * int32(wc[k])
				}
				acc = fma16(dt, roundTo(dt, float64(p)), mul16(dt, s.scales[g], ws[g]), acc)
			}
		}
		acc = add16(dt, acc, l.Bias[n])
		out := dt.Round(mmaUp(dt, acc, s.lora, l.Up[n*l.R:(n+1)*l.R]))
		if dt == F16 {
			out = max(-65504, min(65504, out))
		}
		y[n] = out
	}
}

func (l *Layer) checkForward(fn string, y, x []float32, m int) {
	if err := l.Validate(); err != nil {
		panic(fmt.Sprintf("quant: Layer.%s: %v", fn, err))
	}
	if l.Unsigned && l.Precision != INT4 {
		panic(fmt.Sprintf("quant: Layer.%s: an unsigned (shifted) input is INT4 only, layer is %v", fn, l.Precision))
	}
	if l.Precision == NVFP4 && (!(l.TensorScale > 0) || math.IsInf(float64(l.TensorScale), 0)) {
		panic(fmt.Sprintf("quant: Layer.%s: NVFP4 tensor scale %v is not a positive finite number", fn, l.TensorScale))
	}
	if m < 0 || len(x) < m*l.K || len(y) < m*l.N {
		panic(fmt.Sprintf("quant: Layer.%s: x has %d values, y %d, for m=%d K=%d N=%d", fn, len(x), len(y), m, l.K, l.N))
	}
}

// DequantizeWeight returns the [N, K] float32 weight the 4-bit codes stand
// for: Codes·Scales (INT4) or E2M1(Codes)·(Scales·TensorScale) (NVFP4). The
// slice is newly allocated.
func (l *Layer) DequantizeWeight() []float32 {
	if err := l.Validate(); err != nil {
		panic(fmt.Sprintf("quant: Layer.DequantizeWeight: %v", err))
	}
	w := make([]float32, l.N*l.K)
	if l.Precision == NVFP4 {
		DequantizeNVFP4(w, l.Codes, l.Scales, l.N, l.K, l.TensorScale)
	} else {
		DequantizeInt4(w, l.Codes, l.Scales, l.N, l.K)
	}
	return w
}

// parallelRows calls fn on disjoint row ranges covering [0, m), on up to
// GOMAXPROCS goroutines, and returns when all are done.
func parallelRows(m int, fn func(lo, hi int)) {
	workers := min(runtime.GOMAXPROCS(0), m)
	if workers <= 1 {
		if m > 0 {
			fn(0, m)
		}
		return
	}
	var wg sync.WaitGroup
	chunk := (m + workers - 1) / workers
	for lo := 0; lo < m; lo += chunk {
		wg.Add(1)
		go func(lo, hi int) {
			defer wg.Done()
			fn(lo, hi)
		}(lo, min(lo+chunk, m))
	}
	wg.Wait()
}

// LowRankSums returns the down-projection sums of Forward's step 2 for the
// [m, K] input x: [m, R] float32, before their rounding to l.DType. It
// panics as Forward does.
func (l *Layer) LowRankSums(x []float32, m int) []float32 {
	l.checkForward("LowRankSums", nil, x, 0)
	if len(x) < m*l.K {
		panic(fmt.Sprintf("quant: Layer.LowRankSums: %d inputs for m=%d, K=%d", len(x), m, l.K))
	}
	out := make([]float32, m*l.R)
	parallelRows(m, func(lo, hi int) {
		s := l.newScratch()
		for i := lo; i < hi; i++ {
			for k, v := range x[i*l.K : (i+1)*l.K] {
				s.x16[k] = l.DType.Round(v)
			}
			l.loraDown(s)
			copy(out[i*l.R:(i+1)*l.R], s.lora)
		}
	})
	return out
}

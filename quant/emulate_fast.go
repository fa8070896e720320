package quant

import "github.com/svdq/svdq/svd"

// forwardFastBlock is the number of rows ForwardFast processes per GEMM:
// it bounds the temporary memory to 2·block·K float32 values.
const forwardFastBlock = 256

// ForwardFast computes the layer on the [m, K] input x into the [m, N] output
// y with the activation quantization of Forward (same 16-bit input, same x̂,
// same codes and scales) but float32 arithmetic everywhere else:
//
//	y = deq(codes_x)·Ŵqᵀ + (x16·Downᵀ)·Upᵀ + Bias
//
// with Ŵq = DequantizeWeight() and the three products through svd.Gemm. It
// drops the kernel's 16-bit rounding of the INT4 accumulator, of lora_act and
// of the output, so for each output element, with u the unit roundoff of
// l.DType (2⁻⁸ for BF16, 2⁻¹¹ for FP16) and G the number of groups,
//
//	|ForwardFast − Forward| ≤ (G+4)·u·Σ_k |x̂q_k·ŵq_k| + 4u·(Σ_r |a_r·Up_r| + |Bias| + |y|)
//
// up to float32 terms (the emulation tests check this bound). This is the
// path for error measurement inside the smoothing search; use Forward when
// the exact kernel output matters. Rows are processed in blocks of 256; the
// quantization of a block's rows runs in parallel. It panics like Forward.
func (l *Layer) ForwardFast(y, x []float32, m int) {
	l.checkForward("ForwardFast", y, x, m)
	if m == 0 {
		return
	}
	w := l.DequantizeWeight()
	bs := min(m, forwardFastBlock)
	xq := make([]float32, bs*l.K)  // dequantized activations
	x16 := make([]float32, bs*l.K) // 16-bit raw input, for the down projection
	var t []float32
	if l.R > 0 {
		t = make([]float32, bs*l.R)
	}
	for i0 := 0; i0 < m; i0 += bs {
		rows := min(bs, m-i0)
		parallelRows(rows, func(lo, hi int) {
			s := l.newScratch()
			for i := lo; i < hi; i++ {
				l.prepareRow(x[(i0+i)*l.K:(i0+i+1)*l.K], s)
				copy(x16[i*l.K:(i+1)*l.K], s.x16)
				l.dequantizeActRow(xq[i*l.K:(i+1)*l.K], s)
			}
		})
		yb := y[i0*l.N : (i0+rows)*l.N]
		svd.Gemm(false, true, rows, l.N, l.K, 1, xq, l.K, w, l.K, 0, yb, l.N)
		if l.R > 0 {
			svd.Gemm(false, true, rows, l.R, l.K, 1, x16, l.K, l.Down, l.K, 0, t, l.R)
			svd.Gemm(false, true, rows, l.N, l.R, 1, t, l.R, l.Up, l.R, 1, yb, l.N)
		}
		for i := 0; i < rows; i++ {
			row := yb[i*l.N : (i+1)*l.N]
			for n, b := range l.Bias {
				row[n] += b
			}
		}
	}
}

// dequantizeActRow writes code·scale of the quantized row in s into dst [K].
func (l *Layer) dequantizeActRow(dst []float32, s *rowScratch) {
	gs := l.Precision.GroupSize()
	if l.Precision == NVFP4 {
		for k, c := range s.codes {
			dst[k] = e2m1Values[c] * s.scales[k/gs]
		}
		return
	}
	for k, c := range s.codes {
		dst[k] = float32(c) * s.scales[k/gs]
	}
}

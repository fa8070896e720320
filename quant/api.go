package quant

// This file declares entry points whose bodies land with the number formats
// and the emulation; it is removed once every function here has its real
// home (int4.go, nvfp4.go, weightonly.go, emulate.go). Signatures are the
// contract between the formats, the pipeline and the packers.

// QuantizeInt4 quantizes the [rows, k] row-major matrix v in groups of 64
// consecutive values along each row: scale = absmax/7, rounded by round (nil:
// kept in float32), codes = clamp(RoundToEven(v/scale), -8, 7) computed with
// the rounded scale. codes is [rows, k], scales [rows, ceil(k/64)]; a group
// of zeros gets scale 0 and codes 0. The last group of a row may be partial.
func QuantizeInt4(codes []int8, scales []float32, v []float32, rows, k int, round func(float32) float32) {
	panic("quant: QuantizeInt4 not implemented yet")
}

// QuantizeUint4 is QuantizeInt4 for non-negative inputs (the shifted GELU
// output): scale = max/15, codes in 0..15 (negative inputs clamp to 0).
func QuantizeUint4(codes []int8, scales []float32, v []float32, rows, k int, round func(float32) float32) {
	panic("quant: QuantizeUint4 not implemented yet")
}

// NVFP4TensorScale returns the per-tensor FP32 scale of an NVFP4 weight:
// absmax/(6·448), so that every group scale fits E4M3 (1 when v is all zero).
func NVFP4TensorScale(v []float32) float32 {
	panic("quant: NVFP4TensorScale not implemented yet")
}

// QuantizeNVFP4 quantizes [rows, k] v in groups of 16 to E2M1 codes (0..15,
// bit 3 the sign): group scale = absmax/6/tensorScale rounded to E4M3
// (saturating), code = nearest E2M1 value of v/(scale·tensorScale), ties to
// even. scales [rows, ceil(k/16)] hold the E4M3 values (without tensorScale).
// Activations use tensorScale = 1.
func QuantizeNVFP4(codes []int8, scales []float32, v []float32, rows, k int, tensorScale float32) {
	panic("quant: QuantizeNVFP4 not implemented yet")
}

// E2M1 returns the value of an E2M1 code (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6).
func E2M1(code int8) float32 {
	panic("quant: E2M1 not implemented yet")
}

// Forward emulates the layer on the [m, K] input x exactly as nunchaku's
// kernel computes it (activation quantization per token per group, unsigned
// shift case, int32 accumulation per group scaled in float32, low-rank branch
// on the raw input, bias) and writes the [m, N] result into y.
func (l *Layer) Forward(y, x []float32, m int) {
	panic("quant: Layer.Forward not implemented yet")
}

// QuantizeWeightOnly returns the W4A16 form of W [n, k] with optional bias [n]
// (nil: zeros), every stored value rounded to dt.
func QuantizeWeightOnly(w []float32, n, k int, bias []float32, dt Float16) *WeightOnly {
	panic("quant: QuantizeWeightOnly not implemented yet")
}

// Forward computes y = x·Wᵀ + b with the dequantized weight, in float32.
func (w *WeightOnly) Forward(y, x []float32, m int) {
	panic("quant: WeightOnly.Forward not implemented yet")
}

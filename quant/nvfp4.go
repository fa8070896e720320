package quant

import (
	"fmt"
	"math"
)

// NVFP4: E2M1 values in groups of 16, one FP8 E4M3 scale per group, and for
// weights one FP32 per-tensor scale.
//
//	format  codes             group  scales                  bits per weight
//	nvfp4   E2M1 (bit 3 sign) 16     E4M3 + FP32 per tensor  4 + 8/16 = 4.5
//
// A block of 16 codes packs into 8 bytes plus one E4M3 byte (9 bytes).
//
// The two-level weight scale follows deepcompressor's quantize_scale
// (deepcompressor/quantizer/impl/scale.py, scale dtypes [None,
// sfp8_e4m3_nan]): the group scale wanted is absmax_g/6; the tensor level is
// max over the tensor of that divided by 448 and kept in float32; each group
// scale is (absmax_g/6)/tensorScale rounded to E4M3; the codes are the
// nearest E2M1 values of v/(groupScale·tensorScale). nunchaku's kernel
// multiplies its FP32 accumulator by the tensor scale (`alpha`, loaded from
// `wtscale`; src/Linear.cpp, gemm_w4a4_fp4_block in gemm_w4a4.cuh).

// NVFP4Group is the number of consecutive values sharing one E4M3 scale.
const NVFP4Group = 16

// nvfp4Block is the storage of one NVFP4 group: 16 nibbles and one E4M3 byte.
type nvfp4Block struct {
	Q     [NVFP4Group / 2]uint8
	Scale uint8
}

const nvfp4BlockBytes = NVFP4Group/2 + 1 // 4.5 bits per weight

// e2m1Values is the value of each E2M1 code: bits s|e1 e0|m, bias 1, the
// exponent-0 codes subnormal (0 and 0.5); code 8 is −0.
var e2m1Values = func() (v [16]float32) {
	mag := [8]float32{0, 0.5, 1, 1.5, 2, 3, 4, 6}
	for c, m := range mag {
		v[c], v[c+8] = m, -m
	}
	v[8] = float32(math.Copysign(0, -1)) // a constant -0 would be +0
	return v
}()

// E2M1 returns the value of an E2M1 code (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6;
// code 8 is −0). It panics for a code outside 0..15.
func E2M1(code int8) float32 {
	if code < 0 || code > 15 {
		panic(fmt.Sprintf("quant: E2M1 code %d out of range 0..15", code))
	}
	return e2m1Values[code]
}

// NearestE2M1 returns the E2M1 code nearest to x, ties to the even code
// (round-to-nearest-even of the format, as cvt.rn.satfinite.e2m1x2.f32 does),
// magnitudes above 6 saturating to ±6. The sign bit follows the sign of x, so
// a small negative x gives code 8 (−0). NaN gives code 0.
func NearestE2M1(x float32) int8 {
	if x != x {
		return 0
	}
	a := abs32(x)
	var c int8
	switch {
	case a <= 0.25:
		c = 0
	case a < 0.75:
		c = 1
	case a <= 1.25:
		c = 2
	case a < 1.75:
		c = 3
	case a <= 2.5:
		c = 4
	case a < 3.5:
		c = 5
	case a <= 5:
		c = 6
	default:
		c = 7
	}
	if math.Signbit(float64(x)) {
		c |= 8
	}
	return c
}

// nvfp4TensorDiv is 6·448: the largest E2M1 magnitude times the largest E4M3.
const nvfp4TensorDiv = 6 * 448

// Pow2Up returns the smallest power of two ≥ s (s > 0 and finite). An
// NVFP4 tensor scale rounded up this way still keeps every group scale
// within E4M3, and a loader that has no per-tensor scale can carry it as a
// uniform per-channel scale exactly (nunchaku's SDXL loader: wcscales).
func Pow2Up(s float32) float32 {
	if !(s > 0) || math.IsInf(float64(s), 0) {
		panic(fmt.Sprintf("quant: Pow2Up(%v)", s))
	}
	fr, e := math.Frexp(float64(s)) // s = fr·2^e, fr in [0.5, 1)
	if fr == 0.5 {
		return s
	}
	return float32(math.Ldexp(1, e))
}

// NVFP4TensorScale returns the per-tensor FP32 scale of an NVFP4 weight:
// absmax/(6·448) (float32 division), so that every group scale fits E4M3;
// 1 when v is all zero. It panics on a NaN or ±Inf value.
func NVFP4TensorScale(v []float32) float32 {
	amax := groupAbsMax("NVFP4TensorScale", v, 0, 0)
	if amax == 0 {
		return 1
	}
	s := amax / nvfp4TensorDiv
	if s == 0 { // absmax below 2688 times the smallest subnormal
		return 1
	}
	return s
}

// QuantizeNVFP4 quantizes [rows, k] v in groups of 16 to E2M1 codes (0..15,
// bit 3 the sign): group scale = (absmax/6)/tensorScale rounded to E4M3
// (ties to even, saturating at 448), code = NearestE2M1(v/(scale·tensorScale))
// with the product and quotient in float32. codes [rows, k] and scales
// [rows, ceil(k/16)] are allocated by the caller; scales hold the E4M3 values
// (without tensorScale). A group whose E4M3 scale is 0 gets codes 0. The
// last group of a row may be partial. With tensorScale = 1 this is the
// reference activation quantizer (absmax/6, no tensor scale); the kernel's
// own activation rounding differs slightly, see QuantizeActNVFP4.
//
// It panics when a slice is too short, tensorScale is not a positive finite
// number, or v holds NaN or ±Inf.
func QuantizeNVFP4(codes []int8, scales []float32, v []float32, rows, k int, tensorScale float32) {
	const fn = "QuantizeNVFP4"
	g := (k + NVFP4Group - 1) / NVFP4Group
	checkQuantArgs(fn, len(codes), len(scales), len(v), rows, k, g)
	if !(tensorScale > 0) || math.IsInf(float64(tensorScale), 0) {
		panic(fmt.Sprintf("quant: %s: tensor scale %v is not a positive finite number", fn, tensorScale))
	}
	for r := 0; r < rows; r++ {
		row := v[r*k : (r+1)*k]
		for j := 0; j < g; j++ {
			b, e := j*NVFP4Group, min((j+1)*NVFP4Group, k)
			amax := groupAbsMax(fn, row[b:e], r, b)
			s := E4M3ToF32(F32ToE4M3Sat(amax / 6 / tensorScale))
			scales[r*g+j] = s
			out := codes[r*k+b : r*k+e]
			full := s * tensorScale
			if full == 0 {
				clear(out)
				continue
			}
			for i, x := range row[b:e] {
				out[i] = NearestE2M1(x / full)
			}
		}
	}
}

// DequantizeNVFP4 writes E2M1(codes[r,i])·scales[r,i/16]·tensorScale into
// the [rows, k] matrix dst (the product of the two scales first, in float32).
// It panics when a slice is too short or a code is out of range.
func DequantizeNVFP4(dst []float32, codes []int8, scales []float32, rows, k int, tensorScale float32) {
	g := (k + NVFP4Group - 1) / NVFP4Group
	checkQuantArgs("DequantizeNVFP4", len(codes), len(scales), len(dst), rows, k, g)
	for r := 0; r < rows; r++ {
		for i := 0; i < k; i++ {
			dst[r*k+i] = E2M1(codes[r*k+i]) * (scales[r*g+i/NVFP4Group] * tensorScale)
		}
	}
}

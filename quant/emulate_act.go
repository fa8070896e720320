package quant

import "math"

// Run-time activation quantization exactly as nunchaku's kernels do it
// (src/kernels/zgemm/gemm_w4a4.cuh: quantize_w4a4_from_fpsum_warp for INT4,
// quantize_w4a4_fp4_from_fpsum_warp for NVFP4, both reached from
// quantize_w4a4_fuse_lora_kernel and from the previous layer's
// EpilogueQuantize; gemm_utils.cuh for the conversions). Per token and group:
//
//	amax   = max |x̂|                      (x̂ already in the 16-bit type)
//	INT4:  s = amax · float32(1/7)         (1/15 unsigned), float32
//	       stored scale = s rounded to the 16-bit type (half_t(scale))
//	       code = sat(rint(x̂ · rcp(s)))    cvt.rni.s32.f32 then
//	                                       cvt.pack.sat.s4 / .u4
//	NVFP4: s = min(amax · float32(1/6), 448)
//	       stored scale = E4M3(s)          cvt.rn.satfinite.e4m3x2.f32
//	       code = e2m1(x̂ · rcp(s))         cvt.rn.satfinite.e2m1x2.f32
//
// The codes come from the reciprocal of the UNROUNDED float32 scale while the
// dequantization uses the stored (rounded) scale: this is what the kernel
// does (its source carries a TODO asking whether 1/fp8scale would be better),
// and it differs from the weight quantizers, which divide by the rounded
// scale. rcp is rcp.approx.ftz.f32 as measured on the GPU (kernelRecip,
// kernel_rcp.go), ftz included (a subnormal s gives an infinite reciprocal:
// nonzero values saturate, zeros give code 0). An
// all-zero group has scale 0 and codes 0 (the kernel's 0·Inf = NaN converts
// to 0). NaN or ±Inf in x̂ are not errors here: they propagate to the scale
// and so to the layer output, as on the GPU.

var (
	recip7  = float32(1) / 7
	recip15 = float32(1) / 15
	recip6  = float32(1) / 6
)

// rintSat converts f with cvt.rni.s32.f32 semantics (ties to even, NaN to 0,
// saturating) and clamps to [lo, hi] as cvt.pack.sat does.
func rintSat(f float32, lo, hi float64) int8 {
	if f != f {
		return 0
	}
	return int8(max(lo, min(hi, math.RoundToEven(float64(f)))))
}

// QuantizeActInt4 quantizes one token row xhat [k] (values already rounded to
// dt, as the kernel holds them) the way nunchaku's kernel does: groups of 64,
// signed (absmax/7, codes −8..7) or unsigned (absmax/15, codes 0..15, for the
// shifted GELU input). codes [k] and scales [ceil(k/64)] are allocated by the
// caller; scales receive the stored 16-bit scales. A partial last group is
// quantized over its real values (the kernel's zero padding does not change
// the maximum). It panics when a slice is too short.
func QuantizeActInt4(codes []int8, scales []float32, xhat []float32, unsigned bool, dt Float16) {
	k := len(xhat)
	g := (k + Int4Group - 1) / Int4Group
	checkQuantArgs("QuantizeActInt4", len(codes), len(scales), k, 1, k, g)
	recip, lo, hi := recip7, float64(-8), float64(7)
	if unsigned {
		recip, lo, hi = recip15, 0, 15
	}
	for j := 0; j < g; j++ {
		b, e := j*Int4Group, min((j+1)*Int4Group, k)
		amax := kernelAbsMax(xhat[b:e])
		s := amax * recip
		scales[j] = dt.Round(s)
		r := kernelRecip(s)
		for i, x := range xhat[b:e] {
			codes[b+i] = rintSat(x*r, lo, hi)
		}
	}
}

// QuantizeActNVFP4 quantizes one token row xhat [k] (values already rounded
// to the model's 16-bit type) the way nunchaku's FP4 kernel does: groups of
// 16, scale = min(absmax/6, 448) stored as E4M3, no tensor scale, codes the
// E2M1 values of x̂ times the reciprocal of the unrounded scale. codes [k] and
// scales [ceil(k/16)] (the E4M3 values) are allocated by the caller. It
// panics when a slice is too short.
func QuantizeActNVFP4(codes []int8, scales []float32, xhat []float32) {
	k := len(xhat)
	g := (k + NVFP4Group - 1) / NVFP4Group
	checkQuantArgs("QuantizeActNVFP4", len(codes), len(scales), k, 1, k, g)
	for j := 0; j < g; j++ {
		b, e := j*NVFP4Group, min((j+1)*NVFP4Group, k)
		amax := kernelAbsMax(xhat[b:e])
		s := min(amax*recip6, 448) // a NaN amax stays NaN (see kernelAbsMax)
		scales[j] = E4M3ToF32(F32ToE4M3Sat(s))
		r := kernelRecip(s)
		for i, x := range xhat[b:e] {
			p := x * r
			if s == 0 || p != p {
				codes[b+i] = 0
				continue
			}
			codes[b+i] = NearestE2M1(p)
		}
	}
}

// kernelAbsMax is max |x| with NaN propagating (the kernel's __hmax would drop
// a NaN; we keep it visible so that a broken input shows in the output).
func kernelAbsMax(v []float32) float32 {
	var m float32
	for _, x := range v {
		a := abs32(x)
		if a != a {
			return a
		}
		m = max(m, a)
	}
	return m
}

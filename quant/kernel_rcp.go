package quant

import (
	"math"
	"sort"
)

// kernelRecip returns 1/s as nunchaku's kernels compute it on the GPU:
// rcp.approx.ftz.f32 (cuda_frcp in src/kernels/zgemm/gemm_utils.cuh, for
// the activation scale), which is also the reciprocal inside __fdividef
// (h2div, the division by the smoothing factor). PTX documents it only as
// "at most 1 ulp" from 1/s; the results were measured on an H100 for every
// float32 mantissa (scripts/hw-probe.cu): they depend on the mantissa alone
// (0 mismatches over every exponent), and differ from the correctly rounded
// reciprocal by ±1 ulp for 13% of mantissas. kernel_rcp_table.go holds the
// corrections for every mantissa the kernels can meet: 16-bit smoothing
// factors, and scales amax·(1/7), amax·(1/15), amax·(1/6) of a 16-bit amax,
// and 448 (3507 mantissas, 467 corrections). Subnormal s gives ±Inf and a
// result below 2^-126 is flushed to zero (ftz). For a mantissa outside that
// domain the correctly rounded reciprocal is returned.
func kernelRecip(s float32) float32 {
	a := abs32(s)
	switch {
	case a != a:
		return s
	case a < 0x1p-126:
		return float32(math.Copysign(math.Inf(1), float64(s)))
	case a > 0x1p126: // 1/s is below 2^-126, and math.Inf gives 0 too
		return float32(math.Copysign(0, float64(s)))
	}
	r := 1 / s
	m := math.Float32bits(s) & 0x7fffff
	i := sort.Search(len(rcpApproxFix), func(i int) bool { return rcpApproxFix[i]>>1 >= m })
	if i < len(rcpApproxFix) && rcpApproxFix[i]>>1 == m {
		b := math.Float32bits(r)
		if rcpApproxFix[i]&1 == 1 {
			b++
		} else {
			b--
		}
		r = math.Float32frombits(b)
	}
	return r
}

// kernelDiv returns x/λ as __fdividef computes it on the GPU: x times
// rcp.approx.ftz(λ), rounded once to float32 (measured on an H100:
// 12582912 of 12582912 quotients, scripts/hw-probe.cu).
func kernelDiv(x, lambda float32) float32 {
	return float32(x * kernelRecip(lambda))
}

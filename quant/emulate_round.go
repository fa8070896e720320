package quant

import "math"

// Exact 16-bit arithmetic for the kernel emulation. nunchaku's INT4 GEMM
// keeps its accumulator in the model's 16-bit type and updates it with
// __hfma2 (one rounding of a·b + c); its epilogue adds the bias with __hadd2.
// These helpers give the correctly rounded (ties-to-even) 16-bit results of
// such operations on 16-bit or float32 inputs: the exact value is formed in
// float64 (products of two float32 are exact there) and sums are rounded to
// odd, which makes the final rounding to 8 or 11 significant bits correct
// (round-to-odd to p bits then to-nearest to q ≤ p−2 bits equals direct
// rounding to q bits).

// f16Params returns the significand bits after the point, the minimum
// normal exponent and the largest finite value of t.
func f16Params(t Float16) (man, emin int, maxFinite float64) {
	if t == F16 {
		return 10, -14, 65504
	}
	return 7, -126, math.Ldexp(2-math.Ldexp(1, -7), 127)
}

// roundTo rounds x to the nearest value of type t, ties to even, with
// subnormals and overflow to ±Inf; NaN stays NaN.
func roundTo(t Float16, x float64) float32 {
	if x != x || x == 0 || math.IsInf(x, 0) {
		return float32(x)
	}
	man, emin, maxFinite := f16Params(t)
	a := math.Abs(x)
	_, e := math.Frexp(a) // a = f·2^e, f in [0.5, 1)
	e--
	if e < emin {
		e = emin
	}
	q := math.Ldexp(math.RoundToEven(math.Ldexp(a, man-e)), e-man)
	if q > maxFinite {
		q = math.Inf(1)
	}
	return float32(math.Copysign(q, x))
}

// oddSum returns a + b rounded to float64 with round-to-odd: when the sum is
// inexact, the result is the neighbour of the exact value whose last
// significand bit is 1.
func oddSum(a, b float64) float64 {
	s := a + b
	if math.IsInf(s, 0) || s != s {
		return s
	}
	bb := s - a
	err := (a - (s - bb)) + (b - bb) // TwoSum: s + err == a + b exactly
	if err != 0 && math.Float64bits(s)&1 == 0 {
		if err > 0 {
			s = math.Nextafter(s, math.Inf(1))
		} else {
			s = math.Nextafter(s, math.Inf(-1))
		}
	}
	return s
}

// fma16 returns a·b + c rounded once to type t (__hfma2).
func fma16(t Float16, a, b, c float32) float32 {
	return roundTo(t, oddSum(float64(a)*float64(b), float64(c)))
}

// mul16 returns a·b rounded to type t (__hmul2).
func mul16(t Float16, a, b float32) float32 { return roundTo(t, float64(a)*float64(b)) }

// add16 returns a + b rounded to type t (__hadd2).
func add16(t Float16, a, b float32) float32 { return roundTo(t, oddSum(float64(a), float64(b))) }

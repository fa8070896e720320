package quant

import "math"

// mmaK16 returns one output of the GPU's 16-bit tensor-core product with
// float32 accumulation (mma.sync m16n8k16 .f32.f16.f16.f32 or .bf16): the
// accumulator c plus the dot product of a and b (len(a) = len(b) ≤ 16,
// values of type t; a shorter slice stands for zero-padded operands).
// nunchaku's low-rank up projection (EpilogueLoraUp: a chain of these from
// the 16-bit accumulator, one per 16 ranks) and down projection
// (EpilogueLoraDown: a chain over the 16-column tiles of each 128-column
// block) use it, and the result is not the correctly rounded sum.
//
// The model, fitted to and checked on 1,048,576 outputs measured on an H100
// (scripts/hw-probe.cu; FP16 and BF16, four input regimes including
// cancellation against c; every output matched):
//   - every nonzero product a·b is exact and carries the exponent
//     e(a)+e(b) (the operands' exponents, not the product's: the product of
//     two significands in [1, 2) may reach 4); c carries its own exponent;
//   - with E the largest of those exponents, each product and c is
//     truncated toward zero to a multiple of 2^(E−25);
//   - the truncated terms are added exactly, and the sum is truncated
//     toward zero to float32.
//
// Subnormal 16-bit operands are taken with the type's minimum exponent (the
// hardware's representation; not in the measured set). NaN or Inf operands
// give the float32 sum, NaN or Inf as the GPU would.
func mmaK16(t Float16, a, b []float32, c float32) float32 {
	_, emin, _ := f16Params(t)
	E := math.MinInt
	special := c != c || math.IsInf(float64(c), 0)
	for k, x := range a {
		y := b[k]
		if x == 0 || y == 0 {
			continue
		}
		if x != x || y != y || math.IsInf(float64(x), 0) || math.IsInf(float64(y), 0) {
			special = true
			continue
		}
		E = max(E, expOf(x, emin)+expOf(y, emin))
	}
	if special {
		s := float64(c)
		for k, x := range a {
			s += float64(x) * float64(b[k])
		}
		return float32(s)
	}
	if c != 0 {
		E = max(E, expOf(c, -126))
	}
	if E == math.MinInt { // nothing to add
		return c
	}
	var sum int64
	for k, x := range a {
		if y := b[k]; x != 0 && y != 0 {
			sum += int64(math.Trunc(math.Ldexp(float64(x)*float64(y), 25-E)))
		}
	}
	sum += int64(math.Trunc(math.Ldexp(float64(c), 25-E)))
	return truncF32(math.Ldexp(float64(sum), E-25))
}

// expOf is floor(log2 |x|) for nonzero finite x, and at least emin.
func expOf(x float32, emin int) int {
	_, e := math.Frexp(float64(x))
	return max(e-1, emin)
}

// truncF32 rounds v toward zero to float32.
func truncF32(v float64) float32 {
	f := float32(v)
	if math.Abs(float64(f)) > math.Abs(v) {
		f = math.Nextafter32(f, 0)
	}
	return f
}

// loraBlock is the number of input columns nunchaku's down projection
// reduces per block (BLOCK_N of gemm_base.cuh) before adding the blocks'
// float32 partial sums into lora_act with atomics.
const loraBlock = 128

// mmaDown returns x·d as nunchaku's down projection forms it: per block of
// 128 columns, a chain of mmaK16 over its 16-column tiles starting from 0;
// the blocks' sums added in float32 in block order (the GPU adds them with
// atomics, in an order it does not fix).
func mmaDown(t Float16, x, d []float32) float32 {
	var total float32
	for b := 0; b < len(x); b += loraBlock {
		var part float32
		for k := b; k < min(b+loraBlock, len(x)); k += 16 {
			e := min(k+16, len(x))
			part = mmaK16(t, x[k:e], d[k:e], part)
		}
		total += part
	}
	return total
}

// mmaUp returns acc + a·up as nunchaku's up projection forms it before the
// final rounding: a chain of mmaK16 over 16-rank tiles, starting from acc.
func mmaUp(t Float16, acc float32, a, up []float32) float32 {
	for r := 0; r < len(a); r += 16 {
		e := min(r+16, len(a))
		acc = mmaK16(t, a[r:e], up[r:e], acc)
	}
	return acc
}

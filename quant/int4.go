package quant

import (
	"fmt"
	"math"
)

// INT4 group formats.
//
//	format   codes    group  scale            bits per weight
//	int4     -8..7    64     16-bit absmax/7  4 + 16/64 = 4.25
//	uint4    0..15    64     16-bit absmax/15 4 + 16/64 = 4.25
//
// A block of 64 codes packs into 32 bytes plus one 16-bit scale (34 bytes);
// int4Block documents that size and the test checks it.

// Int4Group is the number of consecutive values sharing one INT4 scale.
const Int4Group = 64

// int4Block is the storage of one INT4 group: 64 nibbles and one 16-bit scale.
type int4Block struct {
	Scale uint16
	Q     [Int4Group / 2]uint8
}

const int4BlockBytes = 2 + Int4Group/2 // 4.25 bits per weight

// QuantizeInt4 quantizes the [rows, k] row-major matrix v in groups of 64
// consecutive values along each row: scale = absmax/7 (float32 division),
// rounded by round (nil: kept in float32), then
// codes = clamp(RoundToEven(v/scale), -8, 7) computed with the rounded scale,
// as deepcompressor's nunchaku converter does (deepcompressor
// backend/nunchaku/utils.py: weight.div(scale).round(), torch.round being
// round-half-to-even). codes is [rows, k] and scales [rows, ceil(k/64)], both
// allocated by the caller; a group whose scale is 0 (all zeros, or a scale
// that rounds to 0) gets codes 0. The last group of a row may be partial.
//
// It panics (prefix "quant:") when a slice is too short or a value of v is NaN
// or ±Inf: non-finite weights are the caller's error to catch (see
// FirstNonFinite).
func QuantizeInt4(codes []int8, scales []float32, v []float32, rows, k int, round func(float32) float32) {
	quantizeInt4(codes, scales, v, rows, k, round, false, "QuantizeInt4")
}

// QuantizeUint4 is QuantizeInt4 for the non-negative shifted GELU output:
// scale = absmax/15, codes = clamp(RoundToEven(v/scale), 0, 15), so negative
// inputs clamp to 0. For non-negative v (the only use: (gelu(x)+0.171875)/λ
// is always positive) absmax is the maximum; nunchaku's kernel takes the
// absolute maximum too (src/kernels/zgemm/gemm_w4a4.cuh,
// quantize_w4a4_from_fpsum_warp<use_unsigned=true>).
func QuantizeUint4(codes []int8, scales []float32, v []float32, rows, k int, round func(float32) float32) {
	quantizeInt4(codes, scales, v, rows, k, round, true, "QuantizeUint4")
}

func quantizeInt4(codes []int8, scales []float32, v []float32, rows, k int, round func(float32) float32, unsigned bool, fn string) {
	g := (k + Int4Group - 1) / Int4Group
	checkQuantArgs(fn, len(codes), len(scales), len(v), rows, k, g)
	qmax, lo, hi := float32(7), float64(-8), float64(7)
	if unsigned {
		qmax, lo, hi = 15, 0, 15
	}
	for r := 0; r < rows; r++ {
		row := v[r*k : (r+1)*k]
		for j := 0; j < g; j++ {
			b, e := j*Int4Group, min((j+1)*Int4Group, k)
			amax := groupAbsMax(fn, row[b:e], r, b)
			s := amax / qmax
			if round != nil {
				s = round(s)
			}
			scales[r*g+j] = s
			out := codes[r*k+b : r*k+e]
			if s == 0 {
				clear(out)
				continue
			}
			for i, x := range row[b:e] {
				q := math.RoundToEven(float64(x / s))
				out[i] = int8(max(lo, min(hi, q)))
			}
		}
	}
}

// DequantizeInt4 writes codes[r,i]·scales[r,i/64] into the [rows, k] matrix
// dst (signed or unsigned codes alike). It panics when a slice is too short.
func DequantizeInt4(dst []float32, codes []int8, scales []float32, rows, k int) {
	g := (k + Int4Group - 1) / Int4Group
	checkQuantArgs("DequantizeInt4", len(codes), len(scales), len(dst), rows, k, g)
	for r := 0; r < rows; r++ {
		for i := 0; i < k; i++ {
			dst[r*k+i] = float32(codes[r*k+i]) * scales[r*g+i/Int4Group]
		}
	}
}

// FirstNonFinite returns the index of the first NaN or ±Inf in v, or -1.
func FirstNonFinite(v []float32) int {
	for i, x := range v {
		if x-x != 0 { // NaN - NaN and Inf - Inf are NaN
			return i
		}
	}
	return -1
}

// groupAbsMax returns max |x| over one group, panicking on a non-finite value
// (r, b locate the group in the caller's matrix for the message).
func groupAbsMax(fn string, grp []float32, r, b int) float32 {
	var m float32
	for i, x := range grp {
		if x-x != 0 {
			panic(fmt.Sprintf("quant: %s: non-finite value %v at row %d, column %d", fn, x, r, b+i))
		}
		m = max(m, abs32(x))
	}
	return m
}

func checkQuantArgs(fn string, nCodes, nScales, nV, rows, k, g int) {
	if rows < 0 || k < 0 {
		panic(fmt.Sprintf("quant: %s: negative shape rows=%d k=%d", fn, rows, k))
	}
	if nV < rows*k || nCodes < rows*k || nScales < rows*g {
		panic(fmt.Sprintf("quant: %s: slices too short for rows=%d k=%d: values %d, codes %d, scales %d (want %d, %d, %d)",
			fn, rows, k, nV, nCodes, nScales, rows*k, rows*k, rows*g))
	}
}

func abs32(x float32) float32 { return math.Float32frombits(math.Float32bits(x) &^ (1 << 31)) }

package gguf

import (
	"encoding/binary"
	"math"
)

// Simple encoders (round to nearest on a max-based grid), for tests and
// tools that need GGUF files; they are not llama.cpp's searched
// quantizers (quantize_row_*_ref), and files they write dequantize with
// the same code as any other.

// f16 rounds f to binary16 (ties to even), for block scales.
func f16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	a := math.Abs(float64(f))
	switch {
	case math.IsNaN(float64(f)):
		return sign | 0x7e00
	case a >= 65520:
		return sign | 0x7c00
	case a < math.Ldexp(1, -25):
		return sign
	}
	e := math.Floor(math.Log2(a))
	if e < -14 {
		e = -14
	}
	m := math.RoundToEven(a / math.Ldexp(1, int(e)-10)) // 10 fraction bits
	if m >= 2048 {
		m /= 2
		e++
	}
	if m < 1024 { // subnormal
		return sign | uint16(m)
	}
	return sign | uint16(e+15)<<10 | uint16(m-1024)
}

// EncodeQ8_0 encodes x (a multiple of 32 elements) as Q8_0 blocks:
// d = max|x|/127, q = round(x/d).
func EncodeQ8_0(x []float32) []byte {
	out := make([]byte, 0, len(x)/32*34)
	for i := 0; i < len(x); i += 32 {
		amax := float32(0)
		for _, v := range x[i : i+32] {
			amax = max(amax, float32(math.Abs(float64(v))))
		}
		h := f16(amax / 127)
		d := half([]byte{byte(h), byte(h >> 8)})
		out = binary.LittleEndian.AppendUint16(out, h)
		for _, v := range x[i : i+32] {
			q := 0.0
			if d != 0 {
				q = math.Max(-127, math.Min(127, math.Round(float64(v/d))))
			}
			out = append(out, byte(int8(q)))
		}
	}
	return out
}

// EncodeQ4_K encodes x (a multiple of 256 elements) as Q4_K blocks: per
// sub-block of 32 a scale (max−min)/15 and a min −min(x, 0), both
// quantized to 6 bits against the block's d and dmin, then the nibbles
// q = round((x + dmin·m)/(d·sc)) clamped to 0..15.
func EncodeQ4_K(x []float32) []byte {
	out := make([]byte, 0, len(x)/QK_K*144)
	for i := 0; i < len(x); i += QK_K {
		blk := x[i : i+QK_K]
		var scales, mins [8]float32
		maxS, maxM := float32(0), float32(0)
		for j := range 8 {
			lo, hi := blk[32*j], blk[32*j]
			for _, v := range blk[32*j : 32*j+32] {
				lo, hi = min(lo, v), max(hi, v)
			}
			lo = min(lo, 0)
			scales[j], mins[j] = (hi-lo)/15, -lo
			maxS, maxM = max(maxS, scales[j]), max(maxM, mins[j])
		}
		hd, hm := f16(maxS/63), f16(maxM/63)
		d, dmin := half([]byte{byte(hd), byte(hd >> 8)}), half([]byte{byte(hm), byte(hm >> 8)})
		var ls, lm [8]uint8
		for j := range 8 {
			if d > 0 {
				ls[j] = uint8(min(63, math.Round(float64(scales[j]/d))))
			}
			if dmin > 0 {
				lm[j] = uint8(min(63, math.Round(float64(mins[j]/dmin))))
			}
		}
		var packed [12]byte
		for j := range 8 {
			if j < 4 {
				packed[j] = ls[j]
				packed[j+4] = lm[j]
			} else {
				packed[j+4] = ls[j]&0xf | (lm[j]&0xf)<<4
				packed[j-4] |= (ls[j] >> 4) << 6
				packed[j] |= (lm[j] >> 4) << 6
			}
		}
		var L [QK_K]uint8
		for j := range 8 {
			sc, m := scaleMinK4(j, packed[:])
			dd, dm := d*float32(sc), dmin*float32(m)
			if dd == 0 {
				continue
			}
			for l := range 32 {
				q := math.Round(float64((blk[32*j+l] + dm) / dd))
				L[32*j+l] = uint8(math.Max(0, math.Min(15, q)))
			}
		}
		out = binary.LittleEndian.AppendUint16(out, hd)
		out = binary.LittleEndian.AppendUint16(out, hm)
		out = append(out, packed[:]...)
		for j := 0; j < QK_K; j += 64 {
			for l := range 32 {
				out = append(out, L[j+l]|L[j+l+32]<<4)
			}
		}
	}
	return out
}

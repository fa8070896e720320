package gguf

import (
	"encoding/binary"
	"fmt"
	"math"
)

// The dequantizers below write one block's BlockSize values to dst and
// return the block's rounding noise: Σ step²/12 over its elements, step
// being the distance between adjacent codes at that element (the scale
// that multiplies its integer code). It is the expected squared error of
// rounding to nearest on that grid, the basis of Estimate.
//
// Each value is computed in float32 in ggml's order of operations, and
// every multiply is rounded to float32 before an add or subtract (Go's
// explicit float32 conversion forbids fusing), as on x86 builds of ggml.

// half widens an IEEE binary16 (ggml_half) to float32, exactly.
func half(b []byte) float32 {
	h := binary.LittleEndian.Uint16(b)
	sign := uint32(h>>15) << 31
	exp := int(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0xff<<23 | man<<13)
	case exp == 0 && man == 0:
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: man·2^-24
		v := float32(man) * (1.0 / (1 << 24))
		if sign != 0 {
			return -v
		}
		return v
	}
	return math.Float32frombits(sign | uint32(exp-15+127)<<23 | man<<13)
}

func sq(s float32) float64 { return float64(s) * float64(s) / 12 }

// dequantQ8_0: block_q8_0 {half d; int8 qs[32]}: y = qs·d.
func dequantQ8_0(y []float32, b []byte) float64 {
	d := half(b[0:])
	qs, y := b[2:34], y[:32]
	for j, q := range qs {
		y[j] = float32(int8(q)) * d
	}
	return 32 * sq(d)
}

// dequantQ4_0: block_q4_0 {half d; uint8 qs[16]}: element j is the low
// nibble of qs[j], element j+16 its high nibble, each minus 8, times d.
func dequantQ4_0(y []float32, b []byte) float64 {
	d := half(b[0:])
	qs := b[2:18]
	for j := range 16 {
		y[j] = float32(int(qs[j]&0x0f)-8) * d
		y[j+16] = float32(int(qs[j]>>4)-8) * d
	}
	return 32 * sq(d)
}

// dequantQ4_1: block_q4_1 {half d, m; uint8 qs[16]}: y = q·d + m.
func dequantQ4_1(y []float32, b []byte) float64 {
	d, m := half(b[0:]), half(b[2:])
	qs := b[4:20]
	for j := range 16 {
		y[j] = float32(float32(qs[j]&0x0f)*d) + m
		y[j+16] = float32(float32(qs[j]>>4)*d) + m
	}
	return 32 * sq(d)
}

// dequantQ5_0: block_q5_0 {half d; uint8 qh[4]; uint8 qs[16]}: the fifth
// bit of element j is bit j of the little-endian uint32 qh; codes minus 16.
func dequantQ5_0(y []float32, b []byte) float64 {
	d := half(b[0:])
	qh := binary.LittleEndian.Uint32(b[2:])
	qs := b[6:22]
	for j := range 16 {
		h0 := byte((qh>>j)<<4) & 0x10
		h1 := byte(qh>>(j+12)) & 0x10
		y[j] = float32(int((qs[j]&0x0f)|h0)-16) * d
		y[j+16] = float32(int((qs[j]>>4)|h1)-16) * d
	}
	return 32 * sq(d)
}

// dequantQ5_1: block_q5_1 {half d, m; uint8 qh[4]; uint8 qs[16]}: as
// Q5_0 without the offset, y = q·d + m.
func dequantQ5_1(y []float32, b []byte) float64 {
	d, m := half(b[0:]), half(b[2:])
	qh := binary.LittleEndian.Uint32(b[4:])
	qs := b[8:24]
	for j := range 16 {
		h0 := byte((qh>>j)<<4) & 0x10
		h1 := byte(qh>>(j+12)) & 0x10
		y[j] = float32(float32((qs[j]&0x0f)|h0)*d) + m
		y[j+16] = float32(float32((qs[j]>>4)|h1)*d) + m
	}
	return 32 * sq(d)
}

// scaleMinK4 unpacks the 6-bit scale and min of sub-block j (0..7) from
// the 12 packed bytes q of a Q4_K/Q5_K block (ggml-quants.c
// get_scale_min_k4): sub-blocks 0–3 keep theirs in the low 6 bits of
// q[j] and q[j+4]; 4–7 in the nibbles of q[j+4] with the top two bits in
// the high bits of q[j-4] (scale) and q[j] (min).
func scaleMinK4(j int, q []byte) (sc, m uint8) {
	if j < 4 {
		return q[j] & 63, q[j+4] & 63
	}
	return q[j+4]&0x0f | (q[j-4]>>6)<<4, q[j+4]>>4 | (q[j]>>6)<<4
}

// subScaleMin returns sub-block j's scale d·sc and min dmin·m, each
// product rounded to float32 (see scaleMinK4).
func subScaleMin(j int, q []byte, d, dmin float32) (float32, float32) {
	sc, m := scaleMinK4(j, q)
	return d * float32(sc), dmin * float32(m)
}

// dequantQ4_K: block_q4_K {half d, dmin; uint8 scales[12]; uint8 qs[128]},
// 8 sub-blocks of 32: y = (d·sc)·q − (dmin·m), q a nibble; each 32 bytes of
// qs hold two sub-blocks, low nibbles first.
func dequantQ4_K(y []float32, b []byte) float64 {
	d, dmin := half(b[0:]), half(b[2:])
	scales, q := b[4:16], b[16:144]
	noise := 0.0
	for is := 0; is < 8; is += 2 {
		d1, m1 := subScaleMin(is, scales, d, dmin)
		d2, m2 := subScaleMin(is+1, scales, d, dmin)
		for l := range 32 {
			y[l] = float32(d1*float32(q[l]&0x0f)) - m1
			y[32+l] = float32(d2*float32(q[l]>>4)) - m2
		}
		noise += 32*sq(d1) + 32*sq(d2)
		y, q = y[64:], q[32:]
	}
	return noise
}

// dequantQ5_K: block_q5_K {half d, dmin; uint8 scales[12]; uint8 qh[32];
// uint8 qs[128]}: as Q4_K with a fifth bit per element: for the sub-block
// pair p (0..3), bit 2p of qh[l] is element l's, bit 2p+1 element 32+l's.
func dequantQ5_K(y []float32, b []byte) float64 {
	d, dmin := half(b[0:]), half(b[2:])
	scales, qh, ql := b[4:16], b[16:48], b[48:176]
	noise := 0.0
	u1, u2 := byte(1), byte(2)
	for is := 0; is < 8; is += 2 {
		d1, m1 := subScaleMin(is, scales, d, dmin)
		d2, m2 := subScaleMin(is+1, scales, d, dmin)
		for l := range 32 {
			h1, h2 := byte(0), byte(0)
			if qh[l]&u1 != 0 {
				h1 = 16
			}
			if qh[l]&u2 != 0 {
				h2 = 16
			}
			y[l] = float32(d1*float32(ql[l]&0x0f+h1)) - m1
			y[32+l] = float32(d2*float32(ql[l]>>4+h2)) - m2
		}
		noise += 32*sq(d1) + 32*sq(d2)
		y, ql = y[64:], ql[32:]
		u1, u2 = u1<<2, u2<<2
	}
	return noise
}

// dequantQ6_K: block_q6_K {uint8 ql[128]; uint8 qh[64]; int8 scales[16];
// half d}, 16 sub-blocks of 16: y = (d·scale)·(q − 32), q 6 bits: 4 from
// ql, 2 from qh. Each half (128 elements) reads 64 bytes of ql, 32 of qh
// and 8 scales; element l+32k (k = 0..3) takes the low (k even) or high
// (k odd) nibble of ql[l + 32·(k mod 2)] and bits 2k, 2k+1 of qh[l].
func dequantQ6_K(y []float32, b []byte) float64 {
	ql, qh, sc := b[0:128], b[128:192], b[192:208]
	d := half(b[208:])
	noise := 0.0
	for n := 0; n < 2; n++ {
		for l := range 32 {
			is := l / 16
			q1 := int(ql[l]&0x0f|(qh[l]>>0&3)<<4) - 32
			q2 := int(ql[l+32]&0x0f|(qh[l]>>2&3)<<4) - 32
			q3 := int(ql[l]>>4|(qh[l]>>4&3)<<4) - 32
			q4 := int(ql[l+32]>>4|(qh[l]>>6&3)<<4) - 32
			y[l] = d * float32(int8(sc[is])) * float32(q1)
			y[l+32] = d * float32(int8(sc[is+2])) * float32(q2)
			y[l+64] = d * float32(int8(sc[is+4])) * float32(q3)
			y[l+96] = d * float32(int8(sc[is+6])) * float32(q4)
		}
		for k := range 8 {
			noise += 16 * sq(d*float32(int8(sc[k])))
		}
		y, ql, qh, sc = y[128:], ql[64:], qh[32:], sc[8:]
	}
	return noise
}

// dequantQ2_K: block_q2_K {uint8 scales[16]; uint8 qs[64]; half d, dmin},
// 16 sub-blocks of 16: y = (d·(sc&15))·q − dmin·(sc>>4), q 2 bits. Each
// half (128 elements) reads 32 bytes of qs four times, shifting by 0, 2, 4,
// 6; bytes 0–15 and 16–31 take consecutive scales.
func dequantQ2_K(y []float32, b []byte) float64 {
	scales, q := b[0:16], b[16:80]
	d, dmin := half(b[80:]), half(b[82:])
	noise := 0.0
	is := 0
	for n := 0; n < 2; n++ {
		for shift := uint(0); shift < 8; shift += 2 {
			for h := 0; h < 2; h++ {
				sc := scales[is]
				is++
				dl, ml := d*float32(sc&0x0f), dmin*float32(sc>>4)
				for l := range 16 {
					y[l] = float32(dl*float32(q[16*h+l]>>shift&3)) - ml
				}
				noise += 16 * sq(dl)
				y = y[16:]
			}
		}
		q = q[32:]
	}
	return noise
}

// q3Scale unpacks the 6-bit scale j (0..15) of a Q3_K block from its 12
// packed bytes: low nibble in byte j (j < 8) or the high nibble of byte
// j−8, top two bits at bit 2·(j/4) of byte 8 + j%4; minus 32 (the
// quantize_row_q3_K_ref packing, which dequantize_row_q3_K's kmask
// shuffle undoes).
func q3Scale(j int, s []byte) int {
	var lo byte
	if j < 8 {
		lo = s[j] & 0x0f
	} else {
		lo = s[j-8] >> 4
	}
	hi := s[8+j%4] >> (2 * (j / 4)) & 3
	return int(lo|hi<<4) - 32
}

// dequantQ3_K: block_q3_K {uint8 hmask[32]; uint8 qs[64]; uint8
// scales[12]; half d}, 16 sub-blocks of 16: y = (d·scale)·(q − 4·!h), q 2
// bits from qs as in Q2_K, h the element's bit of hmask (bit k of hmask[l]
// for the k-th shift step, counted across both halves).
func dequantQ3_K(y []float32, b []byte) float64 {
	hm, q, scales := b[0:32], b[32:96], b[96:108]
	d := half(b[108:])
	noise := 0.0
	is, m := 0, byte(1)
	for n := 0; n < 2; n++ {
		for shift := uint(0); shift < 8; shift += 2 {
			for h := 0; h < 2; h++ {
				dl := d * float32(q3Scale(is, scales))
				is++
				for l := range 16 {
					v := int(q[16*h+l] >> shift & 3)
					if hm[16*h+l]&m == 0 {
						v -= 4
					}
					y[l] = dl * float32(v)
				}
				noise += 16 * sq(dl)
				y = y[16:]
			}
			m <<= 1
		}
		q = q[32:]
	}
	return noise
}

// Dequantize decodes raw, the stored bytes of n elements of type t, into
// dst[:n] and returns the rounding noise Σ step²/12 (0 for F32/F16/BF16).
// n must be a multiple of t's block size and raw exactly its bytes.
func Dequantize(dst []float32, t Type, raw []byte) (float64, error) {
	ti, ok := types[t]
	if !ok {
		return 0, fmt.Errorf("unknown ggml type %d", uint32(t))
	}
	n := len(dst)
	if n%ti.blockSize != 0 || len(raw) != n/ti.blockSize*ti.typeSize {
		return 0, fmt.Errorf("%d bytes of %s do not make %d elements", len(raw), ti.name, n)
	}
	le := binary.LittleEndian
	switch t {
	case F32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
		return 0, nil
	case F16:
		for i := range dst {
			dst[i] = half(raw[2*i:])
		}
		return 0, nil
	case BF16:
		for i := range dst {
			dst[i] = math.Float32frombits(uint32(le.Uint16(raw[2*i:])) << 16)
		}
		return 0, nil
	}
	if ti.dequant == nil {
		return 0, fmt.Errorf("ggml type %s is not supported (supported: F32 F16 BF16 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q2_K Q3_K Q4_K Q5_K Q6_K)", ti.name)
	}
	noise := 0.0
	for i := 0; i < n/ti.blockSize; i++ {
		noise += ti.dequant(dst[i*ti.blockSize:(i+1)*ti.blockSize], raw[i*ti.typeSize:(i+1)*ti.typeSize])
	}
	return noise, nil
}

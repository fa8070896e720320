package gguf

import (
	"math"
	"testing"
)

// Each test writes one block by hand from the format's definition
// (ggml-common.h struct, ggml-quants.c dequantize_row_*) and checks every
// element against values worked out by hand in the comments.

// want builds an expected block: fill everywhere, then the listed
// (index, value) pairs and ranges.
func want(n int, fill float32, ranges [][3]float32, at map[int]float32) []float32 {
	w := make([]float32, n)
	for i := range w {
		w[i] = fill
	}
	for _, r := range ranges {
		for i := int(r[0]); i < int(r[1]); i++ {
			w[i] = r[2]
		}
	}
	for i, v := range at {
		w[i] = v
	}
	return w
}

func checkBlock(t *testing.T, typ Type, block []byte, exp []float32) {
	t.Helper()
	if len(block) != typ.TypeSize() || len(exp) != typ.BlockSize() {
		t.Fatalf("%s: block %d bytes / %d values, want %d / %d", typ, len(block), len(exp), typ.TypeSize(), typ.BlockSize())
	}
	got := make([]float32, len(exp))
	if _, err := Dequantize(got, typ, block); err != nil {
		t.Fatal(err)
	}
	for i := range exp {
		if got[i] != exp[i] {
			t.Errorf("%s: element %d = %v, want %v", typ, i, got[i], exp[i])
		}
	}
}

func TestBlockSizes(t *testing.T) {
	// ggml-common.h static_asserts: sizeof(block_*).
	for typ, size := range map[Type]int{Q4_0: 18, Q4_1: 20, Q5_0: 22, Q5_1: 24, Q8_0: 34, Q2_K: 84, Q3_K: 110,
		Q4_K: 144, Q5_K: 176, Q6_K: 210, Q8_K: 292, F32: 4, F16: 2, BF16: 2} {
		if typ.TypeSize() != size {
			t.Errorf("%s: %d bytes per block, want %d", typ, typ.TypeSize(), size)
		}
	}
}

func TestHalf(t *testing.T) {
	for h, w := range map[uint16]float32{0x3c00: 1, 0xc000: -2, 0x3800: 0.5, 0x0001: 1.0 / (1 << 24),
		0x7bff: 65504, 0x0400: 1.0 / (1 << 14), 0x8000: float32(math.Copysign(0, -1))} {
		if got := half([]byte{byte(h), byte(h >> 8)}); got != w || math.Signbit(float64(got)) != math.Signbit(float64(w)) {
			t.Errorf("half(%#04x) = %v, want %v", h, got, w)
		}
	}
	if g := half([]byte{0x00, 0x7c}); !math.IsInf(float64(g), 1) {
		t.Errorf("half(0x7c00) = %v", g)
	}
}

func TestDequantQ8_0(t *testing.T) {
	b := make([]byte, 34)
	b[0], b[1] = 0x00, 0x38                     // d = 0.5
	b[2], b[3], b[4], b[5] = 1, 0xfe, 127, 0x80 // 1, −2, 127, −128
	checkBlock(t, Q8_0, b, want(32, 0, nil, map[int]float32{0: 0.5, 1: -1, 2: 63.5, 3: -64}))
}

func TestDequantQ4_0(t *testing.T) {
	b := make([]byte, 18)
	b[0], b[1] = 0x00, 0x40 // d = 2
	for j := range 16 {
		b[2+j] = 0x88 // codes 8 → 0
	}
	b[2] = 0x3a // el 0: 10−8 = 2 → 4; el 16: 3−8 = −5 → −10
	b[3] = 0x08 // el 1: 0; el 17: 0−8 → −16
	checkBlock(t, Q4_0, b, want(32, 0, nil, map[int]float32{0: 4, 16: -10, 17: -16}))
}

func TestDequantQ4_1(t *testing.T) {
	b := make([]byte, 20)
	b[0], b[1] = 0x00, 0x40 // d = 2
	b[2], b[3] = 0x00, 0xbc // m = −1
	b[4] = 0xf1             // el 0: 1·2−1 = 1; el 16: 15·2−1 = 29
	checkBlock(t, Q4_1, b, want(32, -1, nil, map[int]float32{0: 1, 16: 29}))
}

func TestDequantQ5_0(t *testing.T) {
	b := make([]byte, 22)
	b[0], b[1] = 0x00, 0x3c // d = 1
	b[2], b[4] = 0x01, 0x01 // qh bit 0 (el 0) and bit 16 (el 16)
	b[6] = 0x32             // el 0: (2|16)−16 = 2; el 16: (3|16)−16 = 3
	checkBlock(t, Q5_0, b, want(32, -16, nil, map[int]float32{0: 2, 16: 3}))
}

func TestDequantQ5_1(t *testing.T) {
	b := make([]byte, 24)
	b[0], b[1] = 0x00, 0x38 // d = 0.5
	b[2], b[3] = 0x00, 0x3c // m = 1
	b[4] = 0x02             // qh bit 1: el 1 has the fifth bit
	b[9] = 0x04             // qs[1]: el 1 = (4|16)·0.5+1 = 11
	checkBlock(t, Q5_1, b, want(32, 1, nil, map[int]float32{1: 11}))
}

func TestDequantQ4_K(t *testing.T) {
	b := make([]byte, 144)
	b[0], b[1] = 0x00, 0x3c // d = 1
	b[2], b[3] = 0x00, 0x38 // dmin = 0.5
	s := b[4:16]
	s[0], s[4] = 2, 4 // sub-block 0: sc 2, m 4
	// Sub-block 1: sc 3, m 1; the top bits of q[1] and q[5] carry the high
	// bits of sub-block 5's scale (33 = 0b10_0001) and min (19 = 0b01_0011),
	// whose low nibbles are in q[9].
	s[1], s[5] = 3|2<<6, 1|1<<6
	s[9] = 0x1 | 0x3<<4
	q := b[16:]
	q[0] = 0x75  // el 0 (sub 0): 1·2·5 − 0.5·4 = 8; el 32 (sub 1): 1·3·7 − 0.5·1 = 20.5
	q[64] = 0xf0 // el 128 (sub 4: sc 0, m 0): 0; el 160 (sub 5): 33·15 − 0.5·19 = 485.5
	exp := want(256, 0, [][3]float32{{0, 32, -2}, {32, 64, -0.5}, {160, 192, -9.5}},
		map[int]float32{0: 8, 32: 20.5, 160: 485.5})
	checkBlock(t, Q4_K, b, exp)
}

func TestDequantQ5_K(t *testing.T) {
	b := make([]byte, 176)
	b[0], b[1] = 0x00, 0x3c // d = 1
	b[2], b[3] = 0x00, 0x3c // dmin = 1
	s := b[4:16]
	s[0], s[4] = 1, 2 // sub 0: sc 1, m 2
	s[1] = 1          // sub 1: sc 1, m 0
	s[2] = 2          // sub 2: sc 2, m 0
	qh, ql := b[16:48], b[48:]
	qh[0] = 0x03 // bit 0: el 0 +16; bit 1: el 32 +16
	qh[1] = 0x04 // bit 2 (pair 1, first half): el 64+1 = 65 +16
	ql[0] = 0x21 // el 0: 1·(1+16) − 2 = 15; el 32: 1·(2+16) − 0 = 18
	exp := want(256, 0, [][3]float32{{0, 32, -2}}, map[int]float32{0: 15, 32: 18, 65: 32})
	checkBlock(t, Q5_K, b, exp)
}

func TestDequantQ6_K(t *testing.T) {
	b := make([]byte, 210)
	ql, qh, sc := b[0:128], b[128:192], b[192:208]
	b[208], b[209] = 0x00, 0x34      // d = 0.25
	sc[0], sc[2], sc[4] = 3, 0xfe, 1 // 3, −2, 1 (elements 0–15, 32–47, 64–79)
	sc[8] = 5                        // second half, elements 128–143
	ql[0] = 0x1f                     // el 0 low nibble 15, el 64 high nibble 1
	qh[0] = 0x06                     // el 0 bits 2 → q 15|32 = 47; el 32 bits 1 → 16; el 64 bits 0; el 96 bits 0
	ql[64], qh[32] = 0x0a, 0x03      // el 128: 10|48 = 58
	// q − 32 times d·scale: el 0: 0.25·3·15 = 11.25; others 1–15: 0.25·3·(−32) = −24;
	// el 32: 0.25·(−2)·(16−32) = 8, 33–47: 16; el 64: 0.25·1·(1−32) = −7.75, 65–79: −8;
	// el 128: 0.25·5·26 = 32.5, 129–143: −40; all other scales are 0.
	exp := want(256, 0, [][3]float32{{1, 16, -24}, {33, 48, 16}, {65, 80, -8}, {129, 144, -40}},
		map[int]float32{0: 11.25, 32: 8, 64: -7.75, 128: 32.5})
	checkBlock(t, Q6_K, b, exp)
}

func TestDequantQ2_K(t *testing.T) {
	b := make([]byte, 84)
	s, q := b[0:16], b[16:80]
	b[80], b[81] = 0x00, 0x3c // d = 1
	b[82], b[83] = 0x00, 0x38 // dmin = 0.5
	s[0] = 0x23               // el 0–15: sc 3, m 2: 3·q − 1
	s[1] = 0x10               // el 16–31: sc 0, m 1: −0.5
	s[2] = 0x01               // el 32–47 (shift 2): sc 1, m 0
	s[8] = 0x02               // el 128–143 (second half, shift 0): sc 2
	q[0] = 0x0e               // el 0: q 2 → 5; el 32: (0x0e>>2)&3 = 3 → 3
	q[32] = 0x03              // el 128: q 3 → 6
	exp := want(256, 0, [][3]float32{{1, 16, -1}, {16, 32, -0.5}}, map[int]float32{0: 5, 32: 3, 128: 6})
	checkBlock(t, Q2_K, b, exp)
}

func TestDequantQ3_K(t *testing.T) {
	b := make([]byte, 110)
	hm, q, s := b[0:32], b[32:96], b[96:108]
	b[108], b[109] = 0x00, 0x3c // d = 1
	// Every scale 32 (→ 0): low nibbles 0, top bits 2 (0b10 in each pair).
	s[8], s[9], s[10], s[11] = 0xaa, 0xaa, 0xaa, 0xaa
	s[0] = 0x81              // scale 0: low 1 → 33 → 1; scale 8: low 8, top 2 → 40 → 8
	s[1] = 0x0e              // scale 1: low 14,
	s[9] = 0xaa&^3 | 1       // top 1 → 30 → −2
	q[0], hm[0] = 0x03, 0x11 // el 0: q 3, h set (m 1) → 1·3 = 3; el 128 reads hm bit 4 (m 16): set
	q[16] = 0x01             // el 16: q 1, h clear → −2·(1−4) = 6
	q[32] = 0x02             // el 128: q 2, h set → 8·2 = 16
	// Others with scale 1, −2, 8: q 0, h clear → −4, 8, −32.
	exp := want(256, 0, [][3]float32{{1, 16, -4}, {17, 32, 8}, {129, 144, -32}},
		map[int]float32{0: 3, 16: 6, 128: 16})
	checkBlock(t, Q3_K, b, exp)
}

func TestDequantizeErrors(t *testing.T) {
	if _, err := Dequantize(make([]float32, 32), Q8_K, make([]byte, 292)); err == nil {
		t.Error("Q8_K: no error")
	}
	if _, err := Dequantize(make([]float32, 31), Q8_0, make([]byte, 34)); err == nil {
		t.Error("31 elements of Q8_0: no error")
	}
	if _, err := Dequantize(make([]float32, 4), Type(99), make([]byte, 4)); err == nil {
		t.Error("type 99: no error")
	}
}

// TestEncodeRoundTrip: the encoders' output dequantizes to within half a
// step (Q8_0) and within one step (Q4_K, whose 6-bit scales round) of the
// input, and the rounding-noise estimate is of the right size.
func TestEncodeRoundTrip(t *testing.T) {
	x := make([]float32, 512)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)*0.37)) * float32(1+i%7)
	}
	for _, c := range []struct {
		typ Type
		enc func([]float32) []byte
		tol float64 // max error / block max|x|
	}{{Q8_0, EncodeQ8_0, 0.5 / 127 * 1.01}, {Q4_K, EncodeQ4_K, 2.0 / 15}} {
		y := make([]float32, len(x))
		noise, err := Dequantize(y, c.typ, c.enc(x))
		if err != nil {
			t.Fatal(err)
		}
		var e2, x2 float64
		for i := range x {
			bs := 32
			lo := i / bs * bs
			amax := 0.0
			for _, v := range x[lo : lo+bs] {
				amax = math.Max(amax, math.Abs(float64(v)))
			}
			if d := math.Abs(float64(y[i] - x[i])); d > c.tol*amax {
				t.Fatalf("%s: element %d: %v vs %v", c.typ, i, y[i], x[i])
			}
			e2 += float64(y[i]-x[i]) * float64(y[i]-x[i])
			x2 += float64(x[i]) * float64(x[i])
		}
		if ratio := e2 / noise; ratio < 0.3 || ratio > 3 {
			t.Errorf("%s: squared error %.3g vs estimated noise %.3g", c.typ, e2, noise)
		}
	}
}

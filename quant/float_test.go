package quant

import (
	"math"
	"testing"
)

func TestFloatKnownBits(t *testing.T) {
	inf := float32(math.Inf(1))
	cases := []struct {
		name string
		f    float32
		bf16 uint16
		f16  uint16
		e4m3 uint8
		e5m2 uint8
	}{
		{"zero", 0, 0x0000, 0x0000, 0x00, 0x00},
		{"negzero", float32(math.Copysign(0, -1)), 0x8000, 0x8000, 0x80, 0x80},
		{"one", 1, 0x3F80, 0x3C00, 0x38, 0x3C},
		{"minus two", -2, 0xC000, 0xC000, 0xC0, 0xC0},
		{"1.0625 tie e4m3 to even", 1.0625, 0x3F88, 0x3C40, 0x38, 0x3C},
		{"1.1875 tie e4m3 up", 1.1875, 0x3F98, 0x3CC0, 0x3A, 0x3D},
		{"e4m3 max", 448, 0x43E0, 0x5F00, 0x7E, 0x5F},
		{"e4m3 464 tie down", 464, 0x43E8, 0x5F40, 0x7E, 0x5F},
		{"e4m3 overflow nan, e5m2 tie to even", 480, 0x43F0, 0x5F80, 0x7F, 0x60},
		{"e4m3 min subnormal", 1.0 / 512, 0x3B00, 0x1800, 0x01, 0x18},
		{"e4m3 half min subnormal ties to zero", 1.0 / 1024, 0x3A80, 0x1400, 0x00, 0x14},
		{"fp16 max", 65504, 0x4780, 0x7BFF, 0x7F, 0x7C},
		{"fp16 overflow", 65520, 0x4780, 0x7C00, 0x7F, 0x7C},
		{"fp16 min subnormal", float32(math.Ldexp(1, -24)), 0x3380, 0x0001, 0x00, 0x00},
		{"e5m2 max", 57344, 0x4760, 0x7B00, 0x7F, 0x7B},
		{"e5m2 overflow", 61440, 0x4770, 0x7B80, 0x7F, 0x7C},
		{"inf", inf, 0x7F80, 0x7C00, 0x7F, 0x7C},
		{"-inf", -inf, 0xFF80, 0xFC00, 0xFF, 0xFC},
	}
	for _, c := range cases {
		if got := F32ToBF16(c.f); got != c.bf16 {
			t.Errorf("%s: bf16(%g) = %#04x, want %#04x", c.name, c.f, got, c.bf16)
		}
		if got := F32ToF16(c.f); got != c.f16 {
			t.Errorf("%s: f16(%g) = %#04x, want %#04x", c.name, c.f, got, c.f16)
		}
		if got := F32ToE4M3(c.f); got != c.e4m3 {
			t.Errorf("%s: e4m3(%g) = %#02x, want %#02x", c.name, c.f, got, c.e4m3)
		}
		if got := F32ToE5M2(c.f); got != c.e5m2 {
			t.Errorf("%s: e5m2(%g) = %#02x, want %#02x", c.name, c.f, got, c.e5m2)
		}
	}
	if got := F32ToE4M3Sat(1e6); got != 0x7E {
		t.Errorf("e4m3 sat(1e6) = %#x, want 0x7e", got)
	}
	if got := F32ToE4M3Sat(-inf); got != 0xFE {
		t.Errorf("e4m3 sat(-inf) = %#x, want 0xfe", got)
	}
	nan := float32(math.NaN())
	if F32ToBF16(nan)&0x7FC0 != 0x7FC0 || F32ToF16(nan)&0x7E00 != 0x7E00 ||
		F32ToE4M3(nan)&0x7F != 0x7F || F32ToE5M2(nan)&0x7F <= 0x7C {
		t.Errorf("NaN not kept: %#x %#x %#x %#x", F32ToBF16(nan), F32ToF16(nan), F32ToE4M3(nan), F32ToE5M2(nan))
	}
}

// Every bit pattern decodes and re-encodes to itself (NaNs stay NaN).
func TestFloatRoundTripAllPatterns(t *testing.T) {
	for b := 0; b < 1<<16; b++ {
		h := uint16(b)
		if f := F16ToF32(h); f == f && F32ToF16(f) != h {
			t.Fatalf("f16 %#04x -> %g -> %#04x", h, f, F32ToF16(f))
		} else if f != f && F32ToF16(f)&0x7C00 != 0x7C00 {
			t.Fatalf("f16 NaN %#04x lost", h)
		}
		if f := BF16ToF32(h); f == f && F32ToBF16(f) != h {
			t.Fatalf("bf16 %#04x -> %g -> %#04x", h, f, F32ToBF16(f))
		}
	}
	for b := 0; b < 256; b++ {
		u := uint8(b)
		if f := E4M3ToF32(u); f == f && F32ToE4M3(f) != u {
			t.Fatalf("e4m3 %#02x -> %g -> %#02x", u, f, F32ToE4M3(f))
		} else if f != f && b&0x7F != 0x7F {
			t.Fatalf("e4m3 %#02x decoded as NaN", u)
		}
		if f := E5M2ToF32(u); f == f && F32ToE5M2(f) != u {
			t.Fatalf("e5m2 %#02x -> %g -> %#02x", u, f, F32ToE5M2(f))
		}
	}
}

// The encoders agree with a brute-force nearest search (ties to the even
// pattern) on values between representable neighbours.
func TestFloatNearestEven(t *testing.T) {
	check := func(name string, n int, dec func(uint32) float32, enc func(float32) uint32) {
		for b := uint32(0); b+1 < uint32(n)/2; b++ {
			lo, hi := dec(b), dec(b+1)
			if lo != lo || hi != hi || math.IsInf(float64(hi), 0) {
				continue
			}
			mid := float32((float64(lo) + float64(hi)) / 2)
			want := b
			if b&1 == 1 {
				want = b + 1
			}
			if float64(mid) != (float64(lo)+float64(hi))/2 {
				continue // midpoint not representable in float32
			}
			if got := enc(mid); got != want {
				t.Fatalf("%s: midpoint %g of %#x,%#x -> %#x, want %#x", name, mid, b, b+1, got, want)
			}
		}
	}
	check("e4m3", 256, func(b uint32) float32 { return E4M3ToF32(uint8(b)) }, func(f float32) uint32 { return uint32(F32ToE4M3(f)) })
	check("e5m2", 256, func(b uint32) float32 { return E5M2ToF32(uint8(b)) }, func(f float32) uint32 { return uint32(F32ToE5M2(f)) })
	check("f16", 1<<16, func(b uint32) float32 { return F16ToF32(uint16(b)) }, func(f float32) uint32 { return uint32(F32ToF16(f)) })
}

package quant

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Exact conversions between float32 and the 16- and 8-bit float formats that
// checkpoints and the nunchaku layout use. Every encoder rounds to nearest,
// ties to even, keeps subnormals, maps NaN to a quiet NaN and overflow to
// ±Inf (or to NaN for E4M3, which has no infinity: PyTorch's float8_e4m3fn
// cast). F32ToE4M3Sat saturates instead, for scales that must stay finite.
//
//	format  bits  exp  mantissa  bias  max finite
//	bf16    16    8    7         127   3.39e38
//	fp16    16    5    10        15    65504
//	e4m3fn  8     4    3         7     448
//	e5m2    8     5    2         15    57344

// BF16ToF32 widens a bfloat16 bit pattern; it is exact.
func BF16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

// F32ToBF16 rounds f to the nearest bfloat16 (ties to even).
func F32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x0040 // quiet NaN, sign kept
	}
	b += 0x7FFF + (b>>16)&1
	return uint16(b >> 16)
}

// RoundBF16 returns f rounded to the nearest bfloat16 value.
func RoundBF16(f float32) float32 { return BF16ToF32(F32ToBF16(f)) }

// minifloat describes a small IEEE-like binary format.
type minifloat struct {
	exp, man int  // field widths
	bias     int  // exponent bias
	ieeeInf  bool // top exponent reserved for Inf/NaN (fp16, e5m2); false: e4m3fn
}

var (
	fmtF16  = minifloat{exp: 5, man: 10, bias: 15, ieeeInf: true}
	fmtE4M3 = minifloat{exp: 4, man: 3, bias: 7}
	fmtE5M2 = minifloat{exp: 5, man: 2, bias: 15, ieeeInf: true}
)

// maxFinite is the largest finite magnitude of the format.
func (m minifloat) maxFinite() float64 {
	if m.ieeeInf {
		emax := (1<<m.exp - 2) - m.bias
		return math.Ldexp(2-math.Ldexp(1, -m.man), emax)
	}
	// e4m3fn: top exponent is usable except mantissa all ones (NaN).
	emax := (1<<m.exp - 1) - m.bias
	return math.Ldexp(2-math.Ldexp(1, 1-m.man), emax)
}

func (m minifloat) nan() uint32 {
	if m.ieeeInf {
		return uint32(1<<m.exp-1)<<m.man | 1<<(m.man-1)
	}
	return uint32(1<<(m.exp+m.man) - 1)
}

func (m minifloat) inf() uint32 { return uint32(1<<m.exp-1) << m.man }

// encode rounds f to the format (ties to even). With sat, overflow clamps to
// the largest finite value; otherwise it gives Inf (or NaN without Inf).
func (m minifloat) encode(f float32, sat bool) uint32 {
	sign := uint32(0)
	if math.Signbit(float64(f)) {
		sign = 1 << (m.exp + m.man)
	}
	x := math.Abs(float64(f))
	switch {
	case x != x:
		return sign | m.nan()
	case math.IsInf(x, 0):
		if sat {
			return sign | m.encode(float32(m.maxFinite()), false)
		}
		if m.ieeeInf {
			return sign | m.inf()
		}
		return sign | m.nan()
	case x == 0:
		return sign
	}
	_, e := math.Frexp(x) // x = frac·2^e, frac in [0.5,1): exponent of x is e-1
	e--
	emin := 1 - m.bias
	if e < emin {
		e = emin // subnormal range shares the quantum of the smallest normal
	}
	quantum := math.Ldexp(1, e-m.man)
	q := math.RoundToEven(x/quantum) * quantum // exact: x has ≤ 24 significant bits
	if q > m.maxFinite() {
		if sat {
			q = m.maxFinite()
		} else if m.ieeeInf {
			return sign | m.inf()
		} else {
			return sign | m.nan()
		}
	}
	if q == 0 {
		return sign
	}
	_, qe := math.Frexp(q)
	qe--
	if qe < emin { // subnormal
		return sign | uint32(q/math.Ldexp(1, emin-m.man))
	}
	mant := uint32(q/math.Ldexp(1, qe-m.man)) - 1<<m.man
	return sign | uint32(qe+m.bias)<<m.man | mant
}

func (m minifloat) decode(b uint32) float32 {
	neg := b>>(m.exp+m.man)&1 == 1
	e := int(b>>m.man) & (1<<m.exp - 1)
	mant := b & (1<<m.man - 1)
	var v float64
	switch {
	case m.ieeeInf && e == 1<<m.exp-1:
		if mant != 0 {
			v = math.NaN()
		} else {
			v = math.Inf(1)
		}
	case !m.ieeeInf && e == 1<<m.exp-1 && mant == 1<<m.man-1:
		v = math.NaN()
	case e == 0:
		v = math.Ldexp(float64(mant), 1-m.bias-m.man)
	default:
		v = math.Ldexp(float64(mant|1<<m.man), e-m.bias-m.man)
	}
	if neg {
		v = -v
	}
	return float32(v)
}

// F16ToF32 widens an IEEE half-precision bit pattern; it is exact.
func F16ToF32(h uint16) float32 { return fmtF16.decode(uint32(h)) }

// F32ToF16 rounds f to the nearest IEEE half (ties to even, overflow to ±Inf).
func F32ToF16(f float32) uint16 { return uint16(fmtF16.encode(f, false)) }

// RoundF16 returns f rounded to the nearest IEEE half value.
func RoundF16(f float32) float32 { return F16ToF32(F32ToF16(f)) }

// E4M3ToF32 widens an FP8 E4M3 (fn: no infinities, 0x7F/0xFF are NaN) byte.
func E4M3ToF32(b uint8) float32 { return fmtE4M3.decode(uint32(b)) }

// F32ToE4M3 rounds f to FP8 E4M3 (ties to even); magnitudes that round past
// 448 become NaN, as PyTorch's float8_e4m3fn cast does.
func F32ToE4M3(f float32) uint8 { return uint8(fmtE4M3.encode(f, false)) }

// F32ToE4M3Sat rounds f to FP8 E4M3, clamping overflow to ±448.
func F32ToE4M3Sat(f float32) uint8 { return uint8(fmtE4M3.encode(f, true)) }

// E5M2ToF32 widens an FP8 E5M2 byte; it is exact.
func E5M2ToF32(b uint8) float32 { return fmtE5M2.decode(uint32(b)) }

// F32ToE5M2 rounds f to FP8 E5M2 (ties to even, overflow to ±Inf).
func F32ToE5M2(f float32) uint8 { return uint8(fmtE5M2.encode(f, false)) }

// Float16 names the 16-bit float type a model stores its unquantized values
// in (biases, smoothing factors, low-rank branches, kept layers).
type Float16 uint8

const (
	BF16 Float16 = iota // bfloat16 (the default for FLUX, SANA, Qwen-Image)
	F16                 // IEEE half (PixArt-Σ, SDXL checkpoints are often fp16)
)

// String returns the safetensors dtype name ("BF16" or "F16").
func (t Float16) String() string {
	if t == F16 {
		return "F16"
	}
	return "BF16"
}

// Round returns f rounded to the nearest value of type t.
func (t Float16) Round(f float32) float32 {
	if t == F16 {
		return RoundF16(f)
	}
	return RoundBF16(f)
}

// RoundAll rounds every element of v in place to type t.
func (t Float16) RoundAll(v []float32) {
	for i, f := range v {
		v[i] = t.Round(f)
	}
}

// Bits returns the 16-bit pattern of f rounded to type t.
func (t Float16) Bits(f float32) uint16 {
	if t == F16 {
		return F32ToF16(f)
	}
	return F32ToBF16(f)
}

// Encode writes v as little-endian 16-bit values of type t into a new slice.
func (t Float16) Encode(v []float32) []byte {
	out := make([]byte, 2*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint16(out[2*i:], t.Bits(f))
	}
	return out
}

// Decode converts little-endian raw tensor bytes of the safetensors dtype
// name dtype (F64 F32 F16 BF16 F8_E4M3 F8_E5M2 I64 I32 I16 I8 U8 BOOL) to
// float32, writing into dst, which must hold len(raw)/size elements. F64 and
// I64 values are rounded to the nearest float32.
func Decode(dst []float32, dtype string, raw []byte) error {
	size := map[string]int{"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2,
		"I16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}[dtype]
	if size == 0 {
		return fmt.Errorf("unsupported dtype %q", dtype)
	}
	if len(raw)%size != 0 || len(dst) != len(raw)/size {
		return fmt.Errorf("%d bytes of %s do not make %d elements", len(raw), dtype, len(dst))
	}
	le := binary.LittleEndian
	for i := range dst {
		p := raw[i*size:]
		var v float32
		switch dtype {
		case "F64":
			v = float32(math.Float64frombits(le.Uint64(p)))
		case "I64":
			v = float32(int64(le.Uint64(p)))
		case "F32":
			v = math.Float32frombits(le.Uint32(p))
		case "I32":
			v = float32(int32(le.Uint32(p)))
		case "F16":
			v = F16ToF32(le.Uint16(p))
		case "BF16":
			v = BF16ToF32(le.Uint16(p))
		case "I16":
			v = float32(int16(le.Uint16(p)))
		case "F8_E4M3":
			v = E4M3ToF32(p[0])
		case "F8_E5M2":
			v = E5M2ToF32(p[0])
		case "I8":
			v = float32(int8(p[0]))
		case "U8", "BOOL":
			v = float32(p[0])
		}
		dst[i] = v
	}
	return nil
}

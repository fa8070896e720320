package calib

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/svdq/svdq/formats/safetensors"
)

// Conversions between float32 and the sample dtypes. calib does not import
// quant (quant may import calib's types), so it carries these few lines;
// they agree with quant/float.go (round to nearest even, subnormals kept,
// overflow to ±Inf), which the tests check on every 16-bit pattern.

func bf16ToF32(h uint16) float32 { return math.Float32frombits(uint32(h) << 16) }

func f32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x0040
	}
	b += 0x7FFF + (b>>16)&1
	return uint16(b >> 16)
}

func f16ToF32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	e := uint32(h>>10) & 0x1F
	m := uint32(h & 0x3FF)
	switch {
	case e == 0x1F:
		return math.Float32frombits(sign | 0x7F800000 | m<<13)
	case e == 0: // zero or subnormal: m·2⁻²⁴
		v := float32(m) * 0x1p-24
		if sign != 0 {
			v = -v
		}
		return v
	}
	return math.Float32frombits(sign | (e+127-15)<<23 | m<<13)
}

func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	a := math.Abs(float64(f))
	switch {
	case f != f:
		return sign | 0x7E00
	case a >= 65520: // past 65504 + half an ulp: rounds to Inf
		return sign | 0x7C00
	case a == 0:
		return sign
	}
	_, e := math.Frexp(a)
	e-- // a = 1.m·2^e
	if e < -14 {
		e = -14 // subnormals share the quantum 2⁻²⁴
	}
	q := uint32(math.RoundToEven(math.Ldexp(a, 10-e))) // significand in units of 2^(e−10)
	if e == -14 && q < 1<<10 {
		return sign | uint16(q) // subnormal
	}
	if q == 1<<11 { // rounded up to the next binade
		q >>= 1
		e++
	}
	return sign | uint16(e+15)<<10 | uint16(q-1<<10)
}

// decodeSamples converts raw little-endian samples of dtype dt to float32.
func decodeSamples(dst []float32, dt safetensors.DType, raw []byte) error {
	if len(raw) != len(dst)*dt.Size() {
		return fmt.Errorf("%d bytes for %d %s values", len(raw), len(dst), dt)
	}
	le := binary.LittleEndian
	switch dt {
	case safetensors.F32:
		for i := range dst {
			dst[i] = math.Float32frombits(le.Uint32(raw[4*i:]))
		}
	case safetensors.F16:
		for i := range dst {
			dst[i] = f16ToF32(le.Uint16(raw[2*i:]))
		}
	case safetensors.BF16:
		for i := range dst {
			dst[i] = bf16ToF32(le.Uint16(raw[2*i:]))
		}
	default:
		return fmt.Errorf("dtype %s is not a sample dtype (F32, F16, BF16)", dt)
	}
	return nil
}

// encodeSamples converts v to raw little-endian bytes of dtype dt, rounding
// to nearest even for F16 and BF16.
func encodeSamples(v []float32, dt safetensors.DType) []byte {
	le := binary.LittleEndian
	out := make([]byte, len(v)*dt.Size())
	switch dt {
	case safetensors.F32:
		for i, x := range v {
			le.PutUint32(out[4*i:], math.Float32bits(x))
		}
	case safetensors.F16:
		for i, x := range v {
			le.PutUint16(out[2*i:], f32ToF16(x))
		}
	case safetensors.BF16:
		for i, x := range v {
			le.PutUint16(out[2*i:], f32ToBF16(x))
		}
	default:
		panic(fmt.Sprintf("calib: %s is not a sample dtype", dt))
	}
	return out
}

// roundSamples rounds v in place to the values dtype dt can hold.
func roundSamples(v []float32, dt safetensors.DType) {
	switch dt {
	case safetensors.F16:
		for i, x := range v {
			v[i] = f16ToF32(f32ToF16(x))
		}
	case safetensors.BF16:
		for i, x := range v {
			v[i] = bf16ToF32(f32ToBF16(x))
		}
	}
}

func sampleSlack(dt safetensors.DType) slack {
	switch dt {
	case safetensors.F16:
		return f16Slack
	case safetensors.BF16:
		return bf16Slack
	}
	return f32Slack
}

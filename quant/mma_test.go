package quant

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// mmaSample is one output measured on an H100 by scripts/hw-probe.cu: 16
// operand pairs (16-bit patterns), the accumulator and the result (float32
// bits). These were picked where the result is not the correctly rounded
// sum, so that a plain float32 sum fails them.
type mmaSample struct {
	t    Float16
	a, b [16]uint16
	c, d uint32
}

func (s mmaSample) operands() (a, b []float32, c, d float32) {
	a, b = make([]float32, 16), make([]float32, 16)
	for k := range 16 {
		a[k], b[k] = from16(s.t, s.a[k]), from16(s.t, s.b[k])
	}
	return a, b, math.Float32frombits(s.c), math.Float32frombits(s.d)
}

// mmaSamples: H100, 2026-12-07; two FP16 and two BF16 outputs, from the
// spread-exponent and the cancellation regimes.
var mmaSamples = []mmaSample{
	{F16, [16]uint16{0x32c6, 0x32a5, 0x3454, 0x2f49, 0xb044, 0x34b0, 0x40c4, 0xafdb, 0xb0f4, 0x40b7, 0xad02, 0xaf4d, 0x2430, 0xba5f, 0xc269, 0xb49b}, [16]uint16{0xb5d4, 0xb5c3, 0x3010, 0x17aa, 0x32d9, 0xb771, 0x3676, 0x9f8d, 0x2d4f, 0xa8b0, 0x2997, 0xb826, 0xad43, 0xbcf1, 0x2bb8, 0xbbf5}, 0xbfdb45ae, 0xb5280000},
	{F16, [16]uint16{0x9570, 0x5cb8, 0x2b33, 0x2808, 0xdbad, 0xc22d, 0x97d1, 0x5cbc, 0x4cae, 0x422a, 0x4c15, 0x3a93, 0x66a4, 0x37d0, 0x46ca, 0xe287}, [16]uint16{0xecf, 0x1aeb, 0x9484, 0xca8a, 0x1786, 0xe5e6, 0xc0ca, 0x9d43, 0xe08a, 0x9b02, 0x1d99, 0x5146, 0x3611, 0x1595, 0x30b5, 0x2623}, 0x44f56c86, 0xc56069be},
	{BF16, [16]uint16{0xbf2c, 0xbf08, 0xbeef, 0xbdea, 0xbf39, 0xbd6f, 0x3ed7, 0x3db7, 0x3f4c, 0x3d46, 0x3e38, 0xbfc1, 0x3dfb, 0xbf86, 0xbb8a, 0xc067}, [16]uint16{0xbf43, 0xbdf0, 0x3f55, 0xbc39, 0x3d8b, 0xbebb, 0xbd97, 0xbf7e, 0xbd8c, 0x3f14, 0x4010, 0xbf0a, 0xbf80, 0x3e9a, 0xbd85, 0xbfea}, 0xc0ec7093, 0x3b2cd800},
	{BF16, [16]uint16{0xc04b, 0xbe9b, 0x3f3d, 0x40f0, 0x3d47, 0xbe4e, 0x3d96, 0xbcf8, 0x3b90, 0x3bcc, 0x4372, 0x3cb1, 0xbdd0, 0x3d6e, 0xbd86, 0x3e19}, [16]uint16{0xbe37, 0xc37d, 0xbf34, 0x3ea9, 0xbf23, 0x4298, 0xc064, 0xbf80, 0xbbef, 0xbc64, 0xbe96, 0x424d, 0x3cac, 0x3f53, 0xc345, 0x4256}, 0xb80d3e0a, 0x416b3c8b},
}

func TestMMAHardwareSamples(t *testing.T) {
	for i, s := range mmaSamples {
		a, b, c, d := s.operands()
		if float32(float64(c)+sumProducts(a, b)) == d {
			t.Errorf("sample %d: the correctly rounded sum already gives the GPU's result", i)
		}
		if got := mmaK16(s.t, a, b, c); math.Float32bits(got) != math.Float32bits(d) {
			t.Errorf("sample %d: mmaK16 = %v, GPU %v", i, got, d)
		}
	}
}

// TestMMAHandComputed checks the model's rules on values worked out by hand.
func TestMMAHandComputed(t *testing.T) {
	one := []float32{1}
	cases := []struct {
		name       string
		t          Float16
		a, b       []float32
		c, want    float32
		correctlyR float32 // the correctly rounded sum, for contrast
	}{
		// The sum is truncated to float32: 1 + 1.75·2^-23 (exact on the grid
		// 2^-25 of E = 0) becomes 1 + 2^-23; rounding would give 1 + 2^-22.
		{"final truncation", F16, []float32{1, 1.75 * 0x1p-12}, []float32{1, 0x1p-11}, 0, 1 + 0x1p-23, 1 + 0x1p-22},
		// Terms are truncated on the grid before the sum: -(1+2^-10)·2^-22 is
		// -8.0078 grid steps of 2^-25 → -8, so the sum is 1 - 2^-22 exactly;
		// truncating the exact sum instead would give 1 - 2^-22 - 2^-24.
		{"grid truncation", F16, []float32{1, -(1 + 0x1p-10) * 0x1p-11}, []float32{1, 0x1p-11}, 0, 1 - 0x1p-22, 1 - 0x1p-22},
		// Products carry e(a)+e(b): 1.5·1.5 = 2.25 has exponent 0+0, so the
		// grid is 2^-25 and c = 2^-24·1.5 (exponent -24) survives whole;
		// 2.25 + 1.5·2^-24 truncated to float32 (ulp 2^-22) is 2.25.
		{"operand exponents", BF16, []float32{1.5}, []float32{1.5}, 1.5 * 0x1p-24, 2.25, 2.25},
		// c dominates: E = e(c) = 10; the product 2^-16 is below the grid
		// 2^-15 and vanishes; the correctly rounded sum also gives 1024.
		{"small product vanishes", F16, one, []float32{0x1p-16}, 1024, 1024, 1024},
		// Negative sums truncate toward zero: -1 - 1.75·2^-24 → -(1 + 2^-24·1.5)
		// on the grid, then toward zero to float32 (ulp 2^-23 above 1): -1;
		// rounding the exact sum gives -(1 + 2^-23).
		{"negative toward zero", F16, []float32{-1, -1.75 * 0x1p-12}, []float32{1, 0x1p-12}, 0, -1, -(1 + 0x1p-23)},
		{"all zero", BF16, []float32{0, 0}, []float32{1, 2}, -3.5, -3.5, -3.5},
	}
	for _, tc := range cases {
		if float32(float64(tc.c)+sumProducts(tc.a, tc.b)) != tc.correctlyR {
			t.Errorf("%s: the case's correctly rounded sum is wrong", tc.name)
		}
		if got := mmaK16(tc.t, tc.a, tc.b, tc.c); got != tc.want {
			t.Errorf("%s: mmaK16 = %v (%#x), want %v (%#x)", tc.name, got, math.Float32bits(got), tc.want, math.Float32bits(tc.want))
		}
	}
	if cases[0].want == cases[0].correctlyR {
		t.Errorf("the final-truncation case does not tell truncation from rounding")
	}
}

func sumProducts(a, b []float32) float64 {
	var s float64
	for k, x := range a {
		s += float64(x) * float64(b[k])
	}
	return s
}

// TestMMAProbe checks the model against every output of a hw-probe run:
// SVDQ_MMA_PROBE=DIR with DIR/mma_f16.bin and DIR/mma_bf16.bin.
func TestMMAProbe(t *testing.T) {
	dir := os.Getenv("SVDQ_MMA_PROBE")
	if dir == "" {
		t.Skip("set SVDQ_MMA_PROBE to a scripts/hw-probe.cu output directory")
	}
	const tile = 512 + 256 + 512 + 512
	for _, f := range []struct {
		name string
		t    Float16
	}{{"mma_f16.bin", F16}, {"mma_bf16.bin", BF16}} {
		raw, err := os.ReadFile(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		bad, n, rn := 0, 0, 0
		a, b := make([]float32, 16), make([]float32, 16)
		for off := 0; off+tile <= len(raw); off += tile {
			T := raw[off : off+tile]
			u16 := func(i int) uint16 { return binary.LittleEndian.Uint16(T[2*i:]) }
			f32 := func(base, i int) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(T[base+4*i:])) }
			for i := range 16 {
				for j := range 8 {
					for k := range 16 {
						a[k] = from16(f.t, u16(i*16+k))
						b[k] = from16(f.t, u16(256+k*8+j))
					}
					c, d := f32(768, i*8+j), f32(1280, i*8+j)
					n++
					if got := mmaK16(f.t, a, b, c); math.Float32bits(got) != math.Float32bits(d) && !(got == 0 && d == 0) {
						if bad++; bad <= 5 {
							t.Errorf("%s tile %d [%d,%d]: model %v, GPU %v", f.name, off/tile, i, j, got, d)
						}
					}
					s := float64(c)
					for k := range 16 {
						s += float64(a[k]) * float64(b[k])
					}
					if float32(s) != d {
						rn++
					}
				}
			}
		}
		t.Logf("%s: %d of %d outputs differ from the model (%d differ from the float64 sum rounded to float32)", f.name, bad, n, rn)
	}
}

package nunchaku

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/svdq/svdq/quant"
)

// layerCase is one W4A4 shape of the shared test table: odd sizes that need
// padding, exact multiples, rank 0.
type layerCase struct {
	name    string
	n, k, r int
}

var layerCases = []layerCase{
	{"odd", 200, 300, 21},
	{"exact", 128, 256, 16},
	{"tiny", 1, 1, 1},
	{"rank0", 130, 129, 0},
	{"wide", 3, 520, 40},
}

var precisions = []quant.Precision{quant.INT4, quant.NVFP4}
var dtypes = []quant.Float16{quant.BF16, quant.F16}

// rand16 returns a random value of dt (mixed signs and magnitudes).
func rand16(rng *rand.Rand, dt quant.Float16) float32 {
	v := float32(rng.NormFloat64() * math.Pow(2, float64(rng.IntN(12)-6)))
	return dt.Round(v)
}

// randE4M3 returns a random finite E4M3 value (any sign, subnormals too).
func randE4M3(rng *rand.Rand) float32 {
	for {
		b := uint8(rng.IntN(256))
		if b&0x7F != 0x7F {
			return quant.E4M3ToF32(b)
		}
	}
}

// randomLayer returns a valid layer of the given shape and formats.
func randomLayer(rng *rand.Rand, n, k, r int, p quant.Precision, dt quant.Float16) *quant.Layer {
	l := &quant.Layer{Precision: p, N: n, K: k, R: r, DType: dt, TensorScale: 1}
	l.Codes = make([]int8, n*k)
	for i := range l.Codes {
		if p == quant.INT4 {
			l.Codes[i] = int8(rng.IntN(16) - 8)
		} else {
			l.Codes[i] = int8(rng.IntN(16))
		}
	}
	l.Scales = make([]float32, n*l.Groups())
	for i := range l.Scales {
		if p == quant.INT4 {
			l.Scales[i] = rand16(rng, dt)
		} else {
			l.Scales[i] = randE4M3(rng)
		}
	}
	if p == quant.NVFP4 {
		l.TensorScale = float32(rng.Float64() * 1e-3)
	}
	fill := func(m int) []float32 {
		v := make([]float32, m)
		for i := range v {
			v[i] = rand16(rng, dt)
		}
		return v
	}
	l.Smooth, l.Down, l.Up, l.Bias = fill(k), fill(r*k), fill(n*r), fill(n)
	l.Unsigned = p == quant.INT4 && rng.IntN(2) == 0
	return l
}

// sameBits reports whether two float slices are equal bit for bit.
func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// requireSameLayer fails the test unless a and b agree in every field, bit
// for bit.
func requireSameLayer(t *testing.T, a, b *quant.Layer) {
	t.Helper()
	if a.Precision != b.Precision || a.N != b.N || a.K != b.K || a.R != b.R || a.DType != b.DType ||
		a.Unsigned != b.Unsigned || math.Float32bits(a.TensorScale) != math.Float32bits(b.TensorScale) {
		t.Fatalf("header differs: %v %d %d %d %v %v %g vs %v %d %d %d %v %v %g",
			a.Precision, a.N, a.K, a.R, a.DType, a.Unsigned, a.TensorScale,
			b.Precision, b.N, b.K, b.R, b.DType, b.Unsigned, b.TensorScale)
	}
	if len(a.Codes) != len(b.Codes) {
		t.Fatalf("codes length %d vs %d", len(a.Codes), len(b.Codes))
	}
	for i := range a.Codes {
		if a.Codes[i] != b.Codes[i] {
			t.Fatalf("codes[%d] = %d vs %d", i, a.Codes[i], b.Codes[i])
		}
	}
	for _, f := range []struct {
		name string
		x, y []float32
	}{{"scales", a.Scales, b.Scales}, {"smooth", a.Smooth, b.Smooth}, {"down", a.Down, b.Down},
		{"up", a.Up, b.Up}, {"bias", a.Bias, b.Bias}} {
		if !sameBits(f.x, f.y) {
			t.Fatalf("%s differs", f.name)
		}
	}
}

func tensorBySuffix(t *testing.T, ts []Tensor, suffix string) Tensor {
	t.Helper()
	for _, x := range ts {
		if x.Suffix == suffix {
			return x
		}
	}
	t.Fatalf("no %s tensor", suffix)
	return Tensor{}
}

func sameTensors(a, b []Tensor) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Suffix != b[i].Suffix || a[i].DType != b[i].DType || !sameShape(a[i].Shape, toInts(b[i].Shape)) ||
			string(a[i].Data) != string(b[i].Data) {
			return false
		}
	}
	return true
}

func toInts(s []int64) []int {
	out := make([]int, len(s))
	for i, v := range s {
		out[i] = int(v)
	}
	return out
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed+1)) }

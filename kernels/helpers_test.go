package kernels

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant"
)

// layerCase is one layer form of the shared test table.
type layerCase struct {
	name     string
	prec     quant.Precision
	dt       quant.Float16
	unsigned bool
	n, k, r  int
}

// layerCases covers every kernel family: signed and unsigned INT4, NVFP4,
// both 16-bit types, no low-rank branch, a rank over one activation launch
// (128), and sizes that need padding.
var layerCases = []layerCase{
	{"int4-bf16", quant.INT4, quant.BF16, false, 256, 384, 32},
	{"int4-unsigned-bf16", quant.INT4, quant.BF16, true, 256, 512, 32},
	{"int4-f16", quant.INT4, quant.F16, false, 384, 256, 16},
	{"int4-unsigned-f16", quant.INT4, quant.F16, true, 128, 256, 32},
	{"int4-rank0", quant.INT4, quant.BF16, false, 128, 256, 0},
	{"int4-rank144", quant.INT4, quant.BF16, false, 128, 384, 144},
	{"int4-padded", quant.INT4, quant.BF16, false, 200, 300, 32},
	{"nvfp4-bf16", quant.NVFP4, quant.BF16, false, 256, 384, 32},
	{"nvfp4-f16-padded", quant.NVFP4, quant.F16, false, 136, 200, 16},
}

// randLayer builds a random consistent layer: a Gaussian weight with an
// outlier column, smoothing in [0.5, 2], a random low-rank branch, the
// weight quantized with quant's quantizers; every value exact in its type.
func randLayer(rng *rand.Rand, c layerCase) *quant.Layer {
	n, k, r, dt := c.n, c.k, c.r, c.dt
	l := &quant.Layer{Precision: c.prec, N: n, K: k, R: r, DType: dt, Unsigned: c.unsigned, TensorScale: 1}
	gauss := func(s float64) float32 { return dt.Round(float32(rng.NormFloat64() * s)) }
	l.Smooth = make([]float32, k)
	for j := range l.Smooth {
		l.Smooth[j] = dt.Round(float32(0.5 + 1.5*rng.Float64()))
	}
	l.Down = make([]float32, r*k)
	for i := range l.Down {
		l.Down[i] = gauss(0.1)
	}
	l.Up = make([]float32, n*r)
	for i := range l.Up {
		l.Up[i] = gauss(0.1)
	}
	l.Bias = make([]float32, n)
	for i := range l.Bias {
		l.Bias[i] = gauss(0.1)
	}
	w := make([]float32, n*k)
	for i := range w {
		w[i] = float32(rng.NormFloat64() * 0.05)
		if i%k == 3 {
			w[i] *= 20
		}
	}
	l.Codes = make([]int8, n*k)
	l.Scales = make([]float32, n*l.Groups())
	if c.prec == quant.NVFP4 {
		l.TensorScale = quant.NVFP4TensorScale(w)
		quant.QuantizeNVFP4(l.Codes, l.Scales, w, n, k, l.TensorScale)
	} else {
		quant.QuantizeInt4(l.Codes, l.Scales, w, n, k, dt.Round)
	}
	return l
}

// randInput returns [m, k] activations with an outlier channel; nonNeg
// gives GELU-like values (≥ −0.17) for the unsigned layers.
func randInput(rng *rand.Rand, m, k int, nonNeg bool) []float32 {
	x := make([]float32, m*k)
	for i := range x {
		v := rng.NormFloat64()
		if i%k == 5 {
			v *= 15
		}
		if nonNeg {
			v = v * 0.5 * (1 + math.Erf(v/math.Sqrt2)) // GELU
		}
		x[i] = float32(v)
	}
	return x
}

// pack packs l with formats/nunchaku and assembles the Packed the kernels
// read, as gpu-check does from a file.
func pack(t testing.TB, l *quant.Layer) (*Packed, []nunchaku.Tensor) {
	t.Helper()
	ts, err := nunchaku.PackW4A4(l)
	if err != nil {
		t.Fatalf("PackW4A4: %v", err)
	}
	p, err := PackedFromTensors(Getter(nunchaku.MapGetter(ts)), l.N, l.K, l.Unsigned)
	if err != nil {
		t.Fatalf("PackedFromTensors: %v", err)
	}
	return p, ts
}

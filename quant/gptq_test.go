package quant

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

// gptqCase is a weight with correlated calibration inputs, the setting in
// which GPTQ's error feedback pays.
func gptqCase(n, k, s int, seed uint64) (w, x []float32) {
	rng := rand.New(rand.NewPCG(seed, 77))
	w = make([]float32, n*k)
	for i := range w {
		w[i] = float32(studentT(rng, 4) * 0.05)
	}
	// x = z·M with M mixing neighbouring channels: strongly correlated inputs.
	x = make([]float32, s*k)
	z := make([]float64, k)
	for i := 0; i < s; i++ {
		for j := range z {
			z[j] = rng.NormFloat64()
		}
		for j := 0; j < k; j++ {
			v := z[j]
			for d := 1; d <= 4; d++ {
				v += 0.8 * z[(j+d)%k]
			}
			x[i*k+j] = float32(v)
		}
	}
	return w, x
}

// outErr returns ‖X·(W − Q)ᵀ‖²_F.
func outErr(x []float32, s, k int, w, q []float32, n int) float64 {
	d := make([]float32, n*k)
	for i := range d {
		d[i] = w[i] - q[i]
	}
	y := make([]float64, s*n)
	RefOutput(y, x, s, k, d, n, nil)
	var e float64
	for _, v := range y {
		e += v * v
	}
	return e
}

func TestGPTQBeatsRoundToNearest(t *testing.T) {
	for _, prec := range []Precision{INT4, NVFP4} {
		for _, sh := range [][3]int{{64, 256, 512}, {96, 384, 128}} {
			n, k, s := sh[0], sh[1], sh[2]
			name := fmt.Sprintf("%v [%d,%d] s=%d", prec, n, k, s)
			w, x := gptqCase(n, k, s, uint64(n+k))
			ng := (k + prec.GroupSize() - 1) / prec.GroupSize()

			rtn := append([]float32(nil), w...)
			st := lrState{codes: make([]int8, n*k), scales: make([]float32, n*ng)}
			quantizeResidual(&st, rtn, n, k, prec, BF16, false)

			gq := append([]float32(nil), w...)
			codes, scales := make([]int8, n*k), make([]float32, n*ng)
			ts, ok := gptqQuantize(gq, n, k, gptqHessian(x, s, k, unitSmooth(k)), prec, BF16, false, codes, scales)
			if !ok {
				t.Fatalf("%s: Hessian not factorized", name)
			}
			// The stored codes and scales give back the values GPTQ reports.
			back := make([]float32, n*k)
			dequantize(back, &lrState{codes: codes, scales: scales, ts: ts}, n, k, prec)
			if !reflect.DeepEqual(back, gq) {
				t.Fatalf("%s: dequantized codes differ from GPTQ's values", name)
			}
			er, eg := outErr(x, s, k, w, rtn, n), outErr(x, s, k, w, gq, n)
			t.Logf("%s: output error² RTN %.4g, GPTQ %.4g (%.0f%%)", name, er, eg, 100*eg/er)
			if eg >= er {
				t.Errorf("%s: GPTQ error² %.4g not below RTN %.4g", name, eg, er)
			}
		}
	}
}

// TestGPTQIdentityIsRTN: with uncorrelated unit inputs (H = I) no error is
// fed forward, so GPTQ must reproduce the formats' round-to-nearest exactly.
func TestGPTQIdentityIsRTN(t *testing.T) {
	for _, prec := range []Precision{INT4, NVFP4} {
		n, k := 32, 200 // a partial last group and block
		w, _ := gptqCase(n, k, 1, 3)
		h := make([]float64, k*k)
		for j := 0; j < k; j++ {
			h[j*k+j] = 1
		}
		ng := (k + prec.GroupSize() - 1) / prec.GroupSize()
		want := lrState{codes: make([]int8, n*k), scales: make([]float32, n*ng)}
		wq := append([]float32(nil), w...)
		quantizeResidual(&want, wq, n, k, prec, BF16, false)
		codes, scales := make([]int8, n*k), make([]float32, n*ng)
		gq := append([]float32(nil), w...)
		ts, ok := gptqQuantize(gq, n, k, h, prec, BF16, false, codes, scales)
		if !ok || ts != want.ts || !reflect.DeepEqual(codes, want.codes) || !reflect.DeepEqual(scales, want.scales) || !reflect.DeepEqual(gq, wq) {
			t.Errorf("%v: GPTQ with H = I differs from round-to-nearest", prec)
		}
	}
}

// unitSmooth returns λ = 1 for k channels.
func unitSmooth(k int) []float32 {
	v := make([]float32, k)
	for i := range v {
		v[i] = 1
	}
	return v
}

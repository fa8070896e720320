package quant

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// TestQuantizeDequantInt4 checks the fused residual quantizer against
// QuantizeInt4 + DequantizeInt4 bit for bit: ties at .5, values that round
// past ±7, zero and subnormal groups, a partial last group, both dtypes.
func TestQuantizeDequantInt4(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, dt := range []Float16{BF16, F16} {
		for _, k := range []int{64, 200, 3072} {
			rows := 37
			v := make([]float32, rows*k)
			for i := range v {
				v[i] = float32(rng.NormFloat64() * math.Exp(3*rng.NormFloat64()))
			}
			g := (k + 63) / 64
			// Row 0: multiples of the scale; row 1: zeros; row 2:
			// subnormals; row 3: one huge value per group.
			for i := 0; i < k; i++ {
				v[i] = float32(i%15-7) * 0.5 * 7 / 7
				v[k+i] = 0
				v[2*k+i] = float32(i%5) * 1e-40
				// Row 4: exact ties of x/s (s = 0.25 from the 1.75 per group).
				v[4*k+i] = (float32(i%14-7) + 0.5) * 0.25
				if i%64 == 0 {
					v[4*k+i] = 1.75
				}
				v[3*k+i] = float32(rng.NormFloat64())
				if i%64 == 5 {
					v[3*k+i] = 1e30
				}
			}
			codes, scales := make([]int8, rows*k), make([]float32, rows*g)
			deq := make([]float32, rows*k)
			QuantizeInt4(codes, scales, v, rows, k, dt.Round)
			DequantizeInt4(deq, codes, scales, rows, k)
			impls := map[string]func([]int8, []float32, []float32, int, int, Float16){
				"dispatch": quantizeDequantInt4, "go": quantizeDequantInt4Go}
			if haveQuantAVX512 && k%64 == 0 {
				impls["avx512"] = func(c []int8, s, v []float32, rows, k int, dt Float16) {
					if !quantizeDequantInt4Fast(c, s, v, rows, k, dt) {
						t.Fatal("AVX-512 kernel did not run")
					}
				}
			}
			for name, f := range impls {
				fc, fs := make([]int8, rows*k), make([]float32, rows*g)
				fv := append([]float32(nil), v...)
				f(fc, fs, fv, rows, k, dt)
				if !reflect.DeepEqual(fc, codes) || !reflect.DeepEqual(fs, scales) {
					t.Fatalf("%s %v k=%d: codes or scales differ from QuantizeInt4", name, dt, k)
				}
				for i := range deq {
					if math.Float32bits(deq[i]) != math.Float32bits(fv[i]) && !(deq[i] == 0 && fv[i] == 0) {
						t.Fatalf("%s %v k=%d: dequantized [%d] = %v, want %v", name, dt, k, i, fv[i], deq[i])
					}
				}
			}
		}
	}
	defer func() {
		if recover() == nil {
			t.Error("NaN did not panic")
		}
	}()
	v := make([]float32, 64)
	v[3] = float32(math.NaN())
	quantizeDequantInt4(make([]int8, 64), make([]float32, 1), v, 1, 64, BF16)
}

// TestCandidateActivations checks setCandidate's activation path (16-bit
// input and shift precomputed once per layer) against Layer.prepareRow and
// dequantizeActRow, bit for bit, for both precisions, dtypes and shifts.
func TestCandidateActivations(t *testing.T) {
	for _, prec := range []Precision{INT4, NVFP4} {
		for _, dt := range []Float16{BF16, F16} {
			for _, shifted := range []bool{false, true} {
				sc := newSynth(patActOutliers, 64, 192, 40, 9, shifted)
				cfg := pipeConfig{prec: prec, dt: dt, rank: 8, iters: 1, maxRows: 256}
				g := newGroupEval([]Input{sc.in}, shifted, sc.c, cfg)
				g.setCandidate(SmoothCandidate{0.35, 0.65})
				act := &Layer{Precision: prec, K: g.k, Smooth: g.lam, Unsigned: g.shift != 0, DType: dt}
				s := act.newScratch()
				want := make([]float32, g.k)
				for i := 0; i < g.s; i++ {
					act.prepareRow(g.x[i*g.k:(i+1)*g.k], s)
					act.dequantizeActRow(want, s)
					if got := g.xq[i*g.k : (i+1)*g.k]; !reflect.DeepEqual(got, want) {
						t.Fatalf("%v %v shifted=%v: row %d differs from prepareRow", prec, dt, shifted, i)
					}
				}
			}
		}
	}
}

func BenchmarkQuantizeDequantInt4(b *testing.B) {
	const rows, k = 512, 3072
	rng := rand.New(rand.NewPCG(1, 2))
	v := make([]float32, rows*k)
	for i := range v {
		v[i] = float32(rng.NormFloat64())
	}
	w := make([]float32, len(v))
	codes, scales := make([]int8, rows*k), make([]float32, rows*k/64)
	b.SetBytes(int64(len(v) * 4))
	for range b.N {
		copy(w, v)
		quantizeDequantInt4(codes, scales, w, rows, k, BF16)
	}
}

// TestRefOutput32 bounds the float32 reference output against RefOutput's
// float64 product: 1e-5 of ‖Y‖ at K = 3072.
func TestRefOutput32(t *testing.T) {
	sc := newSynth(patActOutliers, 96, 3072, 16, 4, false)
	y64 := make([]float64, 16*96)
	y32 := make([]float64, 16*96)
	RefOutput(y64, sc.c.X, 16, 3072, sc.in.W, 96, nil)
	RefOutput32(y32, sc.c.X, 16, 3072, sc.in.W, 96)
	var d, n float64
	for i := range y64 {
		d += (y32[i] - y64[i]) * (y32[i] - y64[i])
		n += y64[i] * y64[i]
	}
	if rel := math.Sqrt(d / n); rel > 1e-5 {
		t.Errorf("RefOutput32 differs from RefOutput by %.3g of ‖Y‖", rel)
	}
}

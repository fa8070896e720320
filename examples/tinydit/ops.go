package tinydit

import (
	"math"
	"runtime"
	"sync"

	"github.com/svdq/svdq/svd"
)

// The row-major kernels of the batched forward pass. Activations are
// [rows, features] float32 slices. The matrix products go through svd.Gemm
// (our blocked AVX-512/AVX2 float32 GEMM): spago v1.1.0 evaluates a linear
// one token vector at a time (ag.Affine per vector, or mat.Dense.Mul without
// cache blocking), which measured several times slower on this model
// (spago_test.go, BenchmarkLinear*), and `svdq demo` must calibrate,
// quantize and evaluate in well under a minute on two cores.

// gemmNT computes y [m, n] = x [m, k]·wᵀ + b with w [n, k] (b may be nil).
func gemmNT(y, x []float32, m, k int, w []float32, n int, b []float32) {
	if m == 0 {
		return
	}
	svd.Gemm(false, true, m, n, k, 1, x, k, w, k, 0, y, n)
	if b != nil {
		parallel(m, func(lo, hi int) {
			for i := lo; i < hi; i++ {
				row := y[i*n : (i+1)*n]
				for j, v := range b {
					row[j] += v
				}
			}
		})
	}
}

// parallel runs fn over [0, n) split into contiguous chunks, one per CPU.
func parallel(n int, fn func(lo, hi int)) {
	w := min(runtime.GOMAXPROCS(0), n)
	if w <= 1 || n < 8 {
		fn(0, n)
		return
	}
	var wg sync.WaitGroup
	for t := range w {
		lo, hi := t*n/w, (t+1)*n/w
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(lo, hi)
		}()
	}
	wg.Wait()
}

// normEps is FLUX's LayerNorm and RMSNorm epsilon.
const normEps = 1e-6

// modulate writes LayerNorm(x)·(1 + scale) + shift into dst for the rows of
// x [b·t, d] (no affine parameters, as FLUX's norms), where sample s (rows
// s·t … s·t+t−1) uses scale and shift at mod[s·modStride + scaleOff …] and
// mod[s·modStride + shiftOff …].
func modulate(dst, x []float32, b, t, d int, mod []float32, modStride, shiftOff, scaleOff int) {
	parallel(b*t, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			s := i / t
			row, out := x[i*d:(i+1)*d], dst[i*d:(i+1)*d]
			shift := mod[s*modStride+shiftOff : s*modStride+shiftOff+d]
			scale := mod[s*modStride+scaleOff : s*modStride+scaleOff+d]
			var mean float64
			for _, v := range row {
				mean += float64(v)
			}
			mean /= float64(d)
			var vr float64
			for _, v := range row {
				dv := float64(v) - mean
				vr += dv * dv
			}
			inv := 1 / math.Sqrt(vr/float64(d)+normEps)
			for j, v := range row {
				out[j] = float32((float64(v)-mean)*inv)*(1+scale[j]) + shift[j]
			}
		}
	})
}

// gelu applies GELU with the tanh approximation (FLUX's "gelu-approximate")
// in place.
func gelu(x []float32) {
	parallel(len(x), func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x[i] = geluScalar(x[i])
		}
	})
}

// geluScalar is 0.5·x·(1 + tanh(u)) = x·sigmoid(2u), u = √(2/π)·(x + 0.044715·x³),
// in float32 with exp32 (relative error a few float32 ulps).
func geluScalar(x float32) float32 {
	const c = 0.7978845608028654 // √(2/π)
	u := c * (x + 0.044715*x*x*x)
	return x / (1 + exp32(-2*u))
}

// exp32 returns eˣ in float32 (Cephes expf: x = n·ln2 + r, |r| ≤ ln2/2, a
// degree-6 polynomial for eʳ, then the exponent bits), within 2 ulps for
// normal results; it saturates to 2¹²⁷·e^(88−88.02…) ≈ 1.6e38 above 88 and
// flushes results below 2⁻¹²⁶ to 0. Several times faster than math.Exp,
// which dominated the forward pass in GELU, SiLU and softmax.
func exp32(x float32) float32 {
	if x > 88 {
		x = 88
	} else if x < -87 {
		return 0
	}
	const log2e = 1.4426950408889634
	n := float32(math.Floor(float64(x)*log2e + 0.5)) // floor is an instruction on amd64
	r := x - n*0.693359375 + n*2.12194440e-4
	p := float32(1.9875691500e-4)
	p = p*r + 1.3981999507e-3
	p = p*r + 8.3334519073e-3
	p = p*r + 4.1665795894e-2
	p = p*r + 1.6666665459e-1
	p = p*r + 5.0000001201e-1
	y := p*r*r + r + 1
	return y * math.Float32frombits(uint32(int32(n)+127)<<23)
}

// silu returns x·sigmoid(x) element-wise in a new slice.
func silu(x []float32) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = v / (1 + exp32(-v))
	}
	return y
}

// rmsNormHeads applies RMSNorm with weight w [hd] to every head (hd
// consecutive values) of the rows [rows, stride] in columns [off, off+d).
func rmsNormHeads(x []float32, rows, stride, off, d, hd int, w []float32) {
	parallel(rows, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			for h := 0; h < d; h += hd {
				v := x[i*stride+off+h : i*stride+off+h+hd]
				var ss float64
				for _, a := range v {
					ss += float64(a) * float64(a)
				}
				inv := 1 / math.Sqrt(ss/float64(hd)+normEps)
				for j, a := range v {
					v[j] = float32(float64(a)*inv) * w[j]
				}
			}
		}
	})
}

// rope holds the rotary angles of the joint sequence: cos and sin
// [tokens, hd/2].
type rope struct {
	cos, sin []float32
	half     int
}

// ropeTheta is FLUX's rotary base.
const ropeTheta = 10000

// ropeAxes splits a head dimension into FLUX's three rotary axes (16, 56,
// 56 for 128; 8, 28, 28 for 64), each even — the split formats/preset
// writes into the model config.
func ropeAxes(hd int) [3]int {
	if hd == 128 {
		return [3]int{16, 56, 56}
	}
	a := (hd / 8) &^ 1
	b := ((hd - a) / 2) &^ 1
	return [3]int{a, b, hd - a - b}
}

// newRope builds the angles of FLUX's position ids: text tokens (0, 0, 0),
// then image token (row, col) as (0, row, col), each axis a rotary
// embedding of its own width.
func newRope(textTokens, grid, hd int) *rope {
	axes := ropeAxes(hd)
	n := textTokens + grid*grid
	r := &rope{cos: make([]float32, n*hd/2), sin: make([]float32, n*hd/2), half: hd / 2}
	for t := range n {
		var ids [3]int
		if t >= textTokens {
			p := t - textTokens
			ids = [3]int{0, p / grid, p % grid}
		}
		col := 0
		for a, da := range axes {
			for i := 0; i < da/2; i++ {
				omega := math.Pow(ropeTheta, -2*float64(i)/float64(da))
				ang := float64(ids[a]) * omega
				r.cos[t*r.half+col] = float32(math.Cos(ang))
				r.sin[t*r.half+col] = float32(math.Sin(ang))
				col++
			}
		}
	}
	return r
}

// apply rotates the pairs (2i, 2i+1) of every head of token t's vector v
// (length d, heads of hd): diffusers apply_rotary_emb with interleaved
// pairs.
func (r *rope) apply(v []float32, t, hd int) {
	c, s := r.cos[t*r.half:(t+1)*r.half], r.sin[t*r.half:(t+1)*r.half]
	for h := 0; h < len(v); h += hd {
		x := v[h : h+hd]
		for i := range r.half {
			a, b := x[2*i], x[2*i+1]
			x[2*i] = a*c[i] - b*s[i]
			x[2*i+1] = b*c[i] + a*s[i]
		}
	}
}

// applyAll rotates q and k [b·t, d] (token j of each sample at position j).
func (r *rope) applyAll(q, k []float32, b, t, d, hd int) {
	parallel(b*t, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			r.apply(q[i*d:(i+1)*d], i%t, hd)
			r.apply(k[i*d:(i+1)*d], i%t, hd)
		}
	})
}

// attention computes softmax(q·kᵀ/√hd)·v for every sample and head of the
// joint sequences q, k, v [b·t, d] (heads of hd consecutive columns) into
// out [b·t, d].
func attention(out, q, k, v []float32, b, t, d, hd int) {
	heads := d / hd
	scale := float32(1 / math.Sqrt(float64(hd)))
	parallel(b*heads, func(lo, hi int) {
		p := make([]float32, t*t)
		for job := lo; job < hi; job++ {
			s, h := job/heads, job%heads
			base := s*t*d + h*hd
			svd.Gemm(false, true, t, t, hd, scale, q[base:], d, k[base:], d, 0, p, t)
			for i := range t {
				softmaxRow(p[i*t : (i+1)*t])
			}
			svd.Gemm(false, false, t, hd, t, 1, p, t, v[base:], d, 0, out[base:], d)
		}
	})
}

// softmaxRow replaces x by softmax(x).
func softmaxRow(x []float32) {
	mx := x[0]
	for _, v := range x {
		mx = max(mx, v)
	}
	var sum float64
	for i, v := range x {
		e := exp32(v - mx)
		x[i] = e
		sum += float64(e)
	}
	inv := float32(1 / sum)
	for i := range x {
		x[i] *= inv
	}
}

// timestepEmbedding returns the sinusoidal embedding [len(ts), 256] of
// diffusers get_timestep_embedding(1000·t, 256, flip_sin_to_cos=True,
// downscale_freq_shift=0): (cos, sin) of 1000·t·10000^(−i/128).
func timestepEmbedding(ts []float32) []float32 {
	half := timeFreqDim / 2
	out := make([]float32, len(ts)*timeFreqDim)
	for s, t := range ts {
		for i := range half {
			f := math.Exp(-math.Log(10000) * float64(i) / float64(half))
			a := 1000 * float64(t) * f
			out[s*timeFreqDim+i] = float32(math.Cos(a))
			out[s*timeFreqDim+half+i] = float32(math.Sin(a))
		}
	}
	return out
}

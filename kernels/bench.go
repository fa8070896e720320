package kernels

import (
	"fmt"
	"sort"

	"github.com/svdq/svdq/quant"
)

// Shape is an N×K linear layer.
type Shape struct{ N, K int }

// FluxShapes are FLUX.1's W4A4 layer shapes: fused qkv (9216×3072), the
// attention output (3072×3072), the single blocks' qkv + MLP-in
// (12288×3072), MLP-out (3072×12288) and the single blocks' output
// projection (3072×15360).
var FluxShapes = []Shape{{9216, 3072}, {3072, 3072}, {12288, 3072}, {3072, 12288}, {3072, 15360}}

// FluxTokens are the token counts benchmarked (M).
var FluxTokens = []int{256, 1024, 4096}

// BenchOptions configures Bench; zero values take the defaults.
type BenchOptions struct {
	Shapes []Shape // default FluxShapes
	Tokens []int   // default FluxTokens
	Rank   int     // low-rank size (default 32)
	Iters  int     // timed runs per variant (default 30); the median is reported
	Warmup int     // untimed runs first (default 3)
	// Precision of the timed layers: quant.INT4 (the default) or
	// quant.NVFP4 (the FP16 mma kernels of cuda/gemm_nvfp4.cuh).
	Precision quant.Precision
	// DType is the layers' 16-bit type (default BF16; on Hopper FP16 INT4
	// layers run the INT8 wgmma, BF16 ones the FP8). The cuBLAS baseline
	// stays BF16.
	DType quant.Float16
}

// BenchResult is one (shape, M) measurement: median times in microseconds
// (each run timed with CUDA events after the L2 cache was flushed) and
// throughput counted as 2·M·N·K operations.
type BenchResult struct {
	N, K, M   int
	FusedUS   float64 `json:"fused_us"`   // act quant + down fused, GEMM + bias + up fused
	W4A4US    float64 `json:"w4a4_us"`    // act quant + GEMM + bias, no low-rank branch
	UnfusedUS float64 `json:"unfused_us"` // act quant, down pass, GEMM + bias, up pass
	BF16US    float64 `json:"bf16_us"`    // cuBLAS BF16 GEMM (FP32 accumulate), 0 when cuBLAS is missing
	FusedTOPS float64 `json:"fused_tops"`
	W4A4TOPS  float64 `json:"w4a4_tops"`
	BF16TOPS  float64 `json:"bf16_tflops"`
	// LowRankCost = Fused/W4A4 − 1: what the fused branch costs.
	LowRankCost float64 `json:"lowrank_cost"`
	// UnfusedCost = Unfused/W4A4 − 1: what the unfused branch costs.
	UnfusedCost float64 `json:"unfused_cost"`
	// SpeedupBF16 = BF16/Fused.
	SpeedupBF16 float64 `json:"speedup_vs_bf16"`
}

// Bench times the INT4 layer variants and cuBLAS BF16 on random data of
// every shape and token count (the weights are random codes and scales in
// the packed layout; activations random). progress, if non-nil, gets each
// result as it is measured. A missing cuBLAS leaves BF16US at 0 and is
// reported through the returned note.
func (d *Device) Bench(opt BenchOptions, progress func(BenchResult)) (results []BenchResult, note string, err error) {
	if opt.Shapes == nil {
		opt.Shapes = FluxShapes
	}
	if opt.Tokens == nil {
		opt.Tokens = FluxTokens
	}
	if opt.Rank == 0 {
		opt.Rank = 32
	}
	if opt.Iters == 0 {
		opt.Iters = 30
	}
	if opt.Warmup == 0 {
		opt.Warmup = 3
	}
	if opt.Precision == 0 {
		opt.Precision = quant.INT4
	}
	if opt.Precision != quant.INT4 && opt.Precision != quant.NVFP4 {
		return nil, "", fmt.Errorf("kernels: bench precision %v", opt.Precision)
	}
	if opt.DType != quant.BF16 && opt.DType != quant.F16 {
		return nil, "", fmt.Errorf("kernels: bench dtype %v", opt.DType)
	}
	if opt.Rank%16 != 0 || opt.Rank < 0 || opt.Iters < 1 {
		return nil, "", fmt.Errorf("kernels: bench rank %d must be a multiple of 16, iters ≥ 1", opt.Rank)
	}
	maxM := 0
	for _, m := range opt.Tokens {
		if m <= 0 {
			return nil, "", fmt.Errorf("kernels: bench token count %d", m)
		}
		maxM = max(maxM, m)
	}
	err = d.do(func() error {
		cb, cerr := d.loadCublas()
		if cerr != nil {
			note = cerr.Error()
		} else {
			note = "BF16 baseline: cuBLAS cublasGemmEx from " + cb.lib
		}
		flushBytes := max(2*d.L2Bytes, 64<<20)
		flush, err := d.alloc(flushBytes)
		if err != nil {
			return err
		}
		defer d.free(flush)
		t := &timer{d: d}
		if err := t.init(); err != nil {
			return err
		}
		defer t.destroy()
		for _, sh := range opt.Shapes {
			if sh.N%128 != 0 || sh.K%128 != 0 {
				return fmt.Errorf("kernels: bench shape %d×%d: N and K must be multiples of 128", sh.N, sh.K)
			}
			l, bufs, err := d.randomLayer(opt.Precision, opt.DType, sh.N, sh.K, opt.Rank, maxM)
			if err != nil {
				return err
			}
			err = func() error {
				defer func() {
					l.freeLocked()
					for _, b := range bufs {
						d.free(b)
					}
				}()
				// Sized for 256-row padding, the most any token count below
				// maxM gets (padRows depends on the tile picked for m).
				wmax, err := l.newWork(roundUp(maxM, 256))
				if err != nil {
					return err
				}
				defer wmax.free(d)
				if err := d.fillH(wmax.x, wmax.mpad*sh.K, -2, 2, 7, opt.DType); err != nil {
					return err
				}
				wbf, ybf := bufs[0], bufs[1]
				for _, m := range opt.Tokens {
					w := *wmax
					w.m, w.mpad = m, l.padRows(m)
					r := BenchResult{N: sh.N, K: sh.K, M: m}
					run := func(v Variant) func() error { return func() error { return l.enqueue(&w, v) } }
					for _, c := range []struct {
						dst *float64
						f   func() error
					}{{&r.FusedUS, run(Fused)}, {&r.W4A4US, run(NoLowRank)}, {&r.UnfusedUS, run(Unfused)}} {
						if *c.dst, err = t.median(c.f, flush, flushBytes, opt.Warmup, opt.Iters); err != nil {
							return err
						}
					}
					if cb != nil {
						gemm := func() error { return cb.gemmBF16(ybf, wmax.x, wbf, m, sh.N, sh.K) }
						if r.BF16US, err = t.median(gemm, flush, flushBytes, opt.Warmup, opt.Iters); err != nil {
							return err
						}
					}
					ops := 2 * float64(m) * float64(sh.N) * float64(sh.K)
					r.FusedTOPS = ops / r.FusedUS / 1e6
					r.W4A4TOPS = ops / r.W4A4US / 1e6
					r.LowRankCost = r.FusedUS/r.W4A4US - 1
					r.UnfusedCost = r.UnfusedUS/r.W4A4US - 1
					if r.BF16US > 0 {
						r.BF16TOPS = ops / r.BF16US / 1e6
						r.SpeedupBF16 = r.BF16US / r.FusedUS
					}
					results = append(results, r)
					if progress != nil {
						progress(r)
					}
				}
				return nil
			}()
			if err != nil {
				return err
			}
		}
		return nil
	})
	return results, note, err
}

// randomLayer allocates a layer of precision prec and 16-bit type dt with
// random packed tensors on the device (random bytes are valid 4-bit codes;
// NVFP4 scales are random E4M3 bytes, a few of them NaN, which costs the
// kernels no time), plus a random BF16 weight [n, k] and its output buffer
// [maxM, n] for the cuBLAS baseline (returned in bufs). Device goroutine.
func (d *Device) randomLayer(prec quant.Precision, dt quant.Float16, n, k, r, maxM int) (*Layer, []uint64, error) {
	l := &Layer{d: d, meta: Packed{Precision: prec, DType: dt, N: n, K: k, R: r, WTScale: 1}}
	wscales := benchFill{&l.ws, k / 64 * n, 0.002, 0.02, false}
	if prec == quant.NVFP4 {
		wscales = benchFill{&l.ws, k / 16 * n, 0, 0, true}
	}
	var bufs []uint64
	fail := func(err error) (*Layer, []uint64, error) {
		l.freeLocked()
		for _, b := range bufs {
			d.free(b)
		}
		return nil, nil, err
	}
	var wbf, ybf uint64
	for i, f := range []benchFill{
		{&l.qw, n * k / 2, 0, 0, true},
		wscales,
		{&l.bias, n, -0.5, 0.5, false},
		{&l.smooth, k, 0.5, 2, false},
		{&l.down, k * r, -0.05, 0.05, false},
		{&l.up, n * r, -0.05, 0.05, false},
		{&wbf, n * k, -0.05, 0.05, false},
		{&ybf, maxM * n, 0, 0, false},
	} {
		size := f.elems * 2
		if f.random {
			size = f.elems
		}
		p, err := d.alloc(size)
		if err != nil {
			return fail(err)
		}
		*f.dst = p
		if i >= 6 {
			bufs = append(bufs, p)
		}
		switch {
		case f.random:
			err = d.fillRandom(p, size, uint32(11+i))
		case f.lo != f.hi:
			dtf := dt
			if i >= 6 { // the cuBLAS baseline's weight
				dtf = quant.BF16
			}
			err = d.fillH(p, f.elems, f.lo, f.hi, uint32(11+i), dtf)
		}
		if err != nil {
			return fail(err)
		}
	}
	return l, bufs, nil
}

// benchFill is one random device tensor of randomLayer.
type benchFill struct {
	dst    *uint64
	elems  int // 16-bit elements, or bytes when random
	lo, hi float32
	random bool
}

// fillRandom fills bytes (a multiple of 4) with hashed words.
func (d *Device) fillRandom(p uint64, bytes int, seed uint32) error {
	n := uint64(bytes / 4)
	return d.launch("svdq_fill_random", [3]uint32{uint32((n + 255) / 256), 1, 1}, [3]uint32{256, 1, 1}, p, n, seed)
}

// fillH fills n 16-bit values of type dt uniform in [lo, hi).
func (d *Device) fillH(p uint64, n int, lo, hi float32, seed uint32, dt quant.Float16) error {
	bf := int32(1)
	if dt == quant.F16 {
		bf = 0
	}
	return d.launch("svdq_fill_h", [3]uint32{uint32((n + 255) / 256), 1, 1}, [3]uint32{256, 1, 1},
		p, uint64(n), lo, hi, seed, bf)
}

// timer measures device time with CUDA events.
type timer struct {
	d          *Device
	start, end uintptr
}

func (t *timer) init() error {
	dr := t.d.drv
	if err := dr.check("cuEventCreate", dr.cuEventCreate(&t.start, 0)); err != nil {
		return err
	}
	return dr.check("cuEventCreate", dr.cuEventCreate(&t.end, 0))
}

func (t *timer) destroy() {
	t.d.drv.cuEventDestroy(t.start)
	t.d.drv.cuEventDestroy(t.end)
}

// spinCycles keeps the GPU busy about 100 µs before each timed run.
const spinCycles = 200_000

// median runs f warmup times, then iters times each after overwriting the
// flush buffer (evicting L2) and queueing a spin kernel (so the host's
// launch overhead is not timed), and returns the median device time in µs.
func (t *timer) median(f func() error, flush uint64, flushBytes, warmup, iters int) (float64, error) {
	dr := t.d.drv
	for i := 0; i < warmup; i++ {
		if err := f(); err != nil {
			return 0, err
		}
	}
	if err := t.d.sync(); err != nil {
		return 0, err
	}
	times := make([]float64, iters)
	for i := range times {
		if err := t.d.memset(flush, uint8(i), flushBytes); err != nil {
			return 0, err
		}
		// Keep the GPU busy while the host enqueues the timed kernels.
		if err := t.d.launch("svdq_spin", [3]uint32{1, 1, 1}, [3]uint32{1, 1, 1}, uint64(spinCycles)); err != nil {
			return 0, err
		}
		if err := dr.check("cuEventRecord", dr.cuEventRecord(t.start, 0)); err != nil {
			return 0, err
		}
		if err := f(); err != nil {
			return 0, err
		}
		if err := dr.check("cuEventRecord", dr.cuEventRecord(t.end, 0)); err != nil {
			return 0, err
		}
		if err := dr.check("cuEventSynchronize", dr.cuEventSynchronize(t.end)); err != nil {
			return 0, err
		}
		if err := t.d.sync(); err != nil {
			return 0, err
		}
		var ms float32
		if err := dr.check("cuEventElapsedTime", dr.cuEventElapsedTime(&ms, t.start, t.end)); err != nil {
			return 0, err
		}
		times[i] = float64(ms) * 1000
	}
	sort.Float64s(times)
	return times[iters/2], nil
}

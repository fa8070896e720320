package kernels

import (
	"errors"
	"math"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/svdq/svdq/quant"
)

// GPU tests: they run where a CUDA driver and a GPU are present and skip
// with the driver's message elsewhere (CI).

var (
	gpuOnce sync.Once
	gpuDev  *Device
	gpuErr  error
)

func gpu(t *testing.T) *Device {
	t.Helper()
	gpuOnce.Do(func() { gpuDev, gpuErr = Open(0) })
	if gpuErr != nil {
		if errors.Is(gpuErr, ErrNoDriver) {
			t.Skipf("no GPU: %v", gpuErr)
		}
		t.Fatal(gpuErr)
	}
	return gpuDev
}

// fullVariants are the variants that compute a layer's full output.
var fullVariants = []Variant{Fused, Unfused, Reference}

// TestGPUMatchesEmulation runs every layer form of the table on the GPU with
// every variant and compares with quant.Layer.Forward under Tolerances.
func TestGPUMatchesEmulation(t *testing.T) {
	d := gpu(t)
	t.Logf("device: %v, PTX %s (%s)", d, d.PTX.File, d.PTX.NVCC)
	for _, c := range layerCases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(5, uint64(c.n+c.k)))
			l := randLayer(rng, c)
			p, _ := pack(t, l)
			gl, err := d.Upload(p)
			if err != nil {
				t.Fatal(err)
			}
			defer gl.Free()
			for _, m := range []int{1, 77, 130} {
				x := randInput(rng, m, c.k, c.unsigned)
				for _, v := range fullVariants {
					res, err := gl.Run(x, m, v)
					if err != nil {
						t.Fatalf("m=%d %v: %v", m, v, err)
					}
					diff := Verify(l, x, m, res)
					if !diff.OK() || diff.RelFro > 0x1p-8 {
						t.Errorf("m=%d %v: %v", m, v, diff)
					} else {
						t.Logf("m=%d %v: %v", m, v, diff)
					}
				}
			}
		})
	}
}

// TestGPUNVFP4Extremes runs an NVFP4 layer of random codes and random E4M3
// weight scales over the whole finite range (subnormals and 448 included),
// a tensor scale other than 1 and inputs whose groups span many binades,
// so that the FP16 operands of the tensor-core kernel (cuda/gemm_nvfp4.cuh)
// meet their subnormal and largest values. Every variant must match the
// emulation within Verify's tolerance; without the low-rank branch (whose
// up projection the mma kernels sum in another order than the emulation)
// the fused and the reference kernels must equal the emulation bit for bit.
func TestGPUNVFP4Extremes(t *testing.T) {
	d := gpu(t)
	for _, c := range []layerCase{
		{"bf16", quant.NVFP4, quant.BF16, false, 384, 512, 32},
		{"f16", quant.NVFP4, quant.F16, false, 256, 320, 16},
	} {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(13, uint64(c.n)))
			l := randLayer(rng, c)
			for i := range l.Codes {
				l.Codes[i] = int8(rng.IntN(16))
			}
			for i := range l.Scales {
				l.Scales[i] = quant.E4M3ToF32(uint8(rng.IntN(0x7F))) // 0x7F is NaN
			}
			l.TensorScale = 0.3671875
			if c.dt == quant.F16 { // most outputs inside FP16's range (the rest clamp)
				l.TensorScale /= 1024
			}
			const m = 96
			x := make([]float32, m*c.k)
			for i := range x {
				x[i] = float32(rng.NormFloat64() * math.Exp2(float64(rng.IntN(24)-16)))
			}
			l0 := *l // the same layer without the low-rank branch
			l0.R, l0.Down, l0.Up = 0, nil, nil
			for _, lc := range []struct {
				l        *quant.Layer
				variants []Variant
			}{{l, fullVariants}, {&l0, []Variant{Fused, Reference}}} {
				p, _ := pack(t, lc.l)
				gl, err := d.Upload(p)
				if err != nil {
					t.Fatal(err)
				}
				for _, v := range lc.variants {
					res, err := gl.Run(x, m, v)
					if err != nil {
						t.Fatalf("rank %d %v: %v", lc.l.R, v, err)
					}
					diff := Verify(lc.l, x, m, res)
					if !diff.OK() || (lc.l.R == 0 && diff.MaxAbs != 0) {
						t.Errorf("rank %d %v: %v", lc.l.R, v, diff)
					} else {
						t.Logf("rank %d %v: %v", lc.l.R, v, diff)
					}
				}
				gl.Free()
			}
		})
	}
}

// TestGPUFlippedByteFails checks that the comparison catches a file with one
// packed byte flipped (in qweight, then in wscales).
func TestGPUFlippedByteFails(t *testing.T) {
	d := gpu(t)
	for _, c := range []layerCase{layerCases[0], layerCases[1], layerCases[7]} {
		rng := rand.New(rand.NewPCG(9, uint64(c.n)))
		l := randLayer(rng, c)
		const m = 64
		x := randInput(rng, m, c.k, c.unsigned)
		for _, field := range []string{"qweight", "wscales", "bias", "smooth", "lora_down", "lora_up"} {
			p, _ := pack(t, l)
			fields := map[string]*[]byte{"qweight": &p.QWeight, "wscales": &p.WScales, "bias": &p.Bias,
				"smooth": &p.Smooth, "lora_down": &p.Down, "lora_up": &p.Up}
			b := append([]byte(nil), *fields[field]...) // the packer's bytes stay intact
			b[len(b)/3+1] ^= 0xFF
			*fields[field] = b
			gl, err := d.Upload(p)
			if err != nil {
				t.Fatal(err)
			}
			res, err := gl.Run(x, m, Fused)
			gl.Free()
			if err != nil {
				t.Fatal(err)
			}
			diff := Verify(l, x, m, res)
			if diff.OK() {
				t.Errorf("%s: flipped %s byte not detected: %v", c.name, field, diff)
			} else {
				t.Logf("%s: flipped %s byte: %v", c.name, field, diff)
			}
		}
	}
}

// TestGPUBenchSmall runs the benchmark harness on one small shape.
func TestGPUBenchSmall(t *testing.T) {
	d := gpu(t)
	res, note, err := d.Bench(BenchOptions{Shapes: []Shape{{1024, 1024}}, Tokens: []int{128}, Iters: 3}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", note)
	if len(res) != 1 || !(res[0].FusedUS > 0) || !(res[0].W4A4US > 0) || !(res[0].UnfusedUS > 0) {
		t.Fatalf("bench results %+v", res)
	}
	t.Logf("%+v", res[0])
}

// TestGPURepeatable runs the fused layer `runs` times with each block tile
// the device has and wants every run's bytes equal to the first (which
// must match the emulation). A race in a kernel shows here as a run that
// differs while one-off comparisons pass: it found the stage-release race
// of the one-warpgroup wgmma kernel (README, "Repeatability"). The
// activation pass sums the down projection with atomics when it splits
// K, in no fixed order (Verify allows for that); so the layer
// gets enough rows (64 per multiprocessor) for one block per 16-row tile
// to take all of K, and the runs must then agree bit for bit.
func TestGPURepeatable(t *testing.T) {
	d := gpu(t)
	m := 64 * d.SMs
	const runs = 20
	for _, c := range []layerCase{
		{"int4-bf16", quant.INT4, quant.BF16, false, 1024, 1536, 32},
		{"int4-unsigned-f16", quant.INT4, quant.F16, true, 1024, 1536, 32},
		{"nvfp4-bf16", quant.NVFP4, quant.BF16, false, 1024, 1536, 32},
	} {
		tiles := gemmTiles // NVFP4 runs the mma.sync tiles on every card
		if d.WGMMA && c.prec == quant.INT4 {
			tiles = wgTiles
		}
		rng := rand.New(rand.NewPCG(11, uint64(c.n)))
		l := randLayer(rng, c)
		p, _ := pack(t, l)
		gl, err := d.Upload(p)
		if err != nil {
			t.Fatal(err)
		}
		x := randInput(rng, m, c.k, c.unsigned)
		for _, tile := range tiles {
			t.Run(c.name+"/"+tile.name, func(t *testing.T) {
				t.Setenv(TileEnv, tile.name)
				if s, _ := actSplits(gl.padRows(m), gl.meta.KPad(), d.SMs); s != 1 {
					t.Fatalf("the activation pass splits K %d ways: its sums would not repeat", s)
				}
				first, err := gl.Run(x, m, Fused)
				if err != nil {
					t.Fatal(err)
				}
				if diff := Verify(l, x, m, first); !diff.OK() {
					t.Fatalf("first run: %v", diff)
				}
				bad := 0
				for run := 1; run < runs; run++ {
					res, err := gl.Run(x, m, Fused)
					if err != nil {
						t.Fatal(err)
					}
					if n, i := countDiff(res.Y, first.Y); n > 0 {
						bad++
						nl, _ := countDiff(res.LowRank, first.LowRank)
						t.Logf("run %d: %d outputs differ, the first at token %d channel %d (%g, was %g); %d low-rank sums differ",
							run, n, i/c.n, i%c.n, res.Y[i], first.Y[i], nl)
					}
				}
				if bad > 0 {
					t.Errorf("%d of %d repeated runs differ from the first", bad, runs-1)
				}
			})
		}
		gl.Free()
	}
}

// countDiff returns how many elements of a and b differ in their bits, and
// the index of the first.
func countDiff(a, b []float32) (n, first int) {
	first = -1
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			if n == 0 {
				first = i
			}
			n++
		}
	}
	return n, first
}

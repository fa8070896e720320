package kernels

import (
	"errors"
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

// variantsOf lists the variants that compute a layer's full output.
func variantsOf(p quant.Precision) []Variant {
	if p == quant.NVFP4 {
		return []Variant{Reference}
	}
	return []Variant{Fused, Unfused, Reference}
}

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
				for _, v := range variantsOf(c.prec) {
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
			if c.prec == quant.NVFP4 {
				if err := gl.Forward(make([]float32, c.n), make([]float32, c.k), 1, Fused); err == nil {
					t.Error("NVFP4 Fused did not return an error")
				}
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
			res, err := gl.Run(x, m, variantsOf(c.prec)[0])
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

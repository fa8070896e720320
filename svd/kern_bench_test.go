package svd

import "testing"

// benchKernel measures one micro-kernel on L1-resident packed panels
// (single goroutine): the ceiling the blocked driver can reach per core.
func benchKernel(b *testing.B, name string) {
	var kern *microKernel
	for _, k := range allVariants() {
		if k.name == name {
			kern = k
		}
	}
	if kern == nil {
		b.Skipf("no %s kernel on this CPU", name)
	}
	const kc = 256
	a := gaussMat(kc, kern.mr, 1)
	p := gaussMat(kc, kern.nr, 2)
	c := make([]float32, kern.mr*kern.nr)
	for b.Loop() {
		kern.fn(kc, &a[0], 1, kern.mr, &p[0], &c[0], kern.nr, 1, 1)
	}
	b.ReportMetric(2*float64(kc*kern.mr*kern.nr)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func BenchmarkKernelAVX512x12x32(b *testing.B) { benchKernel(b, "avx512x12x32") }
func BenchmarkKernelAVX512x8x48(b *testing.B)  { benchKernel(b, "avx512x8x48") }
func BenchmarkKernelAVX2x6x16(b *testing.B)    { benchKernel(b, "avx2x6x16") }
func BenchmarkKernelGeneric4x4(b *testing.B)   { benchKernel(b, "generic4x4") }

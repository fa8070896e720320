package quant

import "testing"

// benchmarkPipeline runs QuantizeGroup on one FLUX-sized layer [n, k] with
// 256 calibration rows (INT4, rank 32, up to 100 refinement iterations).
func benchmarkPipeline(b *testing.B, n, k int, mode SearchMode) {
	sc := newSynth(patActOutliers, n, k, 256, 1, false)
	opt := Options{Search: mode}
	b.ResetTimer()
	for range b.N {
		res, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res[0].RelError, "relerr")
		b.ReportMetric(float64(res[0].Evaluated), "candidates")
		b.ReportMetric(float64(res[0].Iters), "iters")
	}
}

func BenchmarkPipeline9216x3072Full(b *testing.B)  { benchmarkPipeline(b, 9216, 3072, SearchFull) }
func BenchmarkPipeline9216x3072Fast(b *testing.B)  { benchmarkPipeline(b, 9216, 3072, SearchFast) }
func BenchmarkPipeline3072x3072Full(b *testing.B)  { benchmarkPipeline(b, 3072, 3072, SearchFull) }
func BenchmarkPipeline3072x3072Fast(b *testing.B)  { benchmarkPipeline(b, 3072, 3072, SearchFast) }
func BenchmarkPipeline12288x3072Full(b *testing.B) { benchmarkPipeline(b, 12288, 3072, SearchFull) }
func BenchmarkPipeline12288x3072Fast(b *testing.B) { benchmarkPipeline(b, 12288, 3072, SearchFast) }
func BenchmarkPipeline3072x12288Full(b *testing.B) { benchmarkPipeline(b, 3072, 12288, SearchFull) }
func BenchmarkPipeline3072x12288Fast(b *testing.B) { benchmarkPipeline(b, 3072, 12288, SearchFast) }
func BenchmarkPipeline3072x15360Full(b *testing.B) { benchmarkPipeline(b, 3072, 15360, SearchFull) }
func BenchmarkPipeline3072x15360Fast(b *testing.B) { benchmarkPipeline(b, 3072, 15360, SearchFast) }

func benchmarkFluxLayer(b *testing.B, n, k int, mode SearchMode) {
	for range b.N {
		r, err := BenchLayer(n, k, mode)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.RelError, "relerr")
		b.ReportMetric(float64(r.Evaluated), "candidates")
		b.ReportMetric(float64(r.Iters), "iters")
	}
}

func BenchmarkFluxLayer3072x3072Fast(b *testing.B) { benchmarkFluxLayer(b, 3072, 3072, SearchFast) }
func BenchmarkFluxLayer3072x3072Full(b *testing.B) { benchmarkFluxLayer(b, 3072, 3072, SearchFull) }

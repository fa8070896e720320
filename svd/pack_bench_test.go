package svd

import "testing"

// benchPack measures packing a 3072×512 block of op(A) (transA) or of
// op(B) (transB) into 12- / 32-wide panels; reports ns per element.
func benchPack(b *testing.B, isA, trans bool) {
	const rows, kc, ld = 3072, 512, 3072
	src := gaussMat(rows, ld, 1) // big enough for either layout
	dst := make([]float32, (rows+32)*kc)
	g := &gemmProblem{transA: trans, transB: trans, m: rows, n: rows, k: kc, a: src, lda: ld, b: src, ldb: ld}
	for b.Loop() {
		if isA {
			packA(dst, g, 0, rows, 0, kc, 12)
		} else {
			packB(dst, g, 0, kc, 0, rows, 32, 0, rows/32)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/(rows*kc), "ns/elem")
}

func BenchmarkPackA(b *testing.B)      { benchPack(b, true, false) }
func BenchmarkPackATrans(b *testing.B) { benchPack(b, true, true) }
func BenchmarkPackB(b *testing.B)      { benchPack(b, false, false) }
func BenchmarkPackBTrans(b *testing.B) { benchPack(b, false, true) }

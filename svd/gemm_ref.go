package svd

// GemmRef computes C = alpha·op(A)·op(B) + beta·C in the plainest way, with
// float64 accumulation; it is the reference every fast path is tested
// against. op(A) is [m, k] (A stored [m, k] with row stride lda, or [k, m]
// when transA); op(B) is [k, n] (B stored [k, n] with stride ldb, or [n, k]
// when transB); C is [m, n] with stride ldc. When beta is 0, C is not read.
// Strides must be at least the stored row length (and at least 1); slices
// may be longer than needed. Panics with an "svd:" prefix on inconsistent
// sizes.
func GemmRef(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	for i := 0; i < m; i++ {
		for j := 0; j < n; j++ {
			var s float64
			for p := 0; p < k; p++ {
				var av, bv float32
				if transA {
					av = a[p*lda+i]
				} else {
					av = a[i*lda+p]
				}
				if transB {
					bv = b[j*ldb+p]
				} else {
					bv = b[p*ldb+j]
				}
				s += float64(av) * float64(bv)
			}
			v := alpha * float32(s)
			if beta != 0 {
				v += beta * c[i*ldc+j]
			}
			c[i*ldc+j] = v
		}
	}
}

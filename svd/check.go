package svd

import "fmt"

// checkGemm panics with an "svd:" prefix when the sizes, strides or slice
// lengths of a Gemm call are inconsistent. Slices may be longer than needed;
// a zero-sized operand may be nil.
func checkGemm(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("svd: Gemm with negative size m=%d n=%d k=%d", m, n, k))
	}
	ar, ac := m, k // A as stored: [ar, ac]
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	checkMat("A", a, ar, ac, lda)
	checkMat("B", b, br, bc, ldb)
	checkMat("C", c, m, n, ldc)
}

// checkMat checks that the [rows, cols] matrix with row stride ld fits in s.
func checkMat(name string, s []float32, rows, cols, ld int) {
	if ld < max(cols, 1) {
		panic(fmt.Sprintf("svd: Gemm: stride of %s is %d, less than its %d columns", name, ld, cols))
	}
	if rows == 0 || cols == 0 {
		return
	}
	if need := (rows-1)*ld + cols; len(s) < need {
		panic(fmt.Sprintf("svd: Gemm: %s [%d, %d] with stride %d needs %d values, has %d", name, rows, cols, ld, need, len(s)))
	}
}

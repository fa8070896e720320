//go:build openblas && cgo

package openblas

/*
#cgo LDFLAGS: -lopenblas
#include <cblas.h>
*/
import "C"

import "time"

// BuiltIn reports whether Bench measures anything: true in builds with the
// openblas tag.
const BuiltIn = true

// Bench measures OpenBLAS's cblas_sgemm on C [m, n] = A [m, k]·B [k, n]
// (row-major, no transposes, beta 0, OpenBLAS's own threads) and returns
// the best rate in GFLOP/s over calls lasting at least minTime in total
// (after one warm-up call).
func Bench(m, n, k int, minTime time.Duration) (gflops float64) {
	a, b, c := mats(m, n, k)
	return bestRate(m, n, k, minTime, func() {
		C.cblas_sgemm(C.CblasRowMajor, C.CblasNoTrans, C.CblasNoTrans,
			C.blasint(m), C.blasint(n), C.blasint(k), 1,
			(*C.float)(&a[0]), C.blasint(k), (*C.float)(&b[0]), C.blasint(n),
			0, (*C.float)(&c[0]), C.blasint(n))
	})
}

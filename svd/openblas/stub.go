//go:build !openblas || !cgo

package openblas

import "time"

// BuiltIn reports whether Bench measures anything: false in this build (the
// default, pure Go); build with -tags openblas (cgo, Debian libopenblas-dev).
const BuiltIn = false

// Bench returns 0: OpenBLAS is not built in (see BuiltIn).
func Bench(m, n, k int, minTime time.Duration) (gflops float64) { return 0 }

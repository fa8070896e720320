package svd

import (
	"fmt"
	"sync/atomic"
)

// microKernel computes one mr×nr tile of C:
//
//	acc[i, j] = Σ_{p<k} A(i, p) · b[p·nr + j]      A(i, p) = a[i·ars + p·aps]
//	C[i·ldc + j] = alpha·acc[i, j] + beta·C[i·ldc + j]
//
// a points at op(A)'s element (0, 0) of the tile, read through strides: a
// packed [k, mr] panel has ars = 1, aps = mr; a transposed A read in place
// has ars = 1, aps = lda; a row-major A read in place has ars = lda,
// aps = 1. b points at a packed [k, nr] panel of op(B), c at the tile's
// top-left element. k ≥ 1; all mr rows of A are read. When beta is ±0, C is
// not read. The blocking sizes say how
// the driver cuts the problem for this kernel: kc values of k per pass (the
// panels stay in L1/L2), mc rows of A per packed block (L2), nc columns of B
// per packed block (L3).
type microKernel struct {
	name       string
	mr, nr     int
	mc, kc, nc int
	fn         func(k int, a *float32, ars, aps int, b, c *float32, ldc int, alpha, beta float32)
}

// kernels lists the micro-kernels this CPU runs, fastest first; the generic
// Go kernel is always last. Architecture files prepend theirs in init.
var kernels = []*microKernel{genericKernel}

// activeKernel is the kernel Gemm uses (kernels[0] unless SetKernel chose
// another).
var activeKernel atomic.Pointer[microKernel]

func init() { activeKernel.Store(kernels[0]) }

// KernelNames returns the names of the GEMM micro-kernels this CPU can run,
// fastest first ("avx512", "avx2", "generic" on a recent x86-64 CPU).
func KernelNames() []string {
	names := make([]string, len(kernels))
	for i, k := range kernels {
		names[i] = k.name
	}
	return names
}

// KernelName returns the name of the micro-kernel Gemm currently uses.
func KernelName() string { return activeKernel.Load().name }

// SetKernel makes Gemm use the named micro-kernel (one of KernelNames; ""
// selects the fastest) and returns the name of the previous one. It exists
// for tests and benchmarks; calls of Gemm already running keep their kernel.
func SetKernel(name string) (prev string, err error) {
	prev = KernelName()
	if name == "" {
		activeKernel.Store(kernels[0])
		return prev, nil
	}
	for _, k := range kernels {
		if k.name == name {
			activeKernel.Store(k)
			return prev, nil
		}
	}
	return prev, fmt.Errorf("svd: no GEMM kernel %q on this CPU (have %v)", name, KernelNames())
}

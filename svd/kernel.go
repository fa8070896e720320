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
// not read. The blocking sizes say how the driver cuts the problem for this
// kernel: kc values of k per pass (the panels stay in L1/L2), mc rows of A
// per packed block (L2), nc columns of B per packed block (L3).
type microKernel struct {
	name       string
	mr, nr     int
	mc, kc, nc int
	fn         func(k int, a *float32, ars, aps int, b, c *float32, ldc int, alpha, beta float32)
}

// kernelSet is the micro-kernels of one instruction set: tile shapes among
// which Gemm picks the cheapest for each product (e.g. 12×32 for square
// products, 8×48 for a 48-wide C).
type kernelSet struct {
	name     string
	variants []*microKernel
}

// kernelSets lists the instruction sets this CPU runs, fastest first; the
// generic Go set is always last. Architecture files prepend theirs in init.
var kernelSets = []*kernelSet{genericSet}

// activeSet is the set Gemm uses (kernelSets[0] unless SetKernel chose
// another).
var activeSet atomic.Pointer[kernelSet]

// forceKernel, when non-nil, overrides the choice among the active set's
// variants (tests run every variant).
var forceKernel *microKernel

func init() { activeSet.Store(kernelSets[0]) }

// KernelNames returns the names of the GEMM kernel sets this CPU can run,
// fastest first ("avx512", "avx2", "generic" on a recent x86-64 CPU).
func KernelNames() []string {
	names := make([]string, len(kernelSets))
	for i, k := range kernelSets {
		names[i] = k.name
	}
	return names
}

// KernelName returns the name of the kernel set Gemm currently uses.
func KernelName() string { return activeSet.Load().name }

// SetKernel makes Gemm use the named kernel set (one of KernelNames; ""
// selects the fastest) and returns the name of the previous one. It exists
// for tests and benchmarks; calls of Gemm already running keep their kernel.
func SetKernel(name string) (prev string, err error) {
	prev = KernelName()
	if name == "" {
		activeSet.Store(kernelSets[0])
		return prev, nil
	}
	for _, k := range kernelSets {
		if k.name == name {
			activeSet.Store(k)
			return prev, nil
		}
	}
	return prev, fmt.Errorf("svd: no GEMM kernel %q on this CPU (have %v)", name, KernelNames())
}

package svd

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// Gemm computes C = alpha·op(A)·op(B) + beta·C in float32 with the same
// shapes and conventions as GemmRef: op(A) is [m, k] (A stored [m, k] with
// row stride lda, or [k, m] when transA), op(B) is [k, n] (B stored [k, n]
// with stride ldb, or [n, k] when transB), C is [m, n] with stride ldc.
//
// It is blocked for the caches (BLIS-style: kc-deep passes, op(B) packed in
// nc-wide blocks shared by all workers, op(A) packed per worker in mc-row
// blocks), runs on runtime.GOMAXPROCS(0) goroutines when the product is large
// enough, and uses the fastest micro-kernel of the CPU (KernelName). Results
// match GemmRef within float32 accumulation error: each element is a float32
// sum over k in order, so |C − C_ref| ≲ k·2⁻²⁴·Σ_p |alpha·op(A)_ip·op(B)_pj|.
// When beta is 0, C is not read (NaNs in C do not propagate); when alpha is 0
// or k is 0, A and B are not read and C = beta·C. C must not overlap A or B.
// Panics with an "svd:" prefix on inconsistent sizes.
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleC(c, m, n, ldc, beta)
		return
	}
	kern := activeKernel.Load()
	g := gemmProblem{transA, transB, m, n, k, alpha, beta, a, lda, b, ldb, c, ldc, 1}
	if g.swapPays(kern) {
		g = g.transposed()
	}
	g.run(kern, runtime.GOMAXPROCS(0))
}

// scaleC sets C = beta·C for the [m, n] matrix C with stride ldc (C is not
// read when beta is 0).
func scaleC(c []float32, m, n, ldc int, beta float32) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		switch beta {
		case 0:
			clear(row)
		case 1:
		default:
			for j := range row {
				row[j] *= beta
			}
		}
	}
}

// gemmProblem is one Gemm call: C[i, j] (at c[i·rs + j·cs]) =
// alpha·Σ_p op(A)[i, p]·op(B)[p, j] + beta·C[i, j].
type gemmProblem struct {
	transA, transB bool
	m, n, k        int
	alpha, beta    float32
	a              []float32
	lda            int
	b              []float32
	ldb            int
	c              []float32
	rs, cs         int
}

// transposed returns the same product written as Cᵀ = op(B)ᵀ·op(A)ᵀ.
func (g gemmProblem) transposed() gemmProblem {
	return gemmProblem{
		transA: !g.transB, transB: !g.transA,
		m: g.n, n: g.m, k: g.k,
		alpha: g.alpha, beta: g.beta,
		a: g.b, lda: g.ldb,
		b: g.a, ldb: g.lda,
		c: g.c, rs: g.cs, cs: g.rs,
	}
}

// swapPays reports whether computing Cᵀ wastes clearly less work on tile
// padding (e.g. n = 40 with 32-wide tiles) and k is deep enough to hide the
// strided stores of the transposed result.
func (g *gemmProblem) swapPays(kern *microKernel) bool {
	if g.k < 64 {
		return false
	}
	padded := func(m, n int) int { return roundUp(m, kern.mr) * roundUp(n, kern.nr) }
	return 5*padded(g.n, g.m) < 4*padded(g.m, g.n)
}

// minParallelFlops is the size below which Gemm stays on one goroutine.
const minParallelFlops = 1 << 22

// run computes the product with kern on up to workers goroutines.
func (g *gemmProblem) run(kern *microKernel, workers int) {
	mr, nr := kern.mr, kern.nr
	if 2*float64(g.m)*float64(g.n)*float64(g.k) < minParallelFlops {
		workers = 1
	}
	// Balanced block sizes: as many blocks as the kernel's limits require,
	// the row blocks a multiple of the worker count.
	nPC := ceilDiv(g.k, kern.kc)
	kcMax := ceilDiv(g.k, nPC)
	nJC := ceilDiv(g.n, kern.nc)
	ncMax := roundUp(ceilDiv(g.n, nJC), nr)
	nIC := roundUp(ceilDiv(g.m, kern.mc), workers)
	mc := roundUp(ceilDiv(g.m, nIC), mr)
	nIC = ceilDiv(g.m, mc)
	splits := 1 // column splits of each row block, when rows are too few
	if nIC < workers {
		splits = ceilDiv(workers, nIC)
	}

	bp := getBuf(roundUp(ncMax, nr) * kcMax)
	ws := make([]gemmWorker, workers)
	for w := range ws {
		ws[w].a = getBuf(mc * kcMax)
	}
	defer func() {
		putBuf(bp)
		for w := range ws {
			putBuf(ws[w].a)
		}
	}()

	for jc := 0; jc < g.n; jc += ncMax {
		nc := min(ncMax, g.n-jc)
		panels := ceilDiv(nc, nr)
		for pc := 0; pc < g.k; pc += kcMax {
			kc := min(kcMax, g.k-pc)
			beta := g.beta
			if pc > 0 {
				beta = 1
			}
			// Pack op(B)[pc:pc+kc, jc:jc+nc], panels shared out.
			per := ceilDiv(panels, workers)
			parallel(min(workers, ceilDiv(panels, per)), ceilDiv(panels, per), func(_, u int) {
				packB(*bp, g, pc, kc, jc, nc, nr, u*per, min(panels, (u+1)*per))
			})
			// Compute: units are (row block, column split), row-block major.
			perSplit := ceilDiv(panels, splits)
			units := nIC * ceilDiv(panels, perSplit)
			for w := range ws {
				ws[w].ic = -1
			}
			parallel(workers, units, func(w, u int) {
				ic, s := u/ceilDiv(panels, perSplit), u%ceilDiv(panels, perSplit)
				wk := &ws[w]
				i0 := ic * mc
				mcCur := min(mc, g.m-i0)
				if wk.ic != ic {
					packA(*wk.a, g, i0, mcCur, pc, kc, mr)
					wk.ic = ic
				}
				g.block(kern, wk, *bp, i0, mcCur, jc, nc, kc, s*perSplit, min(panels, (s+1)*perSplit), beta)
			})
		}
	}
}

// gemmWorker is one goroutine's packed A block and edge-tile buffer.
type gemmWorker struct {
	a   *[]float32 // packed op(A) block
	ic  int        // row block held in a (-1: none)
	tmp [maxTile]float32
}

// maxTile bounds mr·nr of every micro-kernel.
const maxTile = 16 * 64

// block runs the micro-kernel over the column panels [jp0, jp1) of the
// packed B block against every row panel of the packed A block rows
// [i0, i0+mc).
func (g *gemmProblem) block(kern *microKernel, wk *gemmWorker, bp []float32, i0, mc, j0, nc, kc, jp0, jp1 int, beta float32) {
	mr, nr := kern.mr, kern.nr
	ap := *wk.a
	for jp := jp0; jp < jp1; jp++ {
		j := j0 + jp*nr
		cols := min(nr, j0+nc-j)
		bpan := &bp[jp*kc*nr]
		for ip := 0; ip*mr < mc; ip++ {
			i := i0 + ip*mr
			rows := min(mr, i0+mc-i)
			apan := &ap[ip*kc*mr]
			if rows == mr && cols == nr && g.cs == 1 {
				kern.fn(kc, apan, bpan, &g.c[i*g.rs+j], g.rs, g.alpha, beta)
				continue
			}
			kern.fn(kc, apan, bpan, &wk.tmp[0], nr, 1, 0)
			for ii := 0; ii < rows; ii++ {
				t := wk.tmp[ii*nr : ii*nr+cols]
				base := (i+ii)*g.rs + j*g.cs
				for jj, v := range t {
					idx := base + jj*g.cs
					if beta == 0 {
						g.c[idx] = g.alpha * v
					} else {
						g.c[idx] = g.alpha*v + beta*g.c[idx]
					}
				}
			}
		}
	}
}

// parallel calls f(worker, unit) for every unit in [0, units) on up to
// workers goroutines (the caller's included), units handed out in order.
func parallel(workers, units int, f func(worker, unit int)) {
	if workers <= 1 || units <= 1 {
		for u := 0; u < units; u++ {
			f(0, u)
		}
		return
	}
	workers = min(workers, units)
	var next atomic.Int64
	var wg sync.WaitGroup
	work := func(w int) {
		for {
			u := int(next.Add(1)) - 1
			if u >= units {
				return
			}
			f(w, u)
		}
	}
	wg.Add(workers - 1)
	for w := 1; w < workers; w++ {
		go func() {
			defer wg.Done()
			work(w)
		}()
	}
	work(0)
	wg.Wait()
}

// bufPool recycles packing buffers between Gemm calls.
var bufPool sync.Pool

// getBuf returns a buffer of length n (contents undefined).
func getBuf(n int) *[]float32 {
	if p, ok := bufPool.Get().(*[]float32); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	s := make([]float32, n)
	return &s
}

func putBuf(p *[]float32) { bufPool.Put(p) }

func ceilDiv(a, b int) int { return (a + b - 1) / b }

func roundUp(a, b int) int { return ceilDiv(a, b) * b }

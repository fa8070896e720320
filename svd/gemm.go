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
// It is blocked for the caches (BLIS-style: kc-deep passes; op(B) packed in
// nc-wide blocks shared by all workers; op(A) read in place or packed per
// worker in row blocks), runs on runtime.GOMAXPROCS(0) goroutines when the
// product is large enough, computes Cᵀ = op(B)ᵀ·op(A)ᵀ instead when that is
// cheaper (narrow C, transposes), and uses the fastest micro-kernel of the
// CPU (KernelName). Results match GemmRef within float32 accumulation error:
// each element is a float32 sum over k in order, so
// |C − C_ref| ≲ k·2⁻²⁴·Σ_p |alpha·op(A)_ip·op(B)_pj|.
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
	g := gemmProblem{transA, transB, m, n, k, alpha, beta, a, lda, b, ldb, c, ldc, 1}
	kern := g.plan(activeSet.Load())
	if g.cs == 1 {
		g.run(kern, runtime.GOMAXPROCS(0))
		return
	}
	// Cᵀ is computed into a row-major temporary T [n, m] and added to C in
	// one transposing pass: C = alpha·Tᵀ + beta·C.
	t := getBuf(m * n)
	defer putBuf(t)
	g.alpha, g.beta, g.c, g.rs, g.cs = 1, 0, *t, m, 1
	g.run(kern, runtime.GOMAXPROCS(0))
	addTransposed(c, ldc, *t, m, n, alpha, beta)
}

// addTransposed sets C = alpha·Tᵀ + beta·C for C [m, n] (stride ldc) and T
// [n, m] row-major, in 32×32 blocks; C is not read when beta is 0.
func addTransposed(c []float32, ldc int, t []float32, m, n int, alpha, beta float32) {
	const bs = 32
	for i0 := 0; i0 < m; i0 += bs {
		i1 := min(i0+bs, m)
		for j0 := 0; j0 < n; j0 += bs {
			j1 := min(j0+bs, n)
			for i := i0; i < i1; i++ {
				row := c[i*ldc+j0 : i*ldc+j1]
				if beta == 0 {
					for j := range row {
						row[j] = alpha * t[(j0+j)*m+i]
					}
				} else {
					for j := range row {
						row[j] = alpha*t[(j0+j)*m+i] + beta*row[j]
					}
				}
			}
		}
	}
}

// plan picks the cheapest variant of set and orientation (C or Cᵀ) by the
// cost model, turning g into Cᵀ = op(B)ᵀ·op(A)ᵀ when that wins by 10%: less
// work lost to tile padding (n = 40 with 32-wide tiles), or the transposing
// pack moved to the smaller operand.
func (g *gemmProblem) plan(set *kernelSet) *microKernel {
	variants := set.variants
	if forceKernel != nil {
		variants = []*microKernel{forceKernel}
	}
	t := g.transposed()
	var best *microKernel
	var bestCost float64
	swap := false
	for _, kern := range variants {
		c, ct := g.cost(kern), t.cost(kern)
		if best == nil || c < bestCost {
			best, bestCost, swap = kern, c, false
		}
		if ct < 0.9*bestCost {
			best, bestCost, swap = kern, ct, true
		}
	}
	if forceSwap != 0 {
		swap = forceSwap > 0
	}
	if swap {
		*g = t
	}
	return best
}

// forceSwap overrides plan's orientation: 1 computes Cᵀ, -1 C, 0 decides.
var forceSwap int

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

// Rough costs of the cost model, in nanoseconds per element on one core.
const (
	costFlop    = 1.0 / 110 // one floating-point operation in the kernel
	costCopy    = 0.3       // packing a contiguous run
	costTrans   = 1.5       // packing with a transpose, plain Go loops
	costTransTr = 0.4       // packing with a transpose through transposeBlock
	costScatter = 1.0       // adding an element of Cᵀ to C (addTransposed)
)

// cost estimates the time of the product with kern on one core (ns).
func (g *gemmProblem) cost(kern *microKernel) float64 {
	m, n, k := float64(g.m), float64(g.n), float64(g.k)
	c := 2 * float64(roundUp(g.m, kern.mr)) * float64(roundUp(g.n, kern.nr)) * k * costFlop
	trans := costTrans
	if transposeBlock != nil {
		trans = costTransTr
	}
	if !g.directA(kern) {
		if g.transA {
			c += m * k * float64(ceilDiv(g.n, kern.nc)) * costCopy
		} else if transposeBlock != nil && kern.mr <= transposeWidth {
			c += m * k * float64(ceilDiv(g.n, kern.nc)) * trans
		} else {
			c += m * k * float64(ceilDiv(g.n, kern.nc)) * costTrans
		}
	}
	if g.transB && transposeBlock != nil && kern.nr%transposeWidth == 0 {
		c += k * n * trans
	} else if g.transB {
		c += k * n * costTrans
	} else {
		c += k * n * costCopy
	}
	if g.cs != 1 {
		c += m * n * costScatter
	}
	return c
}

// aMode says how the micro-kernel reads op(A).
type aMode int

const (
	aAuto   aMode = iota // let the plan decide
	aPacked              // pack row blocks into panels
	aDirect              // read A in place through strides (edge panels packed)
)

// forceA overrides the choice of directA (tests exercise both paths).
var forceA = aAuto

// directA reports whether op(A) is read in place instead of packed: when
// each A block meets at most two column panels of B (a narrow C such as the
// range finder's A·Ω), so that packing would cost as much as reading A. A
// block reused across many panels is faster packed (3072³: 210 against 155
// GFLOP/s on two Zen 4 cores).
func (g *gemmProblem) directA(kern *microKernel) bool {
	switch forceA {
	case aPacked:
		return false
	case aDirect:
		return true
	}
	return ceilDiv(min(g.n, kern.nc), kern.nr) <= 2
}

// minParallelFlops is the size below which Gemm stays on one goroutine.
const minParallelFlops = 1 << 22

// run computes the product with kern on up to workers goroutines.
func (g *gemmProblem) run(kern *microKernel, workers int) {
	mr, nr := kern.mr, kern.nr
	if 2*float64(g.m)*float64(g.n)*float64(g.k) < minParallelFlops {
		workers = 1
	}
	// Balanced block sizes: as many blocks as the kernel's limits require;
	// row blocks are whole panels, their count a multiple of the workers.
	nPC := ceilDiv(g.k, kern.kc)
	kcMax := ceilDiv(g.k, nPC)
	nJC := ceilDiv(g.n, kern.nc)
	ncMax := roundUp(ceilDiv(g.n, nJC), nr)
	panelsM := ceilDiv(g.m, mr)
	nIC := min(roundUp(ceilDiv(g.m, kern.mc), workers), panelsM)
	rowBlock := func(ic int) (i0, rows int) {
		q, r := panelsM/nIC, panelsM%nIC
		p0 := ic*q + min(ic, r)
		p1 := p0 + q
		if ic < r {
			p1++
		}
		return p0 * mr, min(p1*mr, g.m) - p0*mr
	}
	mcMax := ceilDiv(panelsM, nIC) * mr
	splits := 1 // column splits of each row block, when row blocks are few
	if nIC < workers {
		splits = ceilDiv(workers, nIC)
	}
	direct := g.directA(kern)

	bp := getBuf(ncMax * kcMax)
	ws := make([]gemmWorker, workers)
	for w := range ws {
		if direct {
			ws[w].a = getBuf(mr * kcMax) // the edge panel only
		} else {
			ws[w].a = getBuf(mcMax * kcMax)
		}
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
			parallel(workers, ceilDiv(panels, per), func(_, u int) {
				packB(*bp, g, pc, kc, jc, nc, nr, u*per, min(panels, (u+1)*per))
			})
			// Compute: units are (row block, column split), row-block major.
			perSplit := ceilDiv(panels, splits)
			nSplit := ceilDiv(panels, perSplit)
			for w := range ws {
				ws[w].ic = -1
			}
			parallel(workers, nIC*nSplit, func(w, u int) {
				ic, s := u/nSplit, u%nSplit
				wk := &ws[w]
				i0, rows := rowBlock(ic)
				if wk.ic != ic {
					if !direct {
						packA(*wk.a, g, i0, rows, pc, kc, mr)
					} else if full := rows / mr * mr; full < rows {
						packA(*wk.a, g, i0+full, rows-full, pc, kc, mr)
					}
					wk.ic = ic
				}
				g.block(kern, wk, direct, *bp, i0, rows, pc, jc, nc, kc, s*perSplit, min(panels, (s+1)*perSplit), beta)
			})
		}
	}
}

// gemmWorker is one goroutine's packed A block (or packed edge panel when A
// is read in place) and edge-tile buffer.
type gemmWorker struct {
	a   *[]float32
	ic  int // row block whose panels a holds (-1: none)
	tmp [maxTile]float32
}

// maxTile bounds mr·nr of every micro-kernel.
const maxTile = 16 * 64

// block runs the micro-kernel over the column panels [jp0, jp1) of the
// packed B block (columns j0.., kc deep from p0) against every row panel of
// rows [i0, i0+mc): from wk's packed block, or in place when direct (the
// partial last panel from wk's packed edge panel).
func (g *gemmProblem) block(kern *microKernel, wk *gemmWorker, direct bool, bp []float32, i0, mc, p0, j0, nc, kc, jp0, jp1 int, beta float32) {
	mr, nr := kern.mr, kern.nr
	ap := *wk.a
	for jp := jp0; jp < jp1; jp++ {
		j := j0 + jp*nr
		cols := min(nr, j0+nc-j)
		bpan := &bp[jp*kc*nr]
		for ip := 0; ip*mr < mc; ip++ {
			i := i0 + ip*mr
			rows := min(mr, i0+mc-i)
			apan, ars, aps := &ap[0], 1, mr
			switch {
			case !direct:
				apan = &ap[ip*kc*mr]
			case rows < mr: // packed edge panel
			case g.transA:
				apan, ars, aps = &g.a[p0*g.lda+i], 1, g.lda
			default:
				apan, ars, aps = &g.a[i*g.lda+p0], g.lda, 1
			}
			if rows == mr && cols == nr && g.cs == 1 {
				kern.fn(kc, apan, ars, aps, bpan, &g.c[i*g.rs+j], g.rs, g.alpha, beta)
				continue
			}
			kern.fn(kc, apan, ars, aps, bpan, &wk.tmp[0], nr, 1, 0)
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

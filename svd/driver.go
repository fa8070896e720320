package svd

import (
	"sync"
	"sync/atomic"
)

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

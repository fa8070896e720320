package svd

// Packing copies a block of op(A) or op(B) into the contiguous panel layout
// the micro-kernels read, handling the transposes and zero-padding the last
// panel, so that every kernel call sees full mr×kc and kc×nr panels. The
// transposing cases (row-major A, transposed B) go through transposeBlock
// in w×w blocks where the CPU has one (AVX-512 16×16, AVX 8×8) and the loops
// below otherwise.

// transposeBlock, when non-nil, transposes one w×w block (w =
// transposeWidth): it loads rows (≤ w) rows of w floats from src (stride
// sld), zero-fills the missing rows, and stores the w columns as rows of
// dst (stride dld), only their first lanes values. Architecture files set
// it; tests swap it to exercise every path.
var (
	transposeBlock func(dst *float32, dld int, src *float32, sld int, rows, lanes int)
	transposeWidth int
)

// transposeImpl is one transposeBlock implementation of width w.
type transposeImpl struct {
	fn func(dst *float32, dld int, src *float32, sld int, rows, lanes int)
	w  int
}

// transposeImpls lists every implementation this CPU runs, the one in use
// first (tests run them all).
var transposeImpls []transposeImpl

// packA packs op(A)[i0:i0+mc, p0:p0+kc] into dst as ceil(mc/mr) panels of
// [kc, mr]: dst[(ip·kc + p)·mr + ii] = op(A)[i0 + ip·mr + ii, p0 + p]; rows
// past mc are zero. dst must hold ceil(mc/mr)·mr·kc values.
func packA(dst []float32, g *gemmProblem, i0, mc, p0, kc, mr int) {
	a, lda := g.a, g.lda
	for ip := 0; ip*mr < mc; ip++ {
		panel := dst[ip*kc*mr : (ip+1)*kc*mr]
		r0 := i0 + ip*mr
		rows := min(mr, mc-ip*mr)
		if g.transA { // A stored [k, m]: rows of the panel are contiguous.
			for p := 0; p < kc; p++ {
				copy(panel[p*mr:p*mr+rows], a[(p0+p)*lda+r0:(p0+p)*lda+r0+rows])
				clear(panel[p*mr+rows : (p+1)*mr])
			}
			continue
		}
		// A stored [m, k]: each row of op(A) is contiguous along p.
		p := 0
		if tr, w := transposeBlock, transposeWidth; tr != nil && mr <= w {
			for ; p+w <= kc; p += w {
				tr(&panel[p*mr], mr, &a[r0*lda+p0+p], lda, rows, mr)
			}
		}
		for ii := 0; ii < rows; ii++ {
			src := a[(r0+ii)*lda+p0+p : (r0+ii)*lda+p0+kc]
			for q, v := range src {
				panel[(p+q)*mr+ii] = v
			}
		}
		for ; p < kc; p++ {
			clear(panel[p*mr+rows : (p+1)*mr])
		}
	}
}

// packB packs the panels jp ∈ [jp0, jp1) of op(B)[p0:p0+kc, j0:j0+nc] into
// dst, each as [kc, nr]: dst[(jp·kc + p)·nr + jj] = op(B)[p0 + p, j0 + jp·nr + jj];
// columns past nc are zero. dst must hold ceil(nc/nr)·nr·kc values.
func packB(dst []float32, g *gemmProblem, p0, kc, j0, nc, nr, jp0, jp1 int) {
	b, ldb := g.b, g.ldb
	for jp := jp0; jp < jp1; jp++ {
		panel := dst[jp*kc*nr : (jp+1)*kc*nr]
		c0 := j0 + jp*nr
		cols := min(nr, nc-jp*nr)
		if !g.transB { // B stored [k, n]: panel rows are contiguous.
			for p := 0; p < kc; p++ {
				copy(panel[p*nr:p*nr+cols], b[(p0+p)*ldb+c0:(p0+p)*ldb+c0+cols])
				clear(panel[p*nr+cols : (p+1)*nr])
			}
			continue
		}
		// B stored [n, k]: each column of op(B) is contiguous along p.
		p := 0
		if tr, w := transposeBlock, transposeWidth; tr != nil && nr%w == 0 {
			for ; p+w <= kc; p += w {
				for jj0 := 0; jj0 < nr; jj0 += w {
					cnt := min(max(cols-jj0, 0), w)
					src := &panel[0] // not read when cnt is 0
					if cnt > 0 {
						src = &b[(c0+jj0)*ldb+p0+p]
					}
					tr(&panel[p*nr+jj0], nr, src, ldb, cnt, w)
				}
			}
		}
		for jj := 0; jj < cols; jj++ {
			src := b[(c0+jj)*ldb+p0+p : (c0+jj)*ldb+p0+kc]
			for q, v := range src {
				panel[(p+q)*nr+jj] = v
			}
		}
		for ; p < kc; p++ {
			clear(panel[p*nr+cols : (p+1)*nr])
		}
	}
}

package svd

// Packing copies a block of op(A) or op(B) into the contiguous panel layout
// the micro-kernels read, handling the transposes and zero-padding the last
// panel, so that every kernel call sees full mr×kc and kc×nr panels. The
// transposing cases (row-major A, transposed B) go through transpose16 in
// 16×16 blocks where the CPU has it (AVX-512) and the loops below otherwise.

// transposeBlock, when non-nil, is transpose16: it loads rows (≤ 16) rows of
// 16 floats from src (stride sld), zero-fills the missing rows, and stores
// the transposed 16×16 block to dst (stride dld), only the lanes in mask.
// Architecture files set it; tests clear it to exercise the loops.
var transposeBlock func(dst *float32, dld int, src *float32, sld int, rows int, mask int)

// packA packs op(A)[i0:i0+mc, p0:p0+kc] into dst as ceil(mc/mr) panels of
// [kc, mr]: dst[(ip·kc + p)·mr + ii] = op(A)[i0 + ip·mr + ii, p0 + p]; rows
// past mc are zero. dst must hold ceil(mc/mr)·mr·kc values; mr ≤ 16.
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
		if tr := transposeBlock; tr != nil {
			for ; p+16 <= kc; p += 16 {
				tr(&panel[p*mr], mr, &a[r0*lda+p0+p], lda, rows, 1<<mr-1)
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
		if tr := transposeBlock; tr != nil && nr%16 == 0 {
			for ; p+16 <= kc; p += 16 {
				for jj0 := 0; jj0 < nr; jj0 += 16 {
					cnt := min(max(cols-jj0, 0), 16)
					src := &panel[0] // not read when cnt is 0
					if cnt > 0 {
						src = &b[(c0+jj0)*ldb+p0+p]
					}
					tr(&panel[p*nr+jj0], nr, src, ldb, cnt, 0xFFFF)
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

package svd

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

// gemmCases are the sizes every kernel is tested on: tile-aligned, odd,
// tall-skinny, wide, small inner dimension, k = 0 and sizes that cross the
// kc, mc and nc block limits.
var gemmCases = []struct{ m, n, k int }{
	{1, 1, 1}, {1, 1, 7}, {2, 3, 0}, {5, 7, 3}, {12, 32, 16}, {13, 33, 17},
	{6, 16, 1}, {11, 31, 64}, {37, 53, 29}, {64, 64, 64}, {100, 40, 300},
	{40, 100, 300}, {200, 7, 130}, {7, 200, 130}, {145, 97, 257}, {96, 3100, 32},
	{300, 200, 32}, {150, 700, 513}, {3, 40, 1100}, {289, 3, 700}, {600, 20, 400},
}

// gemmScalars are the (alpha, beta) pairs every size is run with.
var gemmScalars = [][2]float32{{1, 0}, {1, 1}, {-0.5, 2}, {0, 0.5}, {1.5, 0}}

// gemmTol is the tolerance table: an element may differ from GemmRef by
// perK·(k+1)·2⁻²⁴·(|alpha|·Σ_p |op(A)_ip·op(B)_pj| + |beta·C_ij|), the
// float32 accumulation bound with a factor perK to spare.
var gemmTol = struct{ perK float64 }{perK: 2}

// TestGemmKernels runs every size, transpose combination and (alpha, beta)
// pair with each micro-kernel this CPU has, against GemmRef.
func TestGemmKernels(t *testing.T) {
	prev := KernelName()
	fastTr, fastW := transposeBlock, transposeWidth
	trs := append([]transposeImpl{{nil, 0}}, transposeImpls...)
	defer func() {
		SetKernel(prev)
		transposeBlock, transposeWidth = fastTr, fastW
		forceKernel = nil
		forceA = aAuto
		forceSwap = 0
	}()
	for ci, c := range gemmCases {
		for _, tr := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			g := newGemmCheck(tr[0], tr[1], c.m, c.n, c.k, uint64(ci))
			for _, kern := range allVariants() {
				forceKernel = kern
				for _, mode := range []aMode{aAuto, aPacked, aDirect} {
					forceA = mode
					for si, s := range gemmScalars {
						// Rotate the plain and SIMD transposing packs, and
						// computing C or Cᵀ.
						tr := trs[(si+ci)%len(trs)]
						transposeBlock, transposeWidth = tr.fn, tr.w
						forceSwap = si%3 - 1
						g.check(t, s[0], s[1])
					}
					forceSwap = 0
				}
				forceA = aAuto
			}
			forceKernel = nil
			transposeBlock, transposeWidth = fastTr, fastW
		}
	}
}

// allVariants returns every micro-kernel of every set this CPU runs.
func allVariants() []*microKernel {
	var all []*microKernel
	for _, set := range kernelSets {
		all = append(all, set.variants...)
	}
	return all
}

// gemmCheck holds one test product: random op(A), op(B), C with padded
// strides (lda = cols+3 etc.), the reference P = op(A)·op(B) from GemmRef and
// |op(A)|·|op(B)| for the tolerance.
type gemmCheck struct {
	transA, transB bool
	m, n, k        int
	a, b, c        []float32
	lda, ldb, ldc  int
	p, mag         []float32
}

func newGemmCheck(transA, transB bool, m, n, k int, seed uint64) *gemmCheck {
	g := &gemmCheck{transA: transA, transB: transB, m: m, n: n, k: k}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	g.lda, g.ldb, g.ldc = ac+3, bc+1, n+2
	g.a = gaussMat(ar, g.lda, seed*3+1)
	g.b = gaussMat(br, g.ldb, seed*3+2)
	g.c = gaussMat(m, g.ldc, seed*3+3)
	g.p = make([]float32, m*g.ldc)
	g.mag = make([]float32, m*g.ldc)
	GemmRef(transA, transB, m, n, k, 1, g.a, g.lda, g.b, g.ldb, 0, g.p, g.ldc)
	abs := func(s []float32) []float32 {
		d := make([]float32, len(s))
		for i, v := range s {
			d[i] = float32(math.Abs(float64(v)))
		}
		return d
	}
	GemmRef(transA, transB, m, n, k, 1, abs(g.a), g.lda, abs(g.b), g.ldb, 0, g.mag, g.ldc)
	return g
}

// check runs Gemm with alpha and beta and compares every element with
// alpha·P + beta·C within the gemmTol bound; it also checks that the stride
// padding of C is untouched and, when beta is 0, that NaNs in C do not
// propagate.
func (g *gemmCheck) check(t *testing.T, alpha, beta float32) {
	t.Helper()
	c := append([]float32(nil), g.c...)
	if beta == 0 {
		for i := range c {
			c[i] = float32(math.NaN())
		}
	}
	got := append([]float32(nil), c...)
	Gemm(g.transA, g.transB, g.m, g.n, g.k, alpha, g.a, g.lda, g.b, g.ldb, beta, got, g.ldc)
	kname := KernelName()
	if forceKernel != nil {
		kname = forceKernel.name
	}
	name := fmt.Sprintf("%s A-mode %d swap %d transA=%v transB=%v m=%d n=%d k=%d alpha=%g beta=%g", kname, forceA, forceSwap, g.transA, g.transB, g.m, g.n, g.k, alpha, beta)
	bad := 0
	for i := 0; i < g.m; i++ {
		for j := 0; j < g.ldc; j++ {
			idx := i*g.ldc + j
			if j >= g.n { // stride padding must be left alone
				if math.Float32bits(got[idx]) != math.Float32bits(c[idx]) {
					t.Errorf("%s: padding C[%d, %d] changed", name, i, j)
					bad++
				}
				continue
			}
			want := float64(alpha) * float64(g.p[idx])
			mag := math.Abs(float64(alpha)) * float64(g.mag[idx])
			if beta != 0 {
				want += float64(beta) * float64(c[idx])
				mag += math.Abs(float64(beta) * float64(c[idx]))
			}
			tol := gemmTol.perK * float64(g.k+1) * 0x1p-24 * mag
			if d := math.Abs(float64(got[idx]) - want); !(d <= tol) {
				t.Errorf("%s: C[%d, %d] = %g, want %g (|diff| %.3g > tol %.3g)", name, i, j, got[idx], want, d, tol)
				bad++
			}
			if bad > 5 {
				t.FailNow()
			}
		}
	}
}

func TestGemmPanics(t *testing.T) {
	a := make([]float32, 12)
	cases := []struct {
		name string
		f    func()
	}{
		{"negative m", func() { Gemm(false, false, -1, 2, 2, 1, a, 2, a, 2, 0, a, 2) }},
		{"short A", func() { Gemm(false, false, 4, 3, 4, 1, a, 4, a, 3, 0, a, 3) }},
		{"short B trans", func() { Gemm(false, true, 2, 4, 4, 1, a, 4, a, 4, 0, a, 4) }},
		{"lda < cols", func() { Gemm(false, false, 2, 2, 3, 1, a, 2, a, 2, 0, a, 2) }},
		{"ldc < n", func() { Gemm(false, false, 2, 3, 1, 1, a, 1, a, 3, 0, a, 2) }},
		{"ref short C", func() { GemmRef(false, false, 3, 4, 1, 1, a, 1, a, 4, 0, a[:11], 4) }},
	}
	for _, c := range cases {
		func() {
			defer func() {
				msg, _ := recover().(string)
				if !strings.HasPrefix(msg, "svd:") {
					t.Errorf("%s: want a panic with prefix \"svd:\", got %q", c.name, msg)
				}
			}()
			c.f()
		}()
	}
}

func TestSetKernel(t *testing.T) {
	names := KernelNames()
	if names[len(names)-1] != "generic" {
		t.Errorf("KernelNames() = %v, want generic last", names)
	}
	if _, err := SetKernel("no-such-kernel"); err == nil {
		t.Errorf("SetKernel of an unknown name succeeded")
	}
	prev, err := SetKernel("generic")
	if err != nil || KernelName() != "generic" {
		t.Fatalf("SetKernel(generic): %v, now %q", err, KernelName())
	}
	SetKernel(prev)
	if KernelName() != prev {
		t.Errorf("restoring %q gave %q", prev, KernelName())
	}
}

// TestGemmWorkers drives the blocked driver directly with worker counts this
// machine may not have, so the row-block and column-split partitions are
// exercised whatever GOMAXPROCS is.
func TestGemmWorkers(t *testing.T) {
	for ci, c := range []struct{ m, n, k int }{{7, 300, 70}, {150, 700, 300}, {600, 20, 400}, {37, 5000, 9}} {
		kern := activeSet.Load().variants[ci%len(activeSet.Load().variants)]
		g := newGemmCheck(ci%2 == 0, ci%3 == 0, c.m, c.n, c.k, 7)
		for _, workers := range []int{1, 2, 3, 7} {
			got := make([]float32, len(g.p))
			pr := gemmProblem{g.transA, g.transB, c.m, c.n, c.k, 1, 0, g.a, g.lda, g.b, g.ldb, got, g.ldc, 1}
			for _, v := range []struct {
				swap bool
				mode aMode
			}{{false, aPacked}, {false, aDirect}, {true, aPacked}, {true, aDirect}} {
				clear(got)
				q := pr
				if v.swap {
					q = pr.transposed()
				}
				forceA = v.mode
				q.run(kern, workers)
				forceA = aAuto
				for i := 0; i < c.m; i++ {
					for j := 0; j < c.n; j++ {
						idx := i*g.ldc + j
						tol := gemmTol.perK * float64(c.k+1) * 0x1p-24 * float64(g.mag[idx])
						if d := math.Abs(float64(got[idx] - g.p[idx])); !(d <= tol) {
							t.Fatalf("%s m=%d n=%d k=%d workers=%d %+v: C[%d, %d] = %g, want %g", kern.name, c.m, c.n, c.k, workers, v, i, j, got[idx], g.p[idx])
						}
					}
				}
			}
		}
	}
}

// TestKernelShapes checks every micro-kernel against the limits the driver
// and the packing routines assume.
func TestKernelShapes(t *testing.T) {
	for _, k := range allVariants() {
		if k.mr < 1 || k.mr > 16 || k.nr < 1 || k.mr*k.nr > maxTile {
			t.Errorf("%s: tile %d×%d outside mr ≤ 16, mr·nr ≤ %d", k.name, k.mr, k.nr, maxTile)
		}
		if k.mc < k.mr || k.kc < 1 || k.nc < k.nr {
			t.Errorf("%s: blocking mc=%d kc=%d nc=%d smaller than the tile", k.name, k.mc, k.kc, k.nc)
		}
	}
}

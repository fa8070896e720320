package calib

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

func TestMergedSize(t *testing.T) {
	for _, tc := range []struct {
		sa   int
		na   int64
		sb   int
		nb   int64
		want int
	}{
		{5, 5, 7, 7, 12},             // both complete: keep everything
		{4096, 1e6, 4096, 1e6, 4096}, // both full reservoirs
		{256, 65536, 256, 65536, 256},
		{10, 10, 256, 65536, 256}, // complete + partial: the partial side bounds it
		{300, 1000, 50, 50, 300},  // partial a holds 300
		{3000, 3000, 3000, 3000, MaxSamples},
	} {
		if got := mergedSize(tc.sa, tc.na, tc.sb, tc.nb); got != tc.want {
			t.Errorf("mergedSize(%d, %d, %d, %d) = %d, want %d", tc.sa, tc.na, tc.sb, tc.nb, got, tc.want)
		}
	}
}

// collect returns the statistics of rows [lo, hi) of x (width k) gathered
// with reservoirs of size s.
func collect(x []float32, lo, hi, k, s int, seed uint64) *Stats {
	c := NewCollector(seed, s)
	c.Observe("l", x[lo*k:hi*k], hi-lo, k)
	return c.Layer("l")
}

func TestMergeBasics(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	const k = 3
	x := rowsOf(12, k, rng)
	a, b := collect(x, 0, 5, k, 100, 1), collect(x, 5, 12, k, 100, 2)
	m := Merge(a, b, 9)
	if m.S != 12 || m.Count != 12 {
		t.Fatalf("S=%d Count=%d, want all 12 rows", m.S, m.Count)
	}
	seen := map[float32]bool{}
	for i := 0; i < m.S; i++ {
		seen[m.Row(i)[0]] = true
	}
	if len(seen) != 12 {
		t.Errorf("merged rows %v", seen)
	}
	for j := 0; j < k; j++ {
		if m.AbsMax[j] != max(a.AbsMax[j], b.AbsMax[j]) {
			t.Errorf("absmax[%d]", j)
		}
	}
	if err := Validate(m, k); err != nil {
		t.Error(err)
	}
	// Unknown counts read as S.
	a.Count, b.Count = 0, 0
	if m := Merge(a, b, 9); m.Count != 12 {
		t.Errorf("count with unknown inputs %d", m.Count)
	}
	for _, f := range []func(){
		func() { Merge(a, &Stats{K: 2, S: 1, AbsMax: []float32{1, 1}, Samples: []float32{0, 0}}, 1) },
		func() { Merge(a, &Stats{K: 3, S: 2, AbsMax: []float32{1, 1, 1}, Samples: []float32{0}}, 1) },
	} {
		func() {
			defer func() {
				if p := recover(); p == nil || !strings.HasPrefix(fmt.Sprint(p), "calib: Merge") {
					t.Errorf("panic %v", p)
				}
			}()
			f()
		}()
	}
}

// TestMergeAssociativeAndFair: over three disjoint token sets of different
// sizes, (a∪b)∪c and a∪(b∪c) give the same absmax, count and sample size
// exactly, and in both orders every token is kept with probability S/N
// (checked per token over many seeds, 5 standard deviations).
func TestMergeAssociativeAndFair(t *testing.T) {
	const k, s, runs = 2, 20, 6000
	sizes := []int{30, 90, 180}
	n := 0
	for _, z := range sizes {
		n += z
	}
	x := rowsOf(n, k, rand.New(rand.NewPCG(8, 8)))
	hitsL, hitsR := make([]int, n), make([]int, n)
	var total int
	for seed := uint64(0); seed < runs; seed++ {
		a := collect(x, 0, 30, k, s, 3*seed)
		b := collect(x, 30, 120, k, s, 3*seed+1)
		c := collect(x, 120, 300, k, s, 3*seed+2)
		l := Merge(Merge(a, b, seed), c, seed+runs)
		r := Merge(a, Merge(b, c, seed), seed+runs)
		if l.S != r.S || l.Count != r.Count || l.Count != int64(n) {
			t.Fatalf("S %d/%d, Count %d/%d", l.S, r.S, l.Count, r.Count)
		}
		for j := 0; j < k; j++ {
			if l.AbsMax[j] != r.AbsMax[j] {
				t.Fatalf("absmax differs by order")
			}
		}
		for i := 0; i < l.S; i++ {
			hitsL[int(l.Row(i)[0])]++
			hitsR[int(r.Row(i)[0])]++
		}
		total = l.S
	}
	p := float64(total) / float64(n)
	sd := math.Sqrt(p * (1 - p) / runs)
	for name, hits := range map[string][]int{"(a∪b)∪c": hitsL, "a∪(b∪c)": hitsR} {
		bad := 0
		for i, h := range hits {
			if f := float64(h) / runs; math.Abs(f-p) > 5*sd {
				bad++
				if bad < 5 {
					t.Errorf("%s: token %d kept with frequency %.4f, want %.4f ± %.4f", name, i, f, p, 5*sd)
				}
			}
		}
		// Share of each source set: the strongest signal of an unfair merge.
		lo := 0
		for _, z := range sizes {
			var got int
			for _, h := range hits[lo : lo+z] {
				got += h
			}
			want := float64(z) / float64(n)
			share := float64(got) / float64(runs*total)
			if sdz := math.Sqrt(want * (1 - want) / float64(runs*total)); math.Abs(share-want) > 6*sdz+0.002 {
				t.Errorf("%s: set of %d tokens has share %.4f, want %.4f", name, z, share, want)
			}
			lo += z
		}
	}
}

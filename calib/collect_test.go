package calib

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// rowsOf returns n rows of width k whose first value is the row index, so
// that samples can be traced back to the rows they came from.
func rowsOf(n, k int, rng *rand.Rand) []float32 {
	x := make([]float32, n*k)
	for i := 0; i < n; i++ {
		x[i*k] = float32(i)
		for j := 1; j < k; j++ {
			x[i*k+j] = float32(rng.NormFloat64())
		}
	}
	return x
}

func TestCollectorStats(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n, k = 1000, 5
	x := rowsOf(n, k, rng)
	c := NewCollector(7, 64)
	c.Observe("a", x, n, k)
	s := c.Layer("a")
	if s.S != 64 || s.Count != n || s.K != k {
		t.Fatalf("S=%d Count=%d K=%d", s.S, s.Count, s.K)
	}
	if err := Validate(s, k); err != nil {
		t.Fatal(err)
	}
	want := make([]float32, k)
	for i := 0; i < n; i++ {
		for j := 0; j < k; j++ {
			want[j] = max(want[j], float32(math.Abs(float64(x[i*k+j]))))
		}
	}
	for j := range want {
		if s.AbsMax[j] != want[j] {
			t.Errorf("absmax[%d] = %v, want %v", j, s.AbsMax[j], want[j])
		}
	}
	ids := map[float32]bool{}
	for i := 0; i < s.S; i++ {
		row := s.Row(i)
		id := row[0]
		if ids[id] {
			t.Errorf("row %v sampled twice", id)
		}
		ids[id] = true
		for j := 1; j < k; j++ { // every sample is an input row, unchanged
			if row[j] != x[int(id)*k+j] {
				t.Fatalf("sample %d is not input row %v", i, id)
			}
		}
	}
	// Fewer rows than the reservoir: all kept, in order.
	c.Observe("b", x, 10, k)
	if b := c.Layer("b"); b.S != 10 || b.Samples[9*k] != 9 {
		t.Errorf("small layer: S=%d", b.S)
	}
	if got := c.Names(); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("Names %v", got)
	}
	if c.Layer("none") != nil || len(c.Stats()) != 2 {
		t.Errorf("Layer/Stats of unknown layers")
	}
}

// TestCollectorDeterminism: the sample depends on the seed, the name and
// the row sequence only, not on batching, other layers or goroutines.
func TestCollectorDeterminism(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	const n, k = 5000, 3
	x := rowsOf(n, k, rng)
	ref := NewCollector(11, 100)
	ref.Observe("layer", x, n, k)
	want := ref.Layer("layer")

	c := NewCollector(11, 100)
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ { // other layers, concurrently
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				c.Observe(fmt.Sprintf("other%d", g), x[i*k:], 7, k)
			}
		}(g)
	}
	for i := 0; i < n; { // uneven batches
		b := min(1+i%97, n-i)
		c.Observe("layer", x[i*k:(i+b)*k], b, k)
		i += b
	}
	wg.Wait()
	got := c.Layer("layer")
	for i := range want.Samples {
		if got.Samples[i] != want.Samples[i] {
			t.Fatalf("sample value %d differs between batchings", i)
		}
	}
	other := NewCollector(12, 100)
	other.Observe("layer", x, n, k)
	same := true
	for i := range want.Samples {
		same = same && other.Layer("layer").Samples[i] == want.Samples[i]
	}
	if same {
		t.Errorf("seeds 11 and 12 gave the same sample")
	}
}

// TestCollectorFairness: every row is kept with probability S/N (Algorithm
// L is exact); checked over many seeds with a tolerance of 5 standard
// deviations.
func TestCollectorFairness(t *testing.T) {
	const n, s, runs = 60, 6, 20000
	x := rowsOf(n, 1, rand.New(rand.NewPCG(0, 0)))
	hits := make([]int, n)
	for seed := uint64(0); seed < runs; seed++ {
		c := NewCollector(seed, s)
		c.Observe("l", x, n, 1)
		for _, v := range c.Layer("l").Samples {
			hits[int(v)]++
		}
	}
	p := float64(s) / n
	sd := math.Sqrt(p * (1 - p) / runs)
	for i, h := range hits {
		if f := float64(h) / runs; math.Abs(f-p) > 5*sd {
			t.Errorf("row %d kept with frequency %.4f, want %.4f ± %.4f", i, f, p, 5*sd)
		}
	}
}

func TestCollectorNonFiniteAndPanics(t *testing.T) {
	c := NewCollector(1, 0)
	x := []float32{1, 2, float32(math.NaN()), 3, -4, 5}
	c.Observe("l", x, 3, 2)
	s := c.Layer("l")
	if s.Count != 2 || s.S != 2 || s.AbsMax[0] != 4 || s.AbsMax[1] != 5 {
		t.Errorf("non-finite row not skipped: %+v", s)
	}
	if nf := c.NonFinite(); nf["l"] != 1 {
		t.Errorf("NonFinite %v", nf)
	}
	for _, f := range []func(){
		func() { c.Observe("l", x, 2, 3) }, // k changed
		func() { c.Observe("", x, 1, 2) },
		func() { c.Observe("m", x, 4, 2) }, // too short
	} {
		func() {
			defer func() {
				if p := recover(); p == nil || !strings.HasPrefix(fmt.Sprint(p), "calib: ") {
					t.Errorf("panic %v", p)
				}
			}()
			f()
		}()
	}
}

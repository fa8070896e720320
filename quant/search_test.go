package quant

import (
	"math"
	"testing"
)

// TestSearchModes runs the strategies on synthetic objectives with a known
// minimum: the fast walk must find a unimodal family's minimum on the fine
// grid, (0, 0) when it wins, and evaluate fewer candidates than full.
func TestSearchModes(t *testing.T) {
	bowl := func(fam int, at float64) func(SmoothCandidate) float64 {
		return func(c SmoothCandidate) float64 {
			switch {
			case c.Alpha == 0:
				return 5
			case (c.Beta == 0) == (fam == 0):
				return 1 + (c.Alpha-at)*(c.Alpha-at)
			}
			return 2 + (c.Alpha-at)*(c.Alpha-at)
		}
	}
	cases := []struct {
		name string
		f    func(SmoothCandidate) float64
		want SmoothCandidate
	}{
		{"family (α,1−α) at 0.35", bowl(1, 0.35), SmoothCandidate{0.35, 0.65}},
		{"family (α,0) at 0.8", bowl(0, 0.8), SmoothCandidate{0.8, 0}},
		{"family (α,1−α) at 0.05", bowl(1, 0.05), SmoothCandidate{0.05, 0.95}},
		{"family (α,0) at 0.95", bowl(0, 0.95), SmoothCandidate{0.95, 0}},
		{"no smoothing", func(c SmoothCandidate) float64 { return c.Alpha + c.Beta }, SmoothCandidate{0, 0}},
	}
	for _, tc := range cases {
		full, fullErr, nf := searchCandidates(SearchFull, tc.f)
		fast, fastErr, nq := searchCandidates(SearchFast, tc.f)
		if nf != 39 {
			t.Errorf("%s: full evaluated %d", tc.name, nf)
		}
		if math.Abs(full.Alpha-tc.want.Alpha) > 1e-12 || math.Abs(full.Beta-tc.want.Beta) > 1e-12 {
			t.Errorf("%s: full found %v, want %v", tc.name, full, tc.want)
		}
		if fast != full || fastErr != fullErr {
			t.Errorf("%s: fast found %v (%v), full %v (%v)", tc.name, fast, fastErr, full, fullErr)
		}
		if nq >= 20 {
			t.Errorf("%s: fast evaluated %d candidates", tc.name, nq)
		}
	}
	if c, _, n := searchCandidates(SearchOff, func(SmoothCandidate) float64 { panic("evaluated") }); c != plainCandidate || n != 0 {
		t.Errorf("off: %v after %d evaluations", c, n)
	}
}

func TestParseSearchMode(t *testing.T) {
	for _, m := range []SearchMode{SearchFull, SearchFast, SearchOff} {
		if got, err := ParseSearchMode(m.String()); err != nil || got != m {
			t.Errorf("ParseSearchMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseSearchMode("grid"); err == nil {
		t.Error("ParseSearchMode(grid) accepted")
	}
}

// TestInsertTop keeps the best candidates sorted, ties in arrival order,
// at most keep of them, each with a copy of the members' bases.
func TestInsertTop(t *testing.T) {
	g := &groupEval{mem: []*memberEval{{}, {}}}
	var top []scoredCandidate
	for i, e := range []float64{5, 3, 4, 3, 9, 1, math.NaN()} {
		g.mem[0].basis = []float32{float32(i)}
		g.mem[1].basis = []float32{float32(10 + i)}
		top = g.insertTop(top, 3, SmoothCandidate{Alpha: float64(i)}, e)
	}
	want := []float64{5, 1, 3} // candidates (by α) with errors 1, 3, 3 (the earlier 3 first)
	if len(top) != 3 {
		t.Fatalf("kept %d", len(top))
	}
	for i, w := range want {
		if top[i].c.Alpha != w || top[i].bases[0][0] != float32(w) || top[i].bases[1][0] != float32(10+w) {
			t.Errorf("top[%d] = %v with bases %v, want candidate %v", i, top[i].c, top[i].bases, w)
		}
	}
}

// TestSpreadFirst: a permutation of the rows whose first ones are evenly
// spread.
func TestSpreadFirst(t *testing.T) {
	const s, k, first = 10, 2, 4
	x := make([]float32, s*k)
	for i := range x {
		x[i] = float32(i / k)
	}
	got := spreadFirst(x, s, k, first)
	var order []float32
	for i := 0; i < s; i++ {
		if got[i*k] != got[i*k+1] {
			t.Fatalf("row %d split", i)
		}
		order = append(order, got[i*k])
	}
	want := []float32{0, 2, 5, 7, 1, 3, 4, 6, 8, 9}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("row order %v, want %v", order, want)
		}
	}
}

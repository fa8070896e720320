package quant

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The speed harness (SVDQ_SPEED=1 go test -run Speed -v ./quant): full and
// fast search on layers of every outlier pattern at a few shapes, printing
// error, chosen smoothing, candidates, refinement iterations, wall and CPU
// seconds. It is how the search and refinement settings were chosen (see
// NOTES.md); it asserts only that fast stays within pipeTol.fastVsFull of
// full on the mean error.

// speedCase is one layer of the harness.
type speedCase struct {
	p       synthPattern
	n, k    int
	shifted bool
}

var speedCases = []speedCase{
	{patFluxLike, 1536, 1536, false},
	{patFluxLike, 4608, 1536, false},
	{patFluxLike, 1536, 6144, true},
	{patActOutliers, 1536, 1536, false},
	{patHeavyTail, 1536, 1536, false},
	{patLowRank, 1536, 1536, false},
	{patActOutliers, 1536, 6144, true},
}

// processCPU returns the user + system CPU time of the process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestSpeedHarness(t *testing.T) {
	if os.Getenv("SVDQ_SPEED") == "" {
		t.Skip("set SVDQ_SPEED=1 (minutes of CPU)")
	}
	speedKnobs(t)
	var sum [2]float64
	var secs [2]float64
	only := os.Getenv("SVDQ_SPEED_ONLY") // a case index
	for i, c := range speedCases {
		if only != "" && only != strconv.Itoa(i) {
			continue
		}
		sc := newSynth(c.p, c.n, c.k, 256, uint64(100+i), c.shifted)
		for mi, mode := range []SearchMode{SearchFull, SearchFast} {
			if os.Getenv("SVDQ_SPEED_MODE") != "" && os.Getenv("SVDQ_SPEED_MODE") != mode.String() {
				continue
			}
			t0, c0 := time.Now(), processCPU()
			res, err := QuantizeGroup([]Input{sc.in}, c.shifted, sc.c, Options{Search: mode, Seed: 1})
			if err != nil {
				t.Fatal(err)
			}
			wall, cpu := time.Since(t0).Seconds(), (processCPU() - c0).Seconds()
			r := res[0]
			sum[mi] += r.RelError
			secs[mi] += cpu
			t.Logf("%-28v shifted=%-5v %-4v err %.5f (search %.5f) α %.2f β %.2f  %2d cands %3d iters  %6.2fs wall %6.2fs cpu",
				sc, c.shifted, mode, r.RelError, r.SearchError, r.Alpha, r.Beta, r.Evaluated, r.Iters, wall, cpu)
		}
	}
	n := float64(len(speedCases))
	t.Logf("mean error full %.5f fast %.5f (fast/full %.4f); cpu full %.1fs fast %.1fs", sum[0]/n, sum[1]/n, sum[1]/sum[0], secs[0], secs[1])
	if sum[1] > sum[0]*(1+pipeTol.fastVsFull) {
		t.Errorf("fast mean error %.5f more than %.0f%% above full %.5f", sum[1]/n, 100*pipeTol.fastVsFull, sum[0]/n)
	}
}

// TestSpeedRefineCurve prints, for each harness layer at the fast search's
// λ, the relative error after each of 40 refinement iterations run without
// stopping (SVDQ_SPEED=1), for warm starts with 1 and with no power
// iteration.
func TestSpeedRefineCurve(t *testing.T) {
	if os.Getenv("SVDQ_SPEED") == "" {
		t.Skip("set SVDQ_SPEED=1 (minutes of CPU)")
	}
	defer func(q int) { refinePower = q }(refinePower)
	for i, c := range speedCases {
		sc := newSynth(c.p, c.n, c.k, 256, uint64(100+i), c.shifted)
		for _, q := range []int{1, -1} {
			refinePower = q
			cfg := pipeConfig{prec: INT4, dt: BF16, rank: 32, iters: 100, maxRows: 256, seed: 1, search: SearchFast}
			g := newGroupEval([]Input{sc.in}, c.shifted, sc.c, cfg)
			best, _ := g.search()
			g.setCandidate(best)
			m := g.mem[0]
			m.basis = m.bestBasis
			g.fit(m, m.what, refinePower)
			line := fmt.Sprintf("%.5f", relFromSquared(m.st.err, m.ynorm))
			for it := 1; it <= 40; it++ {
				for j, w := range m.what {
					m.deq[j] = w - m.deq[j]
				}
				g.fit(m, m.deq, refinePower)
				if it <= 10 || it%5 == 0 {
					line += fmt.Sprintf(" %d:%.5f", it, relFromSquared(m.st.err, m.ynorm))
				}
			}
			t.Logf("%v q=%d: %s", sc, q, line)
		}
	}
}

// speedKnobs applies SVDQ_SPEED_SEARCHPOWER / SVDQ_SPEED_REFINEPOWER
// (experiments with the harness).
func speedKnobs(t *testing.T) {
	for _, k := range []struct {
		env string
		v   *int
	}{{"SVDQ_SPEED_SEARCHPOWER", &searchPower}, {"SVDQ_SPEED_REFINEPOWER", &refinePower},
		{"SVDQ_SPEED_RANKROWS", &fastRankRows}, {"SVDQ_SPEED_FASTITERS", &fastIters},
		{"SVDQ_SPEED_FULLROWS", &fullRankRows}, {"SVDQ_SPEED_RECHECK", &fullRecheck},
		{"SVDQ_SPEED_FASTREFINEPOWER", &fastRefinePower}, {"SVDQ_SPEED_OVERSAMPLE", &fastOversample}} {
		if s := os.Getenv(k.env); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil {
				t.Fatal(err)
			}
			old := *k.v
			*k.v = v
			t.Cleanup(func() { *k.v = old })
		}
	}
	if s := os.Getenv("SVDQ_SPEED_COARSE"); s != "" { // e.g. 5,10,15
		old := fastCoarse
		fastCoarse = nil
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.Atoi(f)
			if err != nil {
				t.Fatal(err)
			}
			fastCoarse = append(fastCoarse, v)
		}
		t.Cleanup(func() { fastCoarse = old })
	}
	if os.Getenv("SVDQ_SPEED_REFINEALL") != "" {
		refineRanked = false
		t.Cleanup(func() { refineRanked = true })
	}
	for _, k := range []struct {
		env string
		v   *float64
	}{{"SVDQ_SPEED_TOL", &fastRefineTol}, {"SVDQ_SPEED_FULLTOL", &fullRefineTol}} {
		if s := os.Getenv(k.env); s != "" {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				t.Fatal(err)
			}
			old := *k.v
			*k.v = v
			t.Cleanup(func() { *k.v = old })
		}
	}
	t.Logf("full tol %g; coarse %v; refine on ranking rows %v; searchPower %d refinePower %d; full: rank rows %d, recheck %d; fast: rank rows %d, iters %d, tol %g",
		fullRefineTol, fastCoarse, refineRanked, searchPower, refinePower, fullRankRows, fullRecheck, fastRankRows, fastIters, fastRefineTol)
}

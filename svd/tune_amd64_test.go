//go:build amd64 && !purego && unix

package svd

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"
)

// TestTune compares Gemm configurations (tile variant × A packed or in
// place × C or Cᵀ, and the automatic plan) on a few shapes, best-of in CPU
// time, for tuning on a shared machine: SVDQ_TUNE=1 (or avx2) go test -run
// Tune -v ./svd.
func TestTune(t *testing.T) {
	if os.Getenv("SVDQ_TUNE") == "" {
		t.Skip("set SVDQ_TUNE=1")
	}
	defer func() { forceKernel = nil; forceA = aAuto; forceSwap = 0 }()
	type cfg struct {
		kern *microKernel
		mode aMode
		swap int
	}
	var cfgs []cfg
	set := avx512Set
	if os.Getenv("SVDQ_TUNE") == "avx2" {
		set = avx2Set
	}
	for _, k := range set.variants {
		for _, mode := range []aMode{aPacked, aDirect} {
			for _, swap := range []int{-1, 1} {
				cfgs = append(cfgs, cfg{k, mode, swap})
			}
		}
	}
	cfgs = append(cfgs, cfg{})
	for _, sh := range []struct {
		ta, tb  bool
		m, n, k int
	}{{false, false, 3072, 3072, 3072}, {false, true, 256, 3072, 3072}, {false, false, 3072, 48, 12288}, {true, false, 12288, 48, 3072}, {false, false, 3072, 3072, 32}} {
		best := make([]float64, len(cfgs))
		x := gaussMat(sh.m, sh.k, 1)
		y := gaussMat(sh.k, sh.n, 2)
		c := make([]float32, sh.m*sh.n)
		lda, ldb := sh.k, sh.n
		if sh.ta {
			lda = sh.m
		}
		if sh.tb {
			ldb = sh.k
		}
		for rep := 0; rep < 5; rep++ {
			for i, cf := range cfgs {
				forceKernel, forceA, forceSwap = cf.kern, cf.mode, cf.swap
				f := func() { Gemm(sh.ta, sh.tb, sh.m, sh.n, sh.k, 1, x, lda, y, ldb, 0, c, sh.n) }
				f()
				best[i] = max(best[i], cpuRate(sh.m, sh.n, sh.k, f))
			}
		}
		for i, cf := range cfgs {
			name := "auto"
			if cf.kern != nil {
				name = cf.kern.name
			}
			fmt.Printf("%+v %s mode=%d swap=%d procs=%d %.1f GFLOP per CPU-second\n", sh, name, cf.mode, cf.swap, runtime.GOMAXPROCS(0), best[i])
		}
	}
}

// cpuRate runs f a few times and returns the best GFLOP per CPU-second of
// this process (user + system time of all threads), which other processes
// on a shared machine disturb far less than wall time.
func cpuRate(m, n, k int, f func()) float64 {
	best := 0.0
	for range 3 {
		t0 := cpuTime()
		w0 := time.Now()
		f()
		d := cpuTime() - t0
		if d <= 0 {
			d = time.Since(w0)
		}
		best = max(best, 2*float64(m)*float64(n)*float64(k)/d.Seconds()/1e9)
	}
	return best
}

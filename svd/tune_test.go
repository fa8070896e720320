package svd

import (
	"fmt"
	"os"
	"testing"
	"time"
)

func TestTune(t *testing.T) {
	if os.Getenv("SVDQ_TUNE") == "" {
		t.Skip()
	}
	saved := *avx512Kernel
	defer func() { *avx512Kernel = saved; forceA = aAuto }()
	type cfg struct {
		kc, mc int
		mode   aMode
	}
	var cfgs []cfg
	for _, kc := range []int{512, 768, 1024} {
		for _, mc := range []int{144} {
			for _, mode := range []aMode{aPacked} {
				cfgs = append(cfgs, cfg{kc, mc, mode})
			}
		}
	}
	best := make([]float64, len(cfgs))
	for rep := 0; rep < 3; rep++ {
		for i, c := range cfgs {
			avx512Kernel.kc, avx512Kernel.mc = c.kc, c.mc
			forceA = c.mode
			best[i] = max(best[i], BenchGemm(3072, 3072, 3072, 300*time.Millisecond))
		}
	}
	for i, c := range cfgs {
		fmt.Printf("%+v %.1f\n", c, best[i])
	}
}

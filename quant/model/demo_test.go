package model

import (
	"os"
	"testing"
)

func TestDemoSmall(t *testing.T) {
	opt := DemoOptions{Scale: 0.04, Samples: 32, Iters: 2, Dir: t.TempDir()}
	if os.Getenv("SVDQ_LONG") != "" {
		opt = DemoOptions{} // the README's demo
	}
	rep, err := Demo(opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || rep.Layers != 20 || rep.Runs[1].Precision != "nvfp4" {
		t.Fatalf("demo report %+v", rep)
	}
	for _, r := range rep.Runs {
		mean, _ := r.Check.MeanErrors("int4", "nvfp4")
		if !(mean[MethodSVDQuant] < mean[MethodSVDQuantPlain] && mean[MethodSVDQuantPlain] < mean[MethodNaive]) {
			t.Errorf("%s: means %v", r.Precision, mean)
		}
	}
	t.Logf("demo took %.1fs", rep.Seconds)
}

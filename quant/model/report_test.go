package model

import "testing"

func TestCheckReportFinish(t *testing.T) {
	layers := func() []CheckLayer {
		return []CheckLayer{
			{Name: "b", Precision: "int4", RelError: map[string]float64{MethodSVDQuant: 0.05, MethodNaive: 0.3}},
			{Name: "a", Precision: "w4a16", RelError: map[string]float64{MethodSVDQuant: 0.02, MethodW4A16: 0.02}},
			{Name: "c", Precision: "int4", RelError: map[string]float64{MethodSVDQuant: 0.07, MethodNaive: 0.5}},
		}
	}
	for _, c := range []struct {
		max    float64
		passed bool
	}{{0, true}, {0.07, true}, {0.069, false}, {0.01, false}} {
		r := &CheckReport{Layers: layers()}
		r.finish(c.max)
		if r.Passed != c.passed || r.Worst != (Worst{"c", 0.07}) || r.Layers[0].Name != "a" {
			t.Errorf("max %v: passed %v worst %+v first %s", c.max, r.Passed, r.Worst, r.Layers[0].Name)
		}
	}
	r := &CheckReport{Layers: layers()}
	mean, count := r.MeanErrors("int4")
	if count[MethodSVDQuant] != 2 || mean[MethodNaive] != 0.4 || count[MethodW4A16] != 0 {
		t.Errorf("int4 means %v %v", mean, count)
	}
	mean, count = r.MeanErrors()
	if count[MethodSVDQuant] != 3 || mean[MethodW4A16] != 0.02 {
		t.Errorf("all means %v %v", mean, count)
	}
}

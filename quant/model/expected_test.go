package model

import (
	"math"
	"testing"
	"time"

	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/quant"
)

func TestExpected(t *testing.T) {
	p := &Plan{Layers: []PlannedLayer{
		{Layer: preset.Layer{N: 3072, K: 3072, Role: preset.W4A4}, Precision: "int4"},
		{Layer: preset.Layer{N: 18432, K: 3072, Role: preset.W4A16}, Precision: "w4a16"},
	}}
	// 9.437184 M + 0.24·56.623104 M = 23.0267 M weights of the measured
	// 8607 + 0.24·3228 = 9381.72 M; fast 745 s on 2 cores, here 1 worker.
	want := 745 * (9.437184 + 0.24*56.623104) / 9381.72 * 2
	d, ok := p.Expected(quant.SearchFast, 1)
	if !ok || math.Abs(d.Seconds()-want) > 1e-3 {
		t.Errorf("fast: %v, %v; want %.4f s", d, ok, want)
	}
	if d, _ := p.Expected(quant.SearchFull, 1); math.Abs(d.Seconds()-want*2738/745) > 1e-3 {
		t.Errorf("full: %v", d)
	}
	if _, ok := p.Expected(quant.SearchOff, 1); ok {
		t.Error("off was never measured")
	}
	if d, _ := p.Expected(quant.SearchFast, 1); d > time.Minute {
		t.Errorf("%v", d)
	}
}

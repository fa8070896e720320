package tinydit

import (
	"math"
	"testing"
)

// TestForwardMatchesSpago checks the batched forward pass against the
// per-token spago reference on every sample of a small batch.
func TestForwardMatchesSpago(t *testing.T) {
	cfg := SmallConfig()
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in := NewBatch(cfg, 3, 3)
	got := m.Forward(in, Run{})
	ref := newSpagoRef(m)
	per := cfg.ImageTokens() * cfg.InChannels
	for s := range in.N {
		want := ref.forward(in, s)
		var num, den float64
		for i, w := range want {
			d := float64(got[s*per+i]) - float64(w)
			num += d * d
			den += float64(w) * float64(w)
		}
		rel := math.Sqrt(num / den)
		t.Logf("sample %d: relative difference %.2e", s, rel)
		if !(rel < 1e-4) {
			t.Errorf("sample %d: batched forward differs from the spago reference by %.3g (tolerance 1e-4)", s, rel)
		}
	}
}

package quant

import "testing"

// TestPow2Up: the smallest power of two at or above s, by hand.
func TestPow2Up(t *testing.T) {
	for _, c := range []struct{ in, want float32 }{
		{0.3, 0.5}, {0.25, 0.25}, {1e-3, 0.001953125}, {3, 4}, {1, 1}, {0.2500001, 0.5},
	} {
		if got := Pow2Up(c.in); got != c.want {
			t.Errorf("Pow2Up(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

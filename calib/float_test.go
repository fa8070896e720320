package calib

import (
	"math"
	"testing"
)

// TestHalfConversions checks the F16/BF16 conversions on every 16-bit
// pattern: decode then encode is the identity (NaNs stay NaN), and the
// midpoint between two neighbours rounds to the one with an even pattern.
func TestHalfConversions(t *testing.T) {
	for _, c := range []struct {
		name string
		dec  func(uint16) float32
		enc  func(float32) uint16
	}{{"f16", f16ToF32, f32ToF16}, {"bf16", bf16ToF32, f32ToBF16}} {
		for h := 0; h < 1<<16; h++ {
			v := c.dec(uint16(h))
			if v != v {
				if e := c.dec(c.enc(v)); e == e {
					t.Fatalf("%s: NaN %#04x re-encoded to a number", c.name, h)
				}
				continue
			}
			if got := c.enc(v); got != uint16(h) {
				t.Fatalf("%s: %#04x → %v → %#04x", c.name, h, v, got)
			}
			// Midpoint to the next pattern of the same sign (skip Inf).
			next := c.dec(uint16(h + 1))
			if h&0x7FFF == 0x7FFF || next != next || math.IsInf(float64(v), 0) || math.IsInf(float64(next), 0) {
				continue
			}
			mid := float32((float64(v) + float64(next)) / 2)
			if float64(mid) != (float64(v)+float64(next))/2 {
				continue // not representable in float32
			}
			want := uint16(h)
			if h&1 == 1 {
				want = uint16(h + 1)
			}
			if got := c.enc(mid); got != want {
				t.Fatalf("%s: midpoint %v of %#04x and %#04x → %#04x, want %#04x", c.name, mid, h, h+1, got, want)
			}
		}
	}
	if f32ToF16(65520) != 0x7C00 || f32ToF16(65519) != 0x7BFF || f32ToF16(-1e9) != 0xFC00 {
		t.Errorf("f16 overflow rounding")
	}
}

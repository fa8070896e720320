package kernels

import (
	"math/rand/v2"
	"testing"
)

// TestLowRankBufsPlan runs random call sequences through lowRankBufs.plan
// against a model of the buffers' contents: a call that needs zeroed sums
// never gets a buffer that is not zero (after its memset), the GEMM never
// zeroes the buffer the call writes, the bookkeeping never claims more
// zeros than there are, and alternating fused calls need no memset.
func TestLowRankBufsPlan(t *testing.T) {
	const full = 4096 * 32
	rng := rand.New(rand.NewPCG(1, 2))
	for seq := 0; seq < 200; seq++ {
		b := &lowRankBufs{zero: [2]int{full, full}}
		truth := [2]int{full, full} // leading zero floats actually in each buffer
		for call := 0; call < 50; call++ {
			n := []int{0, 256 * 32, 1024 * 32, full}[rng.IntN(4)]
			fused := rng.IntN(2) == 0
			pl := b.plan(n, fused)
			if pl.memset {
				truth[pl.cur] = max(truth[pl.cur], n)
			}
			if n > 0 && truth[pl.cur] < n {
				t.Fatalf("seq %d call %d: buffer %d has %d zeros, the call needs %d", seq, call, pl.cur, truth[pl.cur], n)
			}
			truth[pl.cur] = 0 // the activation pass writes it
			if pl.next >= 0 {
				if pl.next == pl.cur || !fused {
					t.Fatalf("seq %d call %d: plan %+v for fused=%v", seq, call, pl, fused)
				}
				truth[pl.next] = max(truth[pl.next], n)
			}
			if b.used != pl.cur {
				t.Fatalf("seq %d call %d: used %d, wrote %d", seq, call, b.used, pl.cur)
			}
			for i := range truth {
				if b.zero[i] > truth[i] {
					t.Fatalf("seq %d call %d: buffer %d claimed %d zeros, has %d", seq, call, i, b.zero[i], truth[i])
				}
			}
		}
	}
	b := &lowRankBufs{zero: [2]int{full, full}}
	for call := 0; call < 10; call++ {
		if pl := b.plan(1024*32, true); pl.memset {
			t.Fatalf("fused call %d of a steady sequence needed a memset", call)
		}
	}
}

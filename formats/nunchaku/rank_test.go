package nunchaku

import (
	"testing"

	"github.com/svdq/svdq/quant"
)

// TestPadRank: widening the packed branch of a layer with zero rank
// columns gives exactly the tensors of the same layer packed with those
// zero columns in its logical Down/Up (the packer is the reference).
func TestPadRank(t *testing.T) {
	rng := newRand(91)
	l := randomLayer(rng, 150, 200, 20, quant.INT4, quant.BF16) // R 20 → stored 32
	ts, err := PackW4A4(l)
	must(t, err)
	wide := *l
	wide.R = 40 // stored 48: the same values plus 20 zero columns
	wide.Down = make([]float32, wide.R*l.K)
	copy(wide.Down, l.Down) // Down is [R, K]: rows 20..39 zero
	wide.Up = make([]float32, l.N*wide.R)
	for n := 0; n < l.N; n++ {
		copy(wide.Up[n*wide.R:n*wide.R+l.R], l.Up[n*l.R:(n+1)*l.R])
	}
	want, err := PackW4A4(&wide)
	must(t, err)
	for _, s := range []string{SuffixLoraDown, SuffixLoraUp} {
		got, err := PadRank(tensorBySuffix(t, ts, s), 48)
		must(t, err)
		w := tensorBySuffix(t, want, s)
		if string(got.Data) != string(w.Data) || got.Shape[1] != 48 || got.Shape[0] != w.Shape[0] {
			t.Fatalf("%s: PadRank(…, 48) differs from packing the widened branch (shape %v, want %v)", s, got.Shape, w.Shape)
		}
	}
	if _, err := PadRank(tensorBySuffix(t, ts, SuffixLoraDown), 24); err == nil {
		t.Fatal("PadRank to a rank not a multiple of 16 passed")
	}
	if _, err := PadRank(tensorBySuffix(t, ts, SuffixLoraDown), 16); err == nil {
		t.Fatal("PadRank to a smaller rank passed")
	}
}

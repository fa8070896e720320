package lora

import (
	"bytes"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant"
)

// TestNarrowRank: NarrowRank undoes nunchaku.PadRank exactly (lora_down
// and lora_up of a packed layer), to the same rank or any multiple of 16
// in between, and refuses to drop a nonzero column.
func TestNarrowRank(t *testing.T) {
	l := &quant.Layer{Precision: quant.INT4, N: 256, K: 128, R: 20, DType: quant.BF16, TensorScale: 1}
	l.Codes, l.Scales, l.Smooth, l.Bias = make([]int8, l.N*l.K), make([]float32, l.N*l.Groups()), make([]float32, l.K), make([]float32, l.N)
	for i := range l.Scales {
		l.Scales[i] = 1
	}
	for i := range l.Smooth {
		l.Smooth[i] = 1
	}
	l.Down, l.Up = make([]float32, l.R*l.K), make([]float32, l.N*l.R)
	for i := range l.Down {
		l.Down[i] = float32(i%7) - 3
	}
	for i := range l.Up {
		l.Up[i] = float32(i%5) - 2
	}
	ts, err := nunchaku.PackW4A4(l)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ts {
		if x.Suffix != nunchaku.SuffixLoraDown && x.Suffix != nunchaku.SuffixLoraUp {
			continue
		}
		wide, err := nunchaku.PadRank(x, 64)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []int{32, 48} {
			back, err := NarrowRank(wide, r)
			if err != nil {
				t.Fatal(err)
			}
			again, _ := nunchaku.PadRank(x, r)
			if !bytes.Equal(back.Data, again.Data) || back.Shape[1] != int64(r) || back.Shape[0] != x.Shape[0] {
				t.Errorf("%s: narrowed to %d differs from padded to %d", x.Suffix, r, r)
			}
		}
		if _, err := NarrowRank(wide, 16); err == nil || !strings.Contains(err.Error(), "not zero") {
			t.Errorf("%s: narrowing past a nonzero column: %v", x.Suffix, err)
		}
		if _, err := NarrowRank(wide, 24); err == nil {
			t.Errorf("%s: rank 24 accepted", x.Suffix)
		}
	}
}

package lora

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant"
)

func randBranch(rng *rand.Rand, n, k, r int, dt quant.Float16) *Branch {
	b := &Branch{N: n, K: k, R: r, Down: make([]float32, r*k), Up: make([]float32, n*r)}
	for i := range b.Down {
		b.Down[i] = dt.Round(float32(rng.NormFloat64()))
	}
	for i := range b.Up {
		b.Up[i] = dt.Round(float32(rng.NormFloat64()))
	}
	return b
}

// TestBranchAppendDrop: Append then Drop of the appended columns (or of a
// middle block) gives back the original values bit for bit; Slice picks
// the same columns.
func TestBranchAppendDrop(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	a, b, c := randBranch(rng, 9, 7, 3, quant.BF16), randBranch(rng, 9, 7, 5, quant.BF16), randBranch(rng, 9, 7, 2, quant.BF16)
	x := NewBranch(9, 7)
	x.Append(a)
	x.Append(b)
	x.Append(c)
	if x.R != 10 {
		t.Fatalf("rank %d", x.R)
	}
	mid := x.Slice(3, 8)
	if !equalBits(mid.Down, b.Down) || !equalBits(mid.Up, b.Up) {
		t.Fatal("Slice(3, 8) is not b")
	}
	x.Drop(3, 8)
	want := NewBranch(9, 7)
	want.Append(a)
	want.Append(c)
	if x.R != 5 || !equalBits(x.Down, want.Down) || !equalBits(x.Up, want.Up) {
		t.Fatal("Drop(3, 8) did not leave a|c")
	}
	x.Drop(0, 5)
	if x.R != 0 || len(x.Down) != 0 || len(x.Up) != 0 {
		t.Fatalf("empty branch: %+v", x)
	}
	func() {
		defer func() {
			if r := recover(); r == nil || !strings.HasPrefix(r.(string), "lora: ") {
				t.Errorf("Drop out of range: %v", r)
			}
		}()
		x.Drop(0, 1)
	}()
}

// TestBranchMerge: Merge rounds base + Up·Down once, from float64.
func TestBranchMerge(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	b := randBranch(rng, 4, 6, 3, quant.BF16)
	base := make([]float32, 24)
	for i := range base {
		base[i] = quant.RoundBF16(float32(rng.NormFloat64() * 4))
	}
	for _, dt := range []quant.Float16{quant.BF16, quant.F16} {
		got := b.Merge(base, dt, false)
		for n := 0; n < 4; n++ {
			for k := 0; k < 6; k++ {
				s := float64(base[n*6+k])
				for r := 0; r < 3; r++ {
					s += float64(b.Up[n*3+r]) * float64(b.Down[r*6+k])
				}
				if want := dt.Round(float32(s)); got[n*6+k] != want {
					t.Fatalf("%v [%d,%d] = %v, want %v", dt, n, k, got[n*6+k], want)
				}
			}
		}
	}
	if got := NewBranch(4, 6).Merge(base, quant.BF16, false); !equalBits(got, base) {
		t.Error("a rank-0 merge changed the base")
	}
}

// TestW4A16BranchLayout: pack/unpack round trip, rank padding, and the row
// interleave is the one nunchaku's W4A16 packer applies to the bias
// (PackW4A16): up row r of the file is the logical row whose bias sits at
// position r of the packed bias.
func TestW4A16BranchLayout(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	for _, c := range []struct{ n, k, r, chunks int }{{96, 128, 5, 6}, {48, 64, 16, 3}, {32, 64, 1, 1}} {
		b := randBranch(rng, c.n, c.k, c.r, quant.BF16)
		ts, err := PackW4A16Branch(b, c.chunks, quant.BF16)
		if err != nil {
			t.Fatal(err)
		}
		rp := PadRank(c.r)
		if ts[0].Shape[0] != int64(rp) || ts[0].Shape[1] != int64(c.k) || ts[1].Shape[0] != int64(c.n) || ts[1].Shape[1] != int64(rp) {
			t.Fatalf("%+v: shapes %v %v", c, ts[0].Shape, ts[1].Shape)
		}
		got, err := UnpackW4A16Branch(nunchaku.MapGetter(ts), "l", c.n, c.k, c.chunks, c.r)
		if err != nil {
			t.Fatal(err)
		}
		if !equalBits(got.Down, b.Down) || !equalBits(got.Up, b.Up) {
			t.Fatalf("%+v: round trip differs", c)
		}
		// Cross-check the interleave against PackW4A16's bias.
		w := &quant.WeightOnly{N: c.n, K: c.k, DType: quant.BF16, Codes: make([]uint8, c.n*c.k),
			Scales: make([]float32, c.n*c.k/64), Zeros: make([]float32, c.n*c.k/64), Bias: make([]float32, c.n)}
		marker := NewBranch(c.n, c.k)
		marker.R, marker.Down, marker.Up = 1, make([]float32, c.k), make([]float32, c.n)
		for i := range w.Bias {
			w.Bias[i] = float32(4 * i) // exact in bf16 for these sizes; +1 keeps it distinct
			marker.Up[i] = float32(4 * i)
		}
		wt, err := nunchaku.PackW4A16(w, c.chunks)
		if err != nil {
			t.Fatal(err)
		}
		mt, err := PackW4A16Branch(marker, c.chunks, quant.BF16)
		if err != nil {
			t.Fatal(err)
		}
		var bias nunchaku.Tensor
		for _, x := range wt {
			if x.Suffix == nunchaku.SuffixBias {
				bias = x
			}
		}
		pb := make([]float32, c.n)
		quant.Decode(pb, bias.DType, bias.Data)
		up := make([]float32, c.n*16)
		quant.Decode(up, mt[1].DType, mt[1].Data)
		for r := 0; r < c.n; r++ {
			if math.Abs(float64(pb[r]-up[r*16])) > 1 {
				t.Fatalf("%+v: packed row %d: bias from logical %v, lora_up from %v", c, r, pb[r], up[r*16])
			}
		}
	}
	if _, err := PackW4A16Branch(&Branch{N: 4, K: 2, R: 1, Down: []float32{0.1, 0}, Up: make([]float32, 4)}, 1, quant.BF16); err == nil {
		t.Error("a value not of bf16 was packed")
	}
	if _, err := UnpackW4A16Branch(nunchaku.MapGetter(nil), "l", 4, 4, 1, 3); err == nil {
		t.Error("a missing branch of rank 3 was accepted")
	}
}

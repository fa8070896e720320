package nunchaku

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

func randomWeightOnly(rng *rand.Rand, n, k int, dt quant.Float16) *quant.WeightOnly {
	G := k / 64
	w := &quant.WeightOnly{N: n, K: k, DType: dt, Codes: make([]uint8, n*k),
		Scales: make([]float32, n*G), Zeros: make([]float32, n*G), Bias: make([]float32, n)}
	for i := range w.Codes {
		w.Codes[i] = uint8(rng.IntN(16))
	}
	for i := range w.Scales {
		w.Scales[i] = rand16(rng, dt)
		w.Zeros[i] = rand16(rng, dt)
	}
	for i := range w.Bias {
		w.Bias[i] = rand16(rng, dt)
	}
	return w
}

// refW4A16 builds the packed tensors from the spec's words: (1) interleave,
// new row j·c+s = old row s·m+j; (2) bias +1 on chunks 1 and c−2 (chunk = row
// mod c); (4) scales/zeros transposed to [G', N], extra rows zero; (5) per
// row, 32 codes → 8 words q[j] | q[j+8]<<4 | q[j+16]<<8 | q[j+24]<<12, the
// [N, K/4] word matrix split as rows 4t+u and 16-word chunks, memory order
// t, chunk, u, word.
func refW4A16(w *quant.WeightOnly, c int) map[string][]byte {
	N, K, G := w.N, w.K, w.K/64
	m := N / c
	old := make([]int, N)
	for s := 0; s < c; s++ {
		for j := 0; j < m; j++ {
			old[j*c+s] = s*m + j
		}
	}
	words := make([][]uint16, N)
	for r := 0; r < N; r++ {
		q := w.Codes[old[r]*K : (old[r]+1)*K]
		for b := 0; b < K/32; b++ {
			for j := 0; j < 8; j++ {
				x := q[b*32:]
				words[r] = append(words[r], uint16(x[j])|uint16(x[j+8])<<4|uint16(x[j+16])<<8|uint16(x[j+24])<<12)
			}
		}
	}
	var qw []byte
	for t := 0; t < N/4; t++ {
		for ch := 0; ch < K/64; ch++ {
			for u := 0; u < 4; u++ {
				for wi := 0; wi < 16; wi++ {
					qw = binary.LittleEndian.AppendUint16(qw, words[4*t+u][ch*16+wi])
				}
			}
		}
	}
	gp := G
	sc := make([]float32, gp*N)
	ze := make([]float32, gp*N)
	bias := make([]float32, N)
	for r := 0; r < N; r++ {
		for g := 0; g < G; g++ {
			sc[g*N+r] = w.Scales[old[r]*G+g]
			ze[g*N+r] = w.Zeros[old[r]*G+g]
		}
		bias[r] = w.Bias[old[r]]
		if s := r % c; c >= 2 && (s == 1 || s == c-2) {
			bias[r] = w.DType.Round(bias[r] + 1)
		}
	}
	return map[string][]byte{"qweight": qw, "wscales": w.DType.Encode(sc), "wzeros": w.DType.Encode(ze), "bias": w.DType.Encode(bias)}
}

var w4a16Cases = []struct{ n, k, chunks int }{
	{24, 128, 6},   // G = 2, G' = 16
	{36, 192, 3},   // G = 3
	{48, 1088, 6},  // G = 17, G' = 32
	{8, 64, 1},     // plain layer
	{16, 1024, 2},  // both chunks get +1
	{120, 3072, 6}, // G = 48 = G'
}

func TestPackW4A16MatchesSpecLayout(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, c := range w4a16Cases {
		for _, dt := range dtypes {
			name := fmt.Sprintf("%dx%d/c%d/%v", c.n, c.k, c.chunks, dt)
			w := randomWeightOnly(rng, c.n, c.k, dt)
			ts, err := PackW4A16(w, c.chunks)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			want := refW4A16(w, c.chunks)
			gp := c.k / 64 // the loaders' row count
			shapes := map[string][]int{"qweight": {c.n / 4, c.k / 2}, "wscales": {gp, c.n}, "wzeros": {gp, c.n}, "bias": {c.n}}
			if len(ts) != 4 {
				t.Fatalf("%s: %d tensors", name, len(ts))
			}
			for _, x := range ts {
				wantDT := dt.String()
				if x.Suffix == "qweight" {
					wantDT = "I32"
				}
				if x.DType != wantDT || !sameShape(x.Shape, shapes[x.Suffix]) {
					t.Errorf("%s: %s is %s %v, want %s %v", name, x.Suffix, x.DType, x.Shape, wantDT, shapes[x.Suffix])
				}
				if string(x.Data) != string(want[x.Suffix]) {
					t.Errorf("%s: %s bytes differ from the spec (first diff at %d)", name, x.Suffix, firstDiff(x.Data, want[x.Suffix]))
				}
			}
		}
	}
}

// TestW4A16InterleaveBias pins the FLUX case by hand: c = 6, m = 2; packed
// row r holds old row (r mod 6)·2 + r/6, and rows of chunks 1 and 4 get +1.
func TestW4A16InterleaveBias(t *testing.T) {
	w := &quant.WeightOnly{N: 12, K: 64, DType: quant.BF16, Codes: make([]uint8, 12*64),
		Scales: make([]float32, 12), Zeros: make([]float32, 12), Bias: make([]float32, 12)}
	for i := range w.Bias {
		w.Bias[i] = float32(10 * i) // old row i has bias 10·i
		w.Scales[i] = float32(i)
	}
	ts, err := PackW4A16(w, 6)
	if err != nil {
		t.Fatal(err)
	}
	bias := make([]float32, 12)
	if err := quant.Decode(bias, "BF16", tensorBySuffix(t, ts, "bias").Data); err != nil {
		t.Fatal(err)
	}
	//          r: 0   1   2   3   4   5   6   7   8   9  10  11
	// old row:    0   2   4   6   8  10   1   3   5   7   9  11
	// chunk:      0   1   2   3   4   5   0   1   2   3   4   5
	want := []float32{0, 21, 40, 60, 81, 100, 10, 31, 50, 70, 91, 110}
	if fmt.Sprint(bias) != fmt.Sprint(want) {
		t.Fatalf("packed bias %v, want %v", bias, want)
	}
	sc := make([]float32, 12) // K/64 = 1 row, the loaders' shape
	if err := quant.Decode(sc, "BF16", tensorBySuffix(t, ts, "wscales").Data); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(sc) != "[0 2 4 6 8 10 1 3 5 7 9 11]" {
		t.Fatalf("packed scales row 0 %v", sc)
	}
	// c = 3: only chunk 1.
	w3 := &quant.WeightOnly{N: 12, K: 64, DType: quant.BF16, Codes: make([]uint8, 12*64),
		Scales: make([]float32, 12), Zeros: make([]float32, 12), Bias: make([]float32, 12)}
	ts, err = PackW4A16(w3, 3)
	if err != nil {
		t.Fatal(err)
	}
	if err := quant.Decode(bias, "BF16", tensorBySuffix(t, ts, "bias").Data); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(bias) != "[0 1 0 0 1 0 0 1 0 0 1 0]" {
		t.Fatalf("c=3 packed bias %v", bias)
	}
}

func TestW4A16RoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	for _, c := range w4a16Cases {
		for _, dt := range dtypes {
			name := fmt.Sprintf("%dx%d/c%d/%v", c.n, c.k, c.chunks, dt)
			w := randomWeightOnly(rng, c.n, c.k, dt)
			ts, err := PackW4A16(w, c.chunks)
			if err != nil {
				t.Fatal(err)
			}
			got, err := UnpackW4A16(MapGetter(ts), W4A16Options{Name: name, Chunks: c.chunks, N: c.n, K: c.k})
			if err != nil {
				t.Fatal(err)
			}
			if got.N != w.N || got.K != w.K || got.DType != w.DType || string(got.Codes) != string(w.Codes) ||
				!sameBits(got.Scales, w.Scales) || !sameBits(got.Zeros, w.Zeros) {
				t.Fatalf("%s: codes, scales or zeros differ after the round trip", name)
			}
			m := c.n / c.chunks
			for i, b := range w.Bias {
				if s := i / m; c.chunks >= 2 && (s == 1 || s == c.chunks-2) {
					// The file holds round(b+1): b comes back when b+1 is
					// exact, else a value with the same round(b'+1).
					if y := dt.Round(b + 1); dt.Round(got.Bias[i]+1) != y || (float64(y)-1 == float64(b) && got.Bias[i] != b) {
						t.Fatalf("%s: shifted bias[%d] = %g from %g", name, i, got.Bias[i], b)
					}
				} else if math.Float32bits(got.Bias[i]) != math.Float32bits(b) {
					t.Fatalf("%s: bias[%d] = %g, want %g", name, i, got.Bias[i], b)
				}
			}
			again, err := PackW4A16(got, c.chunks)
			if err != nil || !sameTensors(ts, again) {
				t.Fatalf("%s: Pack(Unpack(Pack(w))) differs from Pack(w) (err %v)", name, err)
			}
		}
	}
}

// TestW4A16BiasShiftIsStable proves over every finite 16-bit value b that
// the +1 stored for the shifted chunks survives an unpack and repack:
// y = round(b+1) gives b' = unshift(y) with round(b'+1) = y, so
// Pack(Unpack(file)) is the file, and b' = b whenever b+1 is exact.
func TestW4A16BiasShiftIsStable(t *testing.T) {
	for _, dt := range dtypes {
		exact := 0
		for h := 0; h < 1<<16; h++ {
			var b float32
			if dt == quant.F16 {
				b = quant.F16ToF32(uint16(h))
			} else {
				b = quant.BF16ToF32(uint16(h))
			}
			if b != b {
				continue
			}
			y := dt.Round(b + 1)
			back := unshift(y, dt)
			if dt.Round(back+1) != y {
				t.Fatalf("%v: b=%g: stored %g, unpacked %g, repacked %g", dt, b, y, back, dt.Round(back+1))
			}
			if float64(y)-1 == float64(b) && back != b {
				t.Fatalf("%v: b=%g: b+1 exact but unpacked %g", dt, b, back)
			}
			if back == b {
				exact++
			}
		}
		t.Logf("%v: %d of 65536 bias values come back exactly", dt, exact)
	}
}

func TestW4A16Errors(t *testing.T) {
	rng := rand.New(rand.NewPCG(25, 26))
	good := randomWeightOnly(rng, 24, 128, quant.BF16)
	for _, c := range []struct {
		name   string
		w      func() *quant.WeightOnly
		chunks int
		want   string
	}{
		{"k not 64", func() *quant.WeightOnly { w := *good; w.K = 100; return &w }, 6, "multiple of 64"},
		{"n not 4", func() *quant.WeightOnly { w := *good; w.N = 18; return &w }, 6, "multiple of 4"},
		{"chunks", func() *quant.WeightOnly { return good }, 5, "5 chunks"},
		{"code 16", func() *quant.WeightOnly {
			w := *good
			w.Codes = append([]uint8(nil), good.Codes...)
			w.Codes[7] = 16
			return &w
		}, 6, "codes[7]"},
		{"zeros", func() *quant.WeightOnly { w := *good; w.Zeros = w.Zeros[1:]; return &w }, 6, "zeros has"},
		{"scale not bf16", func() *quant.WeightOnly {
			w := *good
			w.Scales = append([]float32(nil), good.Scales...)
			w.Scales[3] = 0.1
			return &w
		}, 6, "scales[3]"},
	} {
		_, err := PackW4A16(c.w(), c.chunks)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pack %s: error %v, want %q", c.name, err, c.want)
		}
	}

	ts, _ := PackW4A16(good, 6)
	for _, c := range []struct {
		name string
		get  Getter
		opts W4A16Options
		want string
	}{
		{"no chunks", MapGetter(ts), W4A16Options{Name: "x"}, "0 chunks"},
		{"n mismatch", MapGetter(ts), W4A16Options{Name: "x", Chunks: 6, N: 48}, "want N=48"},
		{"qweight dtype", edit(ts, "qweight", func(x *Tensor) { x.DType = "I8" }), W4A16Options{Name: "x", Chunks: 6}, "qweight: dtype I8"},
		{"wzeros missing", edit(ts, "wzeros", func(x *Tensor) { x.Suffix = "" }), W4A16Options{Name: "x", Chunks: 6}, "no wzeros"},
		{"wscales rows", edit(ts, "wscales", func(x *Tensor) { x.Shape = []int64{3, 24} }), W4A16Options{Name: "x", Chunks: 6}, "wscales: shape [3 24]"},
		{"bias dtype", edit(ts, "bias", func(x *Tensor) { x.DType = "F16" }), W4A16Options{Name: "x", Chunks: 6}, "bias: dtype F16"},
	} {
		_, err := UnpackW4A16(c.get, c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("unpack %s: error %v, want %q", c.name, err, c.want)
		}
	}
}

// TestUnpackW4A16DeepcompressorRows accepts wscales/wzeros whose K/64 rows
// are padded with zero rows to a multiple of 16, as deepcompressor writes
// them (PackW4A16 writes the loaders' K/64).
func TestUnpackW4A16DeepcompressorRows(t *testing.T) {
	rng := rand.New(rand.NewPCG(27, 28))
	w := randomWeightOnly(rng, 24, 1088, quant.F16) // G = 17, G' = 32
	ts, err := PackW4A16(w, 6)
	if err != nil {
		t.Fatal(err)
	}
	cut := func(x *Tensor) {
		x.Shape = []int64{32, 24}
		x.Data = append(append([]byte(nil), x.Data...), make([]byte, 2*15*24)...)
	}
	g1 := edit(ts, "wscales", cut)
	g2 := edit(ts, "wzeros", cut)
	get := func(s string) (string, []int64, []byte, bool) {
		if s == "wzeros" {
			return g2(s)
		}
		return g1(s)
	}
	got, err := UnpackW4A16(get, W4A16Options{Chunks: 6})
	if err != nil {
		t.Fatal(err)
	}
	if !sameBits(got.Scales, w.Scales) || !sameBits(got.Zeros, w.Zeros) || string(got.Codes) != string(w.Codes) {
		t.Fatal("unpack with deepcompressor's padded scale rows differs")
	}
	if math.IsNaN(float64(got.Bias[0])) {
		t.Fatal("bias NaN")
	}
}

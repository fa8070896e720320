package kernels

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

// TestLogicalInvertsPacker checks, without a GPU, the index arithmetic the
// kernels use: decoding formats/nunchaku's packed bytes through this
// package's layout functions gives back the layer value for value.
func TestLogicalInvertsPacker(t *testing.T) {
	for _, c := range layerCases {
		t.Run(c.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(c.n*c.k+c.r)))
			l := randLayer(rng, c)
			p, _ := pack(t, l)
			if p.Precision != c.prec || p.DType != c.dt || p.N != c.n || p.K != c.k || p.R != c.r || p.Unsigned != c.unsigned {
				t.Fatalf("PackedFromTensors: got %v %v N=%d K=%d R=%d unsigned=%v", p.Precision, p.DType, p.N, p.K, p.R, p.Unsigned)
			}
			got := p.Logical()
			for _, f := range []struct {
				name      string
				got, want any
			}{
				{"codes", got.Codes, l.Codes}, {"scales", got.Scales, l.Scales}, {"smooth", got.Smooth, l.Smooth},
				{"bias", got.Bias, l.Bias}, {"down", got.Down, l.Down}, {"up", got.Up, l.Up},
			} {
				switch g := f.got.(type) {
				case []int8:
					if i := firstDiff(g, f.want.([]int8)); i >= 0 {
						t.Fatalf("%s differ at %d: %v vs %v", f.name, i, g[i], f.want.([]int8)[i])
					}
				case []float32:
					if i := firstDiff(g, f.want.([]float32)); i >= 0 {
						t.Fatalf("%s differ at %d: %v vs %v", f.name, i, g[i], f.want.([]float32)[i])
					}
				}
			}
			if got.TensorScale != l.TensorScale {
				t.Fatalf("tensor scale %v, want %v", got.TensorScale, l.TensorScale)
			}
		})
	}
}

func firstDiff[T comparable](a, b []T) int {
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

// TestLayoutBijective checks that each scale and low-rank index function maps
// its domain onto the whole packed buffer exactly once (qweight's mapping is
// checked value for value by TestLogicalInvertsPacker).
func TestLayoutBijective(t *testing.T) {
	const n, k, r = 256, 384, 32
	seen := func(name string, size int, each func(mark func(pos int))) {
		t.Helper()
		hit := make([]int, size)
		each(func(pos int) { hit[pos]++ })
		if i := slices.IndexFunc(hit, func(c int) bool { return c != 1 }); i >= 0 {
			t.Fatalf("%s: position %d hit %d times", name, i, hit[i])
		}
	}
	seen("wscales int4", n*k/64, func(mark func(int)) {
		for i := 0; i < n; i++ {
			for g := 0; g < k/64; g++ {
				mark(wscaleInt4Pos(i, g, k))
			}
		}
	})
	seen("wscales nvfp4", n*k/16, func(mark func(int)) {
		for i := 0; i < n; i++ {
			for g := 0; g < k/16; g++ {
				mark(wscaleFP4Pos(i, g, k))
			}
		}
	})
	seen("1-D vector", n, func(mark func(int)) {
		for i := 0; i < n; i++ {
			mark(vec1dPos(i))
		}
	})
	seen("lora_up", n*r, func(mark func(int)) {
		for i := 0; i < n; i++ {
			for q := 0; q < r; q++ {
				mark(loraPos((i>>4)*(r>>4)+(q>>4), i&15, q&15))
			}
		}
	})
	for i := 0; i < 3*128; i++ {
		if vec1dInverse(vec1dPos(i)) != i {
			t.Fatalf("vec1dInverse(vec1dPos(%d)) = %d", i, vec1dInverse(vec1dPos(i)))
		}
	}
}

// TestPackedErrors checks that malformed tensors are refused with a message
// naming the tensor.
func TestPackedErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 3))
	l := randLayer(rng, layerCases[0])
	_, ts := pack(t, l)
	get := func(drop string, edit func(dtype string, shape []int64, data []byte) (string, []int64, []byte)) Getter {
		return func(suffix string) (string, []int64, []byte, bool) {
			if suffix == drop {
				return "", nil, nil, false
			}
			for _, x := range ts {
				if x.Suffix == suffix {
					if edit != nil && suffix == "lora_up" {
						dt, sh, d := edit(x.DType, x.Shape, x.Data)
						return dt, sh, d, true
					}
					return x.DType, x.Shape, x.Data, true
				}
			}
			return "", nil, nil, false
		}
	}
	for _, c := range []struct {
		name string
		get  Getter
		want string
	}{
		{"no qweight", get("qweight", nil), "qweight"},
		{"no smooth", get("smooth", nil), "smooth"},
		{"no lora_up", get("lora_up", nil), "lora_down and lora_up"},
		{"bad up shape", get("", func(dt string, sh []int64, d []byte) (string, []int64, []byte) {
			return dt, []int64{sh[0], sh[1] + 16}, d
		}), "lora_up"},
		{"bad up dtype", get("", func(dt string, sh []int64, d []byte) (string, []int64, []byte) {
			return "F32", sh, d
		}), "lora_up"},
	} {
		_, err := PackedFromTensors(c.get, l.N, l.K, false)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %q", c.name, err, c.want)
		}
	}
	// A missing bias is zeros; wcscales of ones are accepted, others refused.
	noBias, err := PackedFromTensors(get("bias", nil), l.N, l.K, false)
	if err != nil || slices.ContainsFunc(noBias.Bias, func(b byte) bool { return b != 0 }) {
		t.Fatalf("no bias: %v", err)
	}
	wc := func(v float32) Getter {
		base := get("", nil)
		return func(s string) (string, []int64, []byte, bool) {
			if s == "wcscales" {
				vals := make([]float32, l.N)
				for i := range vals {
					vals[i] = 1
				}
				vals[7] = v
				return "BF16", []int64{int64(l.N)}, quant.BF16.Encode(vals), true
			}
			return base(s)
		}
	}
	if _, err := PackedFromTensors(wc(1), l.N, l.K, false); err != nil {
		t.Errorf("wcscales of ones: %v", err)
	}
	if _, err := PackedFromTensors(wc(2), l.N, l.K, false); err == nil || !strings.Contains(err.Error(), "wcscales") {
		t.Errorf("wcscales with a 2: error %v", err)
	}
	p, _ := pack(t, l)
	p.Up = p.Up[:len(p.Up)-2]
	if err := p.Validate(); err == nil || !strings.Contains(err.Error(), "lora_up") {
		t.Errorf("short lora_up: Validate = %v", err)
	}
}

// TestLaunchShapes checks the activation split and the GEMM tile choice.
func TestLaunchShapes(t *testing.T) {
	for _, c := range []struct{ mpad, kpad, splits, ktpb int }{
		{4096, 3072, 3, 16}, {256, 3072, 12, 4}, {256, 15360, 30, 8}, {64, 128, 1, 4}, {4096, 128, 1, 4},
	} {
		s, k := actSplits(c.mpad, c.kpad, 132)
		if s != c.splits || k != c.ktpb || s*k < c.kpad/64 || (s-1)*k >= c.kpad/64 {
			t.Errorf("actSplits(%d, %d) = %d, %d; want %d, %d", c.mpad, c.kpad, s, k, c.splits, c.ktpb)
		}
	}
	for _, c := range []struct {
		mpad, npad int
		want       string
	}{{4096, 3072, "t64x128"}, {1024, 3072, "t64x128"}, {256, 3072, "t32x64"}, {256, 12288, "t64x128"},
		{128, 3072, "t32x64"}, {256, 9216, "t64x128"}, {128, 9216, "t32x128"}} {
		if got := pickTile(c.mpad, c.npad, 132); got.name != c.want {
			t.Errorf("pickTile(%d, %d) = %s, want %s", c.mpad, c.npad, got.name, c.want)
		}
	}
	// wgmma tiles (132 multiprocessors): n256x2 with two or more waves
	// that fill 85% of their slots, then n64 while its blocks fit in one
	// wave (3 per multiprocessor), n128.
	for _, c := range []struct {
		mpad, npad int
		want       string
	}{{4096, 3072, "n256x2"}, {4096, 9216, "n256x2"}, {1024, 12288, "n256x2"}, {1024, 9216, "n128"},
		{1024, 3072, "n128"}, {256, 9216, "n128"}, {256, 3072, "n64"}, {256, 12288, "n128"},
		{128, 3072, "n64"}, {384, 3072, "n64"}, {512, 3072, "n64"}, {640, 3072, "n128"}, {128, 9216, "n64"},
		{128, 12288, "n64"}, {128, 128, "n64"}, {4096, 128, "n64"}, {1024, 8320, "n128"},
		{4096, 8320, "n256x2"}, {1280, 9216, "n256x2"}, {1536, 9216, "n128"}} {
		got := pickWGTile(c.mpad, c.npad, 132)
		if got.name != c.want || c.mpad%got.m != 0 || c.npad%got.n != 0 {
			t.Errorf("pickWGTile(%d, %d) = %+v, want %s", c.mpad, c.npad, got, c.want)
		}
	}
}

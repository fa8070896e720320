package nunchaku

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/svdq/svdq/quant"
)

// randomW4Linear returns a valid W4Linear layer of group g.
func randomW4Linear(rng *rand.Rand, n, k, g int, dt quant.Float16, bias bool) *quant.WeightOnly {
	G := k / g
	w := &quant.WeightOnly{N: n, K: k, Group: g, DType: dt, Codes: make([]uint8, n*k),
		Scales: make([]float32, n*G), Zeros: make([]float32, n*G), Bias: make([]float32, n)}
	for i := range w.Codes {
		w.Codes[i] = uint8(rng.IntN(16))
	}
	for i := range w.Scales {
		w.Scales[i] = rand16(rng, dt)
		w.Zeros[i] = rand16(rng, dt)
	}
	if bias {
		for i := range w.Bias {
			w.Bias[i] = rand16(rng, dt)
		}
	}
	return w
}

// refPackW4 follows tinychat_utils.py pack_w4 operation by operation on a
// flat int32 [oc, ic] tensor: weight.view(-1, 4, 8); w[:,0] | w[:,1]<<4 |
// w[:,2]<<8 | w[:,3]<<12 (shape [oc·ic/32, 8]); .view(oc//4, 4, ic//64,
// 16).permute(0, 2, 1, 3).reshape(oc//4, ic); .to(torch.int16), stored
// little-endian.
func refPackW4(codes []uint8, oc, ic int) []byte {
	blocks := oc * ic / 32
	packed := make([]int32, blocks*8) // [blocks, 8]
	for b := 0; b < blocks; b++ {
		v := func(a, j int) int32 { return int32(codes[b*32+a*8+j]) } // view(-1, 4, 8)[b, a, j]
		for j := 0; j < 8; j++ {
			packed[b*8+j] = v(0, j) | v(1, j)<<4 | v(2, j)<<8 | v(3, j)<<12
		}
	}
	// view(oc//4, 4, ic//64, 16): element [t, u, c, e] at ((t·4+u)·(ic/64)+c)·16+e.
	// permute(0, 2, 1, 3) then reshape: out[t, c, u, e] in row-major order.
	var out []byte
	for t := 0; t < oc/4; t++ {
		for c := 0; c < ic/64; c++ {
			for u := 0; u < 4; u++ {
				for e := 0; e < 16; e++ {
					x := packed[((t*4+u)*(ic/64)+c)*16+e]
					out = binary.LittleEndian.AppendUint16(out, uint16(int16(x))) // .to(int16)
				}
			}
		}
	}
	return out
}

// refTinyChatScales follows convert_to_tinychat_w4x16y16_linear_weight: _scale =
// zeros((ceil_num_groups, oc)); _scale[:ng] = scale.view(oc, ng).t(), the
// same for the zeros (which svdq already holds negated: scaled_zeros).
func refTinyChatScales(v []float32, oc, ng, rows int, dt quant.Float16) []byte {
	out := make([]float32, rows*oc)
	for g := 0; g < ng; g++ {
		for o := 0; o < oc; o++ {
			out[g*oc+o] = v[o*ng+g]
		}
	}
	return dt.Encode(out)
}

// TestW4LinearHand pins the layout on hand-computed bytes: N = 8, K = 128,
// group 128 (G' = 8 rows, one of them used), three codes set.
//
//   - row 2, col 25 = 7: t = 0, u = 2; block 0, a = 3, j = 1: word 1 of the
//     row, chunk 0, e = 1: int16 index ((0·2+0)·4+2)·16+1 = 33, bits 12..15:
//     byte 67 = 0x70.
//   - row 5, col 70 = 10: t = 1, u = 1; block 2, a = 0, j = 6: word 22,
//     chunk 1, e = 6: index ((1·2+1)·4+1)·16+6 = 214, bits 0..3: byte 428 = 0x0A.
//   - row 7, col 127 = 15: t = 1, u = 3; block 3, a = 3, j = 7: word 31,
//     chunk 1, e = 15: index ((1·2+1)·4+3)·16+15 = 255: byte 511 = 0xF0.
func TestW4LinearHand(t *testing.T) {
	const n, k = 8, 128
	w := &quant.WeightOnly{N: n, K: k, Group: 128, DType: quant.BF16, Codes: make([]uint8, n*k),
		Scales: make([]float32, n), Zeros: make([]float32, n), Bias: make([]float32, n)}
	w.Codes[2*k+25], w.Codes[5*k+70], w.Codes[7*k+127] = 7, 10, 15
	for r := range n {
		w.Scales[r] = float32(r + 1) // bf16 1.0 = 0x3F80, 2.0 = 0x4000, ...
		w.Zeros[r] = -float32(r)     // −0 for row 0: bf16 0x8000
	}
	ts, err := PackW4Linear(w, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 3 {
		t.Fatalf("%d tensors, want qweight, scales, scaled_zeros (no bias)", len(ts))
	}
	q := tensorBySuffix(t, ts, "qweight")
	if q.DType != "I16" || !sameShape(q.Shape, []int{2, 128}) || len(q.Data) != 512 {
		t.Fatalf("qweight %s %v, %d bytes", q.DType, q.Shape, len(q.Data))
	}
	want := make([]byte, 512)
	want[67], want[428], want[511] = 0x70, 0x0A, 0xF0
	if string(q.Data) != string(want) {
		t.Errorf("qweight differs from the hand-computed bytes at %d", firstDiff(q.Data, want))
	}
	sc := tensorBySuffix(t, ts, "scales")
	if sc.DType != "BF16" || !sameShape(sc.Shape, []int{8, 8}) {
		t.Fatalf("scales %s %v", sc.DType, sc.Shape)
	}
	wantSc := make([]byte, 2*8*8)
	copy(wantSc, []byte{0x80, 0x3F, 0x00, 0x40, 0x40, 0x40, 0x80, 0x40, 0xA0, 0x40, 0xC0, 0x40, 0xE0, 0x40, 0x00, 0x41})
	if string(sc.Data) != string(wantSc) {
		t.Errorf("scales % x", sc.Data[:16])
	}
	z := tensorBySuffix(t, ts, "scaled_zeros")
	if z.Data[0] != 0x00 || z.Data[1] != 0x80 || z.Data[2] != 0x80 || z.Data[3] != 0xBF || !allZeroBytes(z.Data[16:]) {
		t.Errorf("scaled_zeros % x", z.Data[:16])
	}
}

func allZeroBytes(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// TestW4LinearMatchesSource: qweight, scales and scaled_zeros equal the
// bytes pack_w4 and convert_to_tinychat_w4x16y16_linear_weight produce
// (refPackW4, refTinyChatScales), bias as stored; the qweight bytes equal
// PackW4A16's for a one-chunk layer (the same pack_w4, viewed as I32); and
// UnpackW4Linear gives the layer back exactly.
func TestW4LinearMatchesSource(t *testing.T) {
	rng := rand.New(rand.NewPCG(31, 32))
	for _, c := range []struct{ n, k, g, rows int }{
		{8, 128, 128, 8},    // G = 1
		{24, 384, 128, 8},   // G = 3
		{16, 1152, 128, 16}, // G = 9 → 16 rows
		{32, 4096, 128, 32}, // T5-XXL attention width: 32 groups, no padding
		{8, 10240, 128, 80}, // T5-XXL wo: 80 groups
		{16, 256, 64, 16},   // group 64: a multiple of 16 rows
		{8, 256, 32, 32},    // group 32: of 32 rows
		{8, 512, 256, 8},    // group 256
	} {
		for _, dt := range dtypes {
			for _, bias := range []bool{false, true} {
				name := fmt.Sprintf("%dx%d/g%d/%v/bias=%v", c.n, c.k, c.g, dt, bias)
				w := randomW4Linear(rng, c.n, c.k, c.g, dt, bias)
				ts, err := PackW4Linear(w, bias)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				G := c.k / c.g
				want := map[string][]byte{
					"qweight":      refPackW4(w.Codes, c.n, c.k),
					"scales":       refTinyChatScales(w.Scales, c.n, G, c.rows, dt),
					"scaled_zeros": refTinyChatScales(w.Zeros, c.n, G, c.rows, dt),
				}
				shapes := map[string][]int{"qweight": {c.n / 4, c.k}, "scales": {c.rows, c.n}, "scaled_zeros": {c.rows, c.n}}
				if bias {
					want["bias"], shapes["bias"] = dt.Encode(w.Bias), []int{c.n}
				}
				if len(ts) != len(want) {
					t.Fatalf("%s: %d tensors, want %d", name, len(ts), len(want))
				}
				for _, x := range ts {
					wantDT := dt.String()
					if x.Suffix == "qweight" {
						wantDT = "I16"
					}
					if x.DType != wantDT || !sameShape(x.Shape, shapes[x.Suffix]) {
						t.Errorf("%s: %s is %s %v, want %s %v", name, x.Suffix, x.DType, x.Shape, wantDT, shapes[x.Suffix])
					}
					if string(x.Data) != string(want[x.Suffix]) {
						t.Errorf("%s: %s bytes differ from the source's (first diff at %d)", name, x.Suffix, firstDiff(x.Data, want[x.Suffix]))
					}
				}
				if c.k%64 == 0 {
					w64 := &quant.WeightOnly{N: c.n, K: c.k, DType: dt, Codes: w.Codes, Scales: make([]float32, c.n*c.k/64),
						Zeros: make([]float32, c.n*c.k/64), Bias: make([]float32, c.n)}
					a, err := PackW4A16(w64, 1)
					if err != nil {
						t.Fatal(err)
					}
					if string(tensorBySuffix(t, a, "qweight").Data) != string(want["qweight"]) {
						t.Errorf("%s: PackW4A16's qweight bytes differ from pack_w4's", name)
					}
				}
				got, err := UnpackW4Linear(MapGetter(ts), W4LinearOptions{Name: name, Group: c.g, N: c.n, K: c.k})
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if got.Group != c.g || got.DType != dt || !equalWeightOnly(got, w) {
					t.Errorf("%s: round trip differs", name)
				}
			}
		}
	}
}

func equalWeightOnly(a, b *quant.WeightOnly) bool {
	if a.N != b.N || a.K != b.K || len(a.Codes) != len(b.Codes) || len(a.Scales) != len(b.Scales) || len(a.Bias) != len(b.Bias) {
		return false
	}
	for i := range a.Codes {
		if a.Codes[i] != b.Codes[i] {
			return false
		}
	}
	for i := range a.Scales {
		if a.Scales[i] != b.Scales[i] || a.Zeros[i] != b.Zeros[i] {
			return false
		}
	}
	for i := range a.Bias {
		if a.Bias[i] != b.Bias[i] {
			return false
		}
	}
	return true
}

// TestCeilNumGroups: tinychat_utils.py ceil_num_groups by hand.
func TestCeilNumGroups(t *testing.T) {
	for _, c := range []struct{ k, g, want int }{
		{4096, 128, 32}, {10240, 128, 80}, {128, 128, 8}, {1152, 128, 16}, {3072, 128, 24},
		{4096, 64, 64}, {1088, 64, 32}, {128, 64, 16}, {256, 32, 32}, {512, 256, 8}, {4096, 4096, 8},
	} {
		if got, err := W4LinearScaleRows(c.k, c.g); err != nil || got != c.want {
			t.Errorf("ceil_num_groups(%d, %d) = %d, %v; want %d", c.k, c.g, got, err, c.want)
		}
	}
	for _, c := range []struct{ k, g int }{{4096, 96}, {4096, 16}, {192, 128}, {128, 0}} {
		if _, err := W4LinearScaleRows(c.k, c.g); err == nil {
			t.Errorf("ceil_num_groups(%d, %d) accepted", c.k, c.g)
		}
	}
}

func TestW4LinearErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	good := func() *quant.WeightOnly { return randomW4Linear(rng, 16, 256, 128, quant.BF16, false) }
	for name, f := range map[string]func(w *quant.WeightOnly) (bool, string){
		"k not a multiple of the group": func(w *quant.WeightOnly) (bool, string) {
			*w = *randomW4Linear(rng, 16, 128, 64, quant.BF16, false)
			w.K, w.Group = 192, 128
			w.Codes = make([]uint8, 16*192)
			return false, "multiple of the group"
		},
		"n not a multiple of 8": func(w *quant.WeightOnly) (bool, string) {
			*w = *randomW4Linear(rng, 12, 256, 128, quant.BF16, false)
			return false, "multiple of 8"
		},
		"code 16":              func(w *quant.WeightOnly) (bool, string) { w.Codes[300] = 16; return false, "> 15" },
		"scale not bf16":       func(w *quant.WeightOnly) (bool, string) { w.Scales[3] = 1.0001; return false, "scales[3]" },
		"bias without module":  func(w *quant.WeightOnly) (bool, string) { w.Bias[2] = 1; return false, "bias[2]" },
		"short zeros":          func(w *quant.WeightOnly) (bool, string) { w.Zeros = w.Zeros[1:]; return false, "zeros has" },
		"unsupported group 96": func(w *quant.WeightOnly) (bool, string) { w.Group = 96; return false, "group" },
	} {
		w := good()
		bias, msg := f(w)
		if _, err := PackW4Linear(w, bias); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v (want %q)", name, err, msg)
		}
	}

	// Unpack refuses what the loader would not load or what Pack never
	// writes.
	w := good()
	ts, err := PackW4Linear(w, false)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(suffix string, f func(*Tensor)) []Tensor {
		out := make([]Tensor, len(ts))
		for i, x := range ts {
			x.Data = append([]byte(nil), x.Data...)
			if x.Suffix == suffix {
				f(&x)
			}
			out[i] = x
		}
		return out
	}
	for name, c := range map[string]struct {
		ts  []Tensor
		msg string
	}{
		"K/2 columns":       {edit("qweight", func(x *Tensor) { x.Shape = shape64(4, 128) }), "bytes"},
		"qweight as I32":    {edit("qweight", func(x *Tensor) { x.DType = "I32" }), "dtype I32"},
		"scale rows 2":      {edit("scales", func(x *Tensor) { x.Shape = shape64(2, 16); x.Data = x.Data[:64] }), "shape"},
		"padding row":       {edit("scaled_zeros", func(x *Tensor) { x.Data[2*16*5] = 1 }), "padding row 5"},
		"no scaled_zeros":   {edit("scaled_zeros", func(x *Tensor) { x.Suffix = "wzeros" }), "no scaled_zeros"},
		"scales F32":        {edit("scales", func(x *Tensor) { x.DType = "F32" }), "dtype F32"},
		"zeros other dtype": {edit("scaled_zeros", func(x *Tensor) { x.DType = "F16" }), "dtype F16"},
	} {
		if _, err := UnpackW4Linear(MapGetter(c.ts), W4LinearOptions{Name: name}); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v (want %q)", name, err, c.msg)
		}
	}
	if _, err := UnpackW4Linear(MapGetter(ts), W4LinearOptions{Name: "n", N: 8}); err == nil {
		t.Error("N mismatch accepted")
	}
	got, err := UnpackW4Linear(MapGetter(ts), W4LinearOptions{Name: "default group"})
	if err != nil || got.Group != 128 || !equalWeightOnly(got, w) {
		t.Errorf("group 0 (W4LinearGroup): %v", err)
	}
}

// TestW4LinearLayers: a W4Linear's tensors group as one KindW4A16G128
// layer with its sizes and dtype; its hash covers scales and scaled_zeros;
// its metadata entry validates only with group 128.
func TestW4LinearLayers(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	w := randomW4Linear(rng, 16, 256, 128, quant.F16, false)
	ts, err := PackW4Linear(w, false)
	if err != nil {
		t.Fatal(err)
	}
	const name = "encoder.block.0.layer.1.DenseReluDense.wo"
	infos := []TensorInfo{{Name: "encoder.block.0.layer.1.layer_norm.weight", DType: "F16", Shape: shape64(16)},
		{Name: name + ".weight", DType: "F16", Shape: shape64(16, 256)}} // a 16-bit twin is not part of the layer
	for _, x := range ts {
		infos = append(infos, TensorInfo{Name: name + "." + x.Suffix, DType: x.DType, Shape: x.Shape})
	}
	ds := Describe(infos)
	if len(ds) != 1 || ds[0].Name != name || ds[0].Kind != KindW4A16G128 || ds[0].N != 16 || ds[0].K != 256 ||
		ds[0].DType != "F16" || ds[0].Precision != "int4" || strings.Join(ds[0].Suffixes, ",") != "qweight,scaled_zeros,scales" {
		t.Fatalf("Describe = %+v", ds)
	}
	if want := int64(16*256/2 + 2*2*8*16); ds[0].Bytes != want {
		t.Errorf("bytes %d, want %d", ds[0].Bytes, want)
	}
	h := HashTensors(ts)
	for _, s := range []string{"scales", "scaled_zeros", "qweight"} {
		mod := make([]Tensor, len(ts))
		copy(mod, ts)
		for i := range mod {
			if mod[i].Suffix == s {
				mod[i].Data = append([]byte(nil), mod[i].Data...)
				mod[i].Data[0] ^= 1
			}
		}
		if HashTensors(mod) == h {
			t.Errorf("the hash does not cover %s", s)
		}
	}
	src := []SourceMeta{{Tensor: name + ".weight", Rows: Range{0, 16}, SrcRows: Range{0, 16}, SrcCols: Range{0, 256}}}
	lm := W4A16G128Meta(name, w, src)
	m := &Meta{Version: MetaVersion, Tool: "t", Family: "t5-xxl", Precision: "int4", Layers: []LayerMeta{lm}}
	s, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseMeta(s)
	if err != nil || back.Layers[0].Kind != KindW4A16G128 || back.Layers[0].Group != 128 || !back.Layers[0].WeightOnly() {
		t.Fatalf("round trip: %v %+v", err, back)
	}
	if o := back.Layers[0].W4LinearOptions("f"); o.Group != 128 || o.N != 16 || o.K != 256 {
		t.Errorf("options %+v", o)
	}
	for what, f := range map[string]func(*LayerMeta){
		"group 64":   func(l *LayerMeta) { l.Group = 64 },
		"chunks":     func(l *LayerMeta) { l.Chunks = 1 },
		"rank":       func(l *LayerMeta) { l.R = 16 },
		"nvfp4":      func(l *LayerMeta) { l.Precision = "nvfp4" },
		"k 192":      func(l *LayerMeta) { l.K = 192; l.Sources[0].SrcCols = Range{0, 192} },
		"n 12":       func(l *LayerMeta) { l.N = 12; l.Sources[0].Rows, l.Sources[0].SrcRows = Range{0, 12}, Range{0, 12} },
		"smoothing":  func(l *LayerMeta) { l.Smooth = &Smoothing{} },
		"other kind": func(l *LayerMeta) { l.Kind = "w4a16g64" },
	} {
		bad := lm
		bad.Sources = append([]SourceMeta(nil), lm.Sources...)
		f(&bad)
		m.Layers = []LayerMeta{bad}
		if err := m.Validate(); err == nil {
			t.Errorf("%s: validates", what)
		}
	}
}

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

func TestW4A4RoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, lc := range layerCases {
		for _, p := range precisions {
			for _, dt := range dtypes {
				t.Run(fmt.Sprintf("%s/%v/%v", lc.name, p, dt), func(t *testing.T) {
					l := randomLayer(rng, lc.n, lc.k, lc.r, p, dt)
					ts, err := PackW4A4(l)
					if err != nil {
						t.Fatal(err)
					}
					got, err := UnpackW4A4(MapGetter(ts), W4A4Options{Name: "t", N: l.N, K: l.K, R: l.R, Precision: p, Unsigned: l.Unsigned})
					if err != nil {
						t.Fatal(err)
					}
					requireSameLayer(t, l, got)
					again, err := PackW4A4(got)
					if err != nil {
						t.Fatal(err)
					}
					if !sameTensors(ts, again) {
						t.Fatal("Pack(Unpack(Pack(l))) differs from Pack(l)")
					}
					// Without logical sizes the padded layer comes back;
					// packing it gives the same bytes again.
					pad, err := UnpackW4A4(MapGetter(ts), W4A4Options{Unsigned: l.Unsigned})
					if err != nil {
						t.Fatal(err)
					}
					if pad.N != ceilTo(l.N, 128) || pad.K != ceilTo(l.K, 128) || pad.R != ceilTo(l.R, 16) {
						t.Fatalf("padded unpack has N=%d K=%d R=%d", pad.N, pad.K, pad.R)
					}
					if again, err = PackW4A4(pad); err != nil || !sameTensors(ts, again) {
						t.Fatalf("Pack(Unpack padded) differs (err %v)", err)
					}
				})
			}
		}
	}
}

func TestW4A4ShapesAndDTypes(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	type spec struct {
		dtype string
		shape []int
	}
	for _, p := range precisions {
		for _, dt := range dtypes {
			l := randomLayer(rng, 200, 300, 21, p, dt) // Np 256, Kp 384, Rp 32
			ts, err := PackW4A4(l)
			if err != nil {
				t.Fatal(err)
			}
			m := dt.String()
			want := []struct {
				suffix string
				spec
			}{
				{"qweight", spec{"I8", []int{256, 192}}},
				{"wscales", spec{m, []int{6, 256}}},
				{"bias", spec{m, []int{256}}},
				{"smooth", spec{m, []int{384}}},
				{"smooth_orig", spec{m, []int{384}}},
				{"lora_down", spec{m, []int{384, 32}}},
				{"lora_up", spec{m, []int{256, 32}}},
			}
			if p == quant.NVFP4 {
				want[1].spec = spec{"F8_E4M3", []int{24, 256}}
				want = append(want[:2], append([]struct {
					suffix string
					spec
				}{{"wtscale", spec{"F32", []int{1}}}}, want[2:]...)...)
			}
			if len(ts) != len(want) {
				t.Fatalf("%v %v: %d tensors, want %d", p, dt, len(ts), len(want))
			}
			for i, w := range want {
				x := ts[i]
				if x.Suffix != w.suffix || x.DType != w.dtype || !sameShape(x.Shape, w.shape) {
					t.Errorf("%v %v tensor %d: %s %s %v, want %s %s %v", p, dt, i, x.Suffix, x.DType, x.Shape, w.suffix, w.dtype, w.shape)
				}
				n := dtypeSize(x.DType)
				for _, d := range x.Shape {
					n *= int(d)
				}
				if len(x.Data) != n {
					t.Errorf("%s: %d bytes, want %d", x.Suffix, len(x.Data), n)
				}
			}
			so, s := tensorBySuffix(t, ts, "smooth_orig"), tensorBySuffix(t, ts, "smooth")
			if string(so.Data) != string(s.Data) {
				t.Error("smooth_orig differs from smooth")
			}
		}
	}
}

// TestW4A4PaddingValues reads the padding of each tensor back through the
// index maps: codes 0, scales 1, bias 0, smooth 1, low-rank 0.
func TestW4A4PaddingValues(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for _, p := range precisions {
		l := randomLayer(rng, 130, 150, 5, p, quant.BF16)
		ts, err := PackW4A4(l)
		if err != nil {
			t.Fatal(err)
		}
		pad, err := UnpackW4A4(MapGetter(ts), W4A4Options{})
		if err != nil {
			t.Fatal(err)
		}
		for n := 0; n < pad.N; n++ {
			for k := 0; k < pad.K; k++ {
				if (n >= l.N || k >= l.K) && pad.Codes[n*pad.K+k] != 0 {
					t.Fatalf("%v: padded code (%d,%d) = %d", p, n, k, pad.Codes[n*pad.K+k])
				}
			}
			G, lg := pad.Groups(), l.Groups()
			for g := 0; g < G; g++ {
				if (n >= l.N || g >= lg) && pad.Scales[n*G+g] != 1 {
					t.Fatalf("%v: padded scale (%d,%d) = %g, want 1", p, n, g, pad.Scales[n*G+g])
				}
			}
			if n >= l.N && pad.Bias[n] != 0 {
				t.Fatalf("padded bias[%d] = %g, want 0", n, pad.Bias[n])
			}
			for r := 0; r < pad.R; r++ {
				if (n >= l.N || r >= l.R) && pad.Up[n*pad.R+r] != 0 {
					t.Fatalf("padded up (%d,%d) = %g", n, r, pad.Up[n*pad.R+r])
				}
			}
		}
		for k := l.K; k < pad.K; k++ {
			if pad.Smooth[k] != 1 {
				t.Fatalf("padded smooth[%d] = %g, want 1", k, pad.Smooth[k])
			}
		}
		for r := 0; r < pad.R; r++ {
			for k := 0; k < pad.K; k++ {
				if (r >= l.R || k >= l.K) && pad.Down[r*pad.K+k] != 0 {
					t.Fatalf("padded down (%d,%d) = %g", r, k, pad.Down[r*pad.K+k])
				}
			}
		}
	}
}

func TestPackW4A4Rejects(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 10))
	cases := []struct {
		name   string
		p      quant.Precision
		mutate func(l *quant.Layer)
		want   string
	}{
		{"short codes", quant.INT4, func(l *quant.Layer) { l.Codes = l.Codes[1:] }, "codes has"},
		{"int4 code 8", quant.INT4, func(l *quant.Layer) { l.Codes[5] = 8 }, "codes[5]"},
		{"nvfp4 code -1", quant.NVFP4, func(l *quant.Layer) { l.Codes[3] = -1 }, "codes[3]"},
		{"bias not bf16", quant.INT4, func(l *quant.Layer) { l.Bias[2] = 0.1 }, "bias[2]"},
		{"smooth NaN", quant.INT4, func(l *quant.Layer) { l.Smooth[0] = float32(math.NaN()) }, "smooth[0]"},
		{"int4 scale not bf16", quant.INT4, func(l *quant.Layer) { l.Scales[1] = 1.001 }, "scales[1]"},
		{"nvfp4 scale not e4m3", quant.NVFP4, func(l *quant.Layer) { l.Scales[4] = 1.1 }, "scales[4]"},
		{"int4 tensor scale", quant.INT4, func(l *quant.Layer) { l.TensorScale = 2 }, "tensor scale"},
		{"nvfp4 unsigned", quant.NVFP4, func(l *quant.Layer) { l.Unsigned = true }, "INT4 only"},
		{"nvfp4 inf tensor scale", quant.NVFP4, func(l *quant.Layer) { l.TensorScale = float32(math.Inf(1)) }, "not finite"},
	}
	for _, c := range cases {
		l := randomLayer(rng, 20, 40, 3, c.p, quant.BF16)
		l.Unsigned = false
		c.mutate(l)
		_, err := PackW4A4(l)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// edit returns a getter over ts with one tensor replaced (nil Data with
// empty dtype: removed) or renamed.
func edit(ts []Tensor, suffix string, f func(*Tensor)) Getter {
	var out []Tensor
	for _, x := range ts {
		if x.Suffix == suffix {
			x.Shape = append([]int64(nil), x.Shape...)
			x.Data = append([]byte(nil), x.Data...)
			f(&x)
			if x.Suffix == "" {
				continue
			}
		}
		out = append(out, x)
	}
	return MapGetter(out)
}

func TestUnpackW4A4Errors(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	int4, _ := PackW4A4(randomLayer(rng, 200, 300, 21, quant.INT4, quant.BF16))
	fp4, _ := PackW4A4(randomLayer(rng, 200, 300, 21, quant.NVFP4, quant.F16))
	opts := W4A4Options{Name: "f.safetensors: blk.qkv", N: 200, K: 300, R: 21}
	cases := []struct {
		name string
		ts   []Tensor
		get  func(ts []Tensor) Getter
		opts W4A4Options
		want string
	}{
		{"no qweight", int4, func(ts []Tensor) Getter { return edit(ts, "qweight", func(x *Tensor) { x.Suffix = "" }) }, opts, "no qweight"},
		{"qweight dtype", int4, func(ts []Tensor) Getter { return edit(ts, "qweight", func(x *Tensor) { x.DType = "U8" }) }, opts, "qweight: dtype U8"},
		{"qweight shape", int4, func(ts []Tensor) Getter {
			return edit(ts, "qweight", func(x *Tensor) { x.Shape = []int64{250, 192} })
		}, opts, "qweight: shape [250 192]"},
		{"qweight bytes", int4, func(ts []Tensor) Getter { return edit(ts, "qweight", func(x *Tensor) { x.Data = x.Data[1:] }) }, opts, "bytes"},
		{"logical N", int4, MapGetter, W4A4Options{Name: "x", N: 100, K: 300}, "logical N = 100"},
		{"logical R", int4, MapGetter, W4A4Options{Name: "x", R: 40}, "logical R = 40"},
		{"wscales shape", int4, func(ts []Tensor) Getter {
			return edit(ts, "wscales", func(x *Tensor) { x.Shape = []int64{256, 6} })
		}, opts, "wscales: shape [256 6]"},
		{"smooth dtype", int4, func(ts []Tensor) Getter { return edit(ts, "smooth", func(x *Tensor) { x.DType = "F32" }) }, opts, "smooth: dtype F32"},
		{"bias dtype mismatch", int4, func(ts []Tensor) Getter { return edit(ts, "bias", func(x *Tensor) { x.DType = "F16" }) }, opts, "bias: dtype F16, want BF16"},
		{"lora_up missing", int4, func(ts []Tensor) Getter { return edit(ts, "lora_up", func(x *Tensor) { x.Suffix = "" }) }, opts, "lora_up present = false"},
		{"lora_down rank 20", int4, func(ts []Tensor) Getter {
			return edit(ts, "lora_down", func(x *Tensor) { x.Shape = []int64{384, 20} })
		}, opts, "R a multiple of 16"},
		{"precision mismatch", int4, MapGetter, W4A4Options{Name: "x", Precision: quant.NVFP4}, "means int4"},
		{"shifted nvfp4", fp4, MapGetter, W4A4Options{Name: "x", Unsigned: true}, "INT4 only"},
		{"wtscale shape", fp4, func(ts []Tensor) Getter {
			return edit(ts, "wtscale", func(x *Tensor) { x.Shape = []int64{2} })
		}, opts, "wtscale: shape [2]"},
		{"wtscale dtype", fp4, func(ts []Tensor) Getter { return edit(ts, "wtscale", func(x *Tensor) { x.DType = "I32" }) }, opts, "wtscale: dtype I32"},
		{"wcscales not one", fp4, func(ts []Tensor) Getter {
			w := Tensor{Suffix: "wcscales", DType: "F16", Shape: []int64{256}, Data: quant.F16.Encode(make([]float32, 256))}
			return MapGetter(append(append([]Tensor(nil), ts...), w))
		}, opts, "wcscales = 0: a uniform per-channel scale must be a power of two"},
	}
	for _, c := range cases {
		_, err := UnpackW4A4(c.get(c.ts), c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}

// TestUnpackW4A4Variants accepts what other writers produce: the Python
// tensor names, a BF16 scalar wtscale (deepcompressor), an absent wtscale
// (nunchaku defaults to 1), all-ones wcscales, an absent bias (zeros) and
// an absent low-rank branch (rank 0).
func TestUnpackW4A4Variants(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 14))
	l := randomLayer(rng, 200, 300, 21, quant.NVFP4, quant.BF16)
	l.TensorScale = 0.375 // exact in BF16
	ts, err := PackW4A4(l)
	if err != nil {
		t.Fatal(err)
	}
	opts := W4A4Options{N: l.N, K: l.K, R: l.R}

	renamed := make([]Tensor, len(ts))
	for i, x := range ts {
		if a, ok := aliases[x.Suffix]; ok {
			x.Suffix = a
		}
		renamed[i] = x
	}
	got, err := UnpackW4A4(MapGetter(renamed), opts)
	if err != nil {
		t.Fatal(err)
	}
	requireSameLayer(t, l, got)

	bf := quant.BF16.Encode([]float32{0.375})
	got, err = UnpackW4A4(edit(ts, "wtscale", func(x *Tensor) { x.DType, x.Shape, x.Data = "BF16", nil, bf }), opts)
	if err != nil || got.TensorScale != 0.375 {
		t.Fatalf("BF16 scalar wtscale: %v, %v", err, got)
	}
	got, err = UnpackW4A4(edit(ts, "wtscale", func(x *Tensor) { x.Suffix = "" }), opts)
	if err != nil || got.TensorScale != 1 {
		t.Fatalf("absent wtscale: %v, %v", err, got)
	}
	ones := make([]float32, 256)
	for i := range ones {
		ones[i] = 1
	}
	w := Tensor{Suffix: "wcscales", DType: "BF16", Shape: []int64{256}, Data: quant.BF16.Encode(ones)}
	if _, err = UnpackW4A4(MapGetter(append(append([]Tensor(nil), ts...), w)), opts); err != nil {
		t.Fatalf("all-ones wcscales: %v", err)
	}
	// SDXL's layout: no wtscale, the tensor scale (a power of two) as
	// uniform wcscales: read back as TensorScale 0.25.
	quarter := make([]float32, 256)
	for i := range quarter {
		quarter[i] = 0.25
	}
	w = Tensor{Suffix: "wcscales", DType: "BF16", Shape: []int64{256}, Data: quant.BF16.Encode(quarter)}
	noWT := edit(ts, "wtscale", func(x *Tensor) { x.Suffix = "" })
	got, err = UnpackW4A4(func(s string) (string, []int64, []byte, bool) {
		if s == "wcscales" {
			return w.DType, w.Shape, w.Data, true
		}
		return noWT(s)
	}, opts)
	if err != nil || got.TensorScale != 0.25 {
		t.Fatalf("uniform wcscales 0.25: %v, tensor scale %v", err, got.TensorScale)
	}
	quarter[7] = 0.5
	w.Data = quant.BF16.Encode(quarter)
	if _, err = UnpackW4A4(MapGetter(append(append([]Tensor(nil), ts...), w)), opts); err == nil {
		t.Fatal("per-channel wcscales accepted")
	}
	got, err = UnpackW4A4(edit(ts, "bias", func(x *Tensor) { x.Suffix = "" }), opts)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range got.Bias {
		if b != 0 {
			t.Fatalf("absent bias: bias[%d] = %g", i, b)
		}
	}
	noLR := edit(ts, "lora_down", func(x *Tensor) { x.Suffix = "" })
	got, err = UnpackW4A4(func(s string) (string, []int64, []byte, bool) {
		if s == "lora_up" {
			return "", nil, nil, false
		}
		return noLR(s)
	}, W4A4Options{N: l.N, K: l.K})
	if err != nil || got.R != 0 || len(got.Down) != 0 || len(got.Up) != 0 {
		t.Fatalf("absent low-rank branch: %v, R=%d", err, got.R)
	}
}

// TestW4A4RankZeroTensors: a rank-0 layer still writes both low-rank
// tensors, with zero columns.
func TestW4A4RankZeroTensors(t *testing.T) {
	l := randomLayer(rand.New(rand.NewPCG(15, 16)), 130, 129, 0, quant.INT4, quant.BF16)
	ts, err := PackW4A4(l)
	if err != nil {
		t.Fatal(err)
	}
	d, u := tensorBySuffix(t, ts, "lora_down"), tensorBySuffix(t, ts, "lora_up")
	if !sameShape(d.Shape, []int{256, 0}) || !sameShape(u.Shape, []int{256, 0}) || len(d.Data)+len(u.Data) != 0 {
		t.Fatalf("rank-0 low-rank tensors %v %v", d.Shape, u.Shape)
	}
}

// TestQWeightNibbleOrder pins one hand-computed position: code (n=9, k=13)
// has n = 0·128+0·16+1·8+1 (p=0, a=1, g=1) and k = 0·64+0·32+1·8+5 (b=0,
// c=1, e=5), so word index = g·16 + c·4 + a·2 + b = 22 and value 5 sits in
// byte 22·4 + 2, high nibble.
func TestQWeightNibbleOrder(t *testing.T) {
	l := &quant.Layer{Precision: quant.INT4, N: 128, K: 128, DType: quant.BF16, TensorScale: 1,
		Codes: make([]int8, 128*128), Scales: make([]float32, 128*2), Smooth: make([]float32, 128),
		Bias: make([]float32, 128)}
	l.Codes[9*128+13] = -3 // nibble 0xD
	ts, err := PackW4A4(l)
	if err != nil {
		t.Fatal(err)
	}
	q := tensorBySuffix(t, ts, "qweight").Data
	for i, b := range q {
		want := byte(0)
		if i == 22*4+2 {
			want = 0xD0
		}
		if b != want {
			t.Fatalf("byte %d = %#x, want %#x", i, b, want)
		}
	}
	if w := binary.LittleEndian.Uint32(q[22*4:]); w != 0xD<<20 {
		t.Fatalf("word 22 = %#x", w)
	}
}

func BenchmarkPackW4A4Flux(b *testing.B) { benchPackW4A4(b, 3072, 3072, 32) }

func benchPackW4A4(b *testing.B, n, k, r int) {
	l := randomLayer(rand.New(rand.NewPCG(1, 1)), n, k, r, quant.INT4, quant.BF16)
	b.SetBytes(int64(n * k / 2))
	for b.Loop() {
		if _, err := PackW4A4(l); err != nil {
			b.Fatal(err)
		}
	}
}

// TestUnpackHostileShapes: shapes whose element count wraps around int must
// be rejected before anything is allocated or indexed.
func TestUnpackHostileShapes(t *testing.T) {
	huge := int64(1) << 62
	for _, sh := range [][]int64{{huge, 64}, {128, huge}, {-128, 64}} {
		get := func(s string) (string, []int64, []byte, bool) {
			if s == "qweight" {
				return "I8", sh, make([]byte, 128*64), true
			}
			return "", nil, nil, false
		}
		if _, err := UnpackW4A4(get, W4A4Options{Name: "x"}); err == nil {
			t.Errorf("shape %v accepted", sh)
		}
		get16 := func(s string) (string, []int64, []byte, bool) {
			if s == "qweight" {
				return "I32", sh, make([]byte, 128*64), true
			}
			return "", nil, nil, false
		}
		if _, err := UnpackW4A16(get16, W4A16Options{Name: "x", Chunks: 1}); err == nil {
			t.Errorf("W4A16 shape %v accepted", sh)
		}
	}
}

// FuzzUnpackW4A4 feeds arbitrary shapes, dtypes and bytes to the unpacker:
// it must return an error or a layer that passes Validate, never panic.
func FuzzUnpackW4A4(f *testing.F) {
	f.Add(int64(128), int64(64), int64(16), uint8(0), []byte{1, 2, 3})
	f.Add(int64(256), int64(192), int64(0), uint8(5), []byte{0x38})
	f.Fuzz(func(t *testing.T, np, kh, rp int64, sel uint8, raw []byte) {
		if len(raw) == 0 {
			raw = []byte{0}
		}
		fill := func(dt string, shape ...int64) (string, []int64, []byte, bool) {
			n := int64(dtypeSize(dt))
			for _, d := range shape {
				if d < 0 || d > 1<<12 {
					return dt, shape, raw, true
				}
				n *= d
			}
			if sel&0x40 != 0 {
				n++ // off by one byte
			}
			b := make([]byte, n)
			for i := range b {
				b[i] = raw[i%len(raw)]
			}
			return dt, shape, b, true
		}
		mdt := []string{"BF16", "F16", "F32"}[int(sel)%3]
		sdt := []string{mdt, "F8_E4M3"}[int(sel>>2)%2]
		kp := 2 * kh
		get := func(s string) (string, []int64, []byte, bool) {
			switch s {
			case "qweight":
				return fill("I8", np, kh)
			case "wscales":
				g := int64(64)
				if sdt == "F8_E4M3" {
					g = 16
				}
				return fill(sdt, kp/g, np)
			case "smooth", "smooth_orig":
				return fill(mdt, kp)
			case "bias":
				return fill(mdt, np)
			case "lora_down":
				return fill(mdt, kp, rp)
			case "lora_up":
				return fill(mdt, np, rp)
			case "wtscale":
				return fill("F32", 1)
			}
			return "", nil, nil, false
		}
		l, err := UnpackW4A4(get, W4A4Options{Name: "fuzz", Unsigned: sel&0x80 != 0})
		if err == nil {
			if verr := l.Validate(); verr != nil {
				t.Fatalf("unpacked an invalid layer: %v", verr)
			}
		}
	})
}

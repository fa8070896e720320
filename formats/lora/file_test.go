package lora

import (
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// roundTo returns v as stored in dt (the value Open must read back).
func roundTo(v float32, dt safetensors.DType) float32 {
	switch dt {
	case safetensors.BF16:
		return quant.RoundBF16(v)
	case safetensors.F16:
		return quant.RoundF16(v)
	case safetensors.F8E4M3:
		return quant.E4M3ToF32(quant.F32ToE4M3Sat(v))
	case safetensors.F8E5M2:
		return quant.E5M2ToF32(quant.F32ToE5M2(v))
	}
	return v
}

// TestWriteOpen writes the same modules in every style and dtype, with
// and without alphas, and reads them back: keys, detected style, ranks,
// shapes, alphas and every factor value as stored.
func TestWriteOpen(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	mods := []Factors{
		randFactors(rng, "double_blocks.0.img_attn.qkv", 4, 384, 128, 2),
		randFactors(rng, "single_blocks.1.linear2", 8, 128, 640, 8),
	}
	styles := []struct {
		opt        WriteOptions
		style      string
		keyA, keyB string
	}{
		{WriteOptions{Style: StylePEFT}, StylePEFT, "transformer.double_blocks.0.img_attn.qkv.lora_A.weight", "transformer.double_blocks.0.img_attn.qkv.lora_B.weight"},
		{WriteOptions{Style: StylePEFT, Prefix: "base_model.model."}, StylePEFT, "base_model.model.double_blocks.0.img_attn.qkv.lora_A.weight", ""},
		{WriteOptions{Style: StyleKohya}, StyleKohya, "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"},
		{WriteOptions{Style: StyleComfyUI}, StyleComfyUI, "diffusion_model.double_blocks.0.img_attn.qkv.lora_down.weight", ""},
	}
	for _, st := range styles {
		for _, dt := range []safetensors.DType{safetensors.F32, safetensors.BF16, safetensors.F16, safetensors.F8E4M3, safetensors.F8E5M2} {
			for _, noAlpha := range []bool{false, true} {
				name := st.opt.Style + st.opt.Prefix + string(dt)
				ms := append([]Factors(nil), mods...)
				for i := range ms {
					ms[i].NoAlpha = noAlpha
				}
				opt := st.opt
				opt.DType = dt
				f := writeOpen(t, "l.safetensors", ms, opt)
				if f.Format != st.style || len(f.Modules) != 2 || len(f.Unknown) != 0 {
					t.Fatalf("%s: format %q, %d modules, unknown %v", name, f.Format, len(f.Modules), f.Unknown)
				}
				m := &f.Modules[0]
				if m.A != st.keyA || (st.keyB != "" && m.B != st.keyB) {
					t.Errorf("%s: keys %q %q", name, m.A, m.B)
				}
				if len(f.SHA256) != 64 {
					t.Errorf("%s: sha256 %q", name, f.SHA256)
				}
				for i, want := range mods {
					m := &f.Modules[i]
					if m.Rank != want.Rank || m.N != want.N || m.K != want.K || m.HasAlpha == noAlpha {
						t.Errorf("%s: module %s: rank %d [%d %d] alpha %v", name, m.Key, m.Rank, m.N, m.K, m.HasAlpha)
					}
					wantAlpha := want.Alpha
					if noAlpha {
						wantAlpha = float64(want.Rank)
					}
					if m.Alpha != wantAlpha {
						t.Errorf("%s: module %s: alpha %v, want %v", name, m.Key, m.Alpha, wantAlpha)
					}
					a, b, err := m.Factors()
					if err != nil {
						t.Fatal(err)
					}
					for j, v := range want.A {
						if a[j] != roundTo(v, dt) {
							t.Fatalf("%s: %s A[%d] = %v, want %v", name, m.Key, j, a[j], roundTo(v, dt))
						}
					}
					for j, v := range want.B {
						if b[j] != roundTo(v, dt) {
							t.Fatalf("%s: %s B[%d] = %v, want %v", name, m.Key, j, b[j], roundTo(v, dt))
						}
					}
				}
			}
		}
	}
}

// writeRaw writes tensors given as (name, dtype, shape, float values).
type rawTensor struct {
	name  string
	dt    safetensors.DType
	shape []int64
	v     []float32
}

func writeRaw(t testing.TB, ts []rawTensor) string {
	t.Helper()
	var out []safetensors.Tensor
	for _, r := range ts {
		var data []byte
		if r.dt == safetensors.I32 {
			data = make([]byte, 4*len(r.v))
		} else {
			data = encode(r.v, r.dt)
		}
		out = append(out, safetensors.Tensor{Spec: safetensors.Spec{Name: r.name, DType: r.dt, Shape: r.shape}, Data: data})
	}
	path := filepath.Join(t.TempDir(), "raw.safetensors")
	if err := safetensors.WriteFile(path, out, nil); err != nil {
		t.Fatal(err)
	}
	return path
}

func zeros(n int) []float32 { return make([]float32, n) }

// TestOpenErrors: malformed LoRAs are refused with the file and tensor
// named; unknown keys are listed, not errors.
func TestOpenErrors(t *testing.T) {
	A := func(m string, r, k int) rawTensor {
		return rawTensor{m + ".lora_A.weight", safetensors.F32, []int64{int64(r), int64(k)}, zeros(r * k)}
	}
	B := func(m string, n, r int) rawTensor {
		return rawTensor{m + ".lora_B.weight", safetensors.F32, []int64{int64(n), int64(r)}, zeros(n * r)}
	}
	cases := []struct {
		name string
		ts   []rawTensor
		want string // substring of the error
	}{
		{"no B", []rawTensor{A("m", 2, 4)}, `"m.lora_A.weight": module m has no B`},
		{"no A", []rawTensor{B("m", 4, 2)}, `"m.lora_B.weight": module m has no A`},
		{"rank", []rawTensor{A("m", 2, 4), B("m", 4, 3)}, "rank 2"},
		{"rank0", []rawTensor{A("m", 0, 4), B("m", 4, 0)}, "rank 0"},
		{"int", []rawTensor{A("m", 2, 4), {"m.lora_B.weight", safetensors.I32, []int64{4, 2}, zeros(8)}}, "not a float type"},
		{"conv3", []rawTensor{{"m.lora_A.weight", safetensors.F32, []int64{2, 4, 3, 3}, zeros(72)}, B("m", 4, 2)}, "1×1 convolution"},
		{"alpha shape", []rawTensor{A("m", 2, 4), B("m", 4, 2), {"m.alpha", safetensors.F32, []int64{2}, zeros(2)}}, "alpha shape"},
		{"mixed", []rawTensor{A("m", 2, 4), B("m", 4, 2), {"m.hada_w1_a", safetensors.F32, []int64{4, 2}, zeros(8)}}, "mixes it with LoHa"},
		{"dora shape", []rawTensor{A("m", 2, 4), B("m", 4, 2), {"m.dora_scale", safetensors.F32, []int64{3}, zeros(3)}}, "DoRA magnitude"},
		{"alpha nan", []rawTensor{A("m", 2, 4), B("m", 4, 2), {"m.alpha", safetensors.F32, []int64{}, []float32{float32(math.NaN())}}}, "not finite"},
	}
	for _, c := range cases {
		path := writeRaw(t, c.ts)
		f, err := Open(path)
		if err == nil {
			f.Close()
			t.Errorf("%s: no error", c.name)
			continue
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: error %q does not name the file and %q", c.name, err, c.want)
		}
	}

	// Unknown keys and lone alphas are listed; a NaN factor fails on read.
	nan := A("m", 2, 4)
	nan.v[5] = float32(math.Inf(1))
	path := writeRaw(t, []rawTensor{nan, B("m", 4, 2), {"y.dora_scale", safetensors.F32, []int64{4}, zeros(4)},
		{"x.alpha", safetensors.F32, []int64{}, zeros(1)}, {"m.lora_mid.weight", safetensors.F32, []int64{1}, zeros(1)}})
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if want := []string{"m.lora_mid.weight", "x.alpha", "y.dora_scale"}; strings.Join(f.Unknown, ",") != strings.Join(want, ",") {
		t.Errorf("unknown %v, want %v", f.Unknown, want)
	}
	if _, _, err := f.Modules[0].Factors(); err == nil || !strings.Contains(err.Error(), "[1, 1]") {
		t.Errorf("non-finite factor: %v", err)
	}
}

// TestOpenConv1x1: 1×1 convolution factors read as matrices.
func TestOpenConv1x1(t *testing.T) {
	path := writeRaw(t, []rawTensor{
		{"lora_unet_a_b.lora_down.weight", safetensors.F16, []int64{2, 3, 1, 1}, []float32{1, 2, 3, 4, 5, 6}},
		{"lora_unet_a_b.lora_up.weight", safetensors.F16, []int64{4, 2, 1, 1}, []float32{1, 0, 0, 1, 1, 1, 2, 2}},
		{"lora_unet_a_b.alpha", safetensors.F16, []int64{}, []float32{1}},
	})
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := f.Modules[0]
	if m.Rank != 2 || m.N != 4 || m.K != 3 || m.Alpha != 1 || m.Style != StyleKohya || m.Scale(3) != 1.5 {
		t.Errorf("module %+v", m)
	}
}

func TestParseSpec(t *testing.T) {
	cases := []struct {
		in   string
		path string
		s    float64
		err  bool
	}{
		{"a.safetensors", "a.safetensors", 1, false},
		{"a.safetensors:0.75", "a.safetensors", 0.75, false},
		{"dir/a:b.safetensors:-1.5e-1", "dir/a:b.safetensors", -0.15, false},
		{`C:\x.safetensors`, `C:\x.safetensors`, 1, false},
		{"a:", "a:", 1, false},
		{"a:1e999", "", 0, true},
		{"", "", 0, true},
	}
	for _, c := range cases {
		p, s, err := ParseSpec(c.in)
		if (err != nil) != c.err || (!c.err && (p != c.path || s != c.s)) {
			t.Errorf("%q: %q %v %v, want %q %v err=%v", c.in, p, s, err, c.path, c.s, c.err)
		}
	}
}

func TestStripPrefixes(t *testing.T) {
	for in, want := range map[string]string{
		"base_model.model.transformer.x": "x",
		"lora_unet_double_blocks_0":      "double_blocks_0",
		"model.diffusion_model.a.b":      "a.b",
		"transformer.":                   "transformer.",
		"unet.down_blocks.0":             "down_blocks.0",
	} {
		if got := StripPrefixes(in); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"a:1", "a.safetensors:0.5", `C:\x`, "::", "a:1e5", "a:-.5"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, v, err := ParseSpec(s)
		if err != nil {
			return
		}
		if p == "" || math.IsNaN(v) || math.IsInf(v, 0) {
			t.Fatalf("%q: path %q strength %v", s, p, v)
		}
		if p != s && !strings.HasPrefix(s, p+":") {
			t.Fatalf("%q: path %q is not a prefix", s, p)
		}
	})
}

// FuzzOpen: any file either fails to open with an error or gives modules
// whose factors decode (or fail) without panicking, with consistent
// shapes. It runs what Open does after hashing the file (parse), in
// memory: the safetensors header is fuzzed by formats/safetensors
// FuzzParseHeader. Inputs over 4 KiB (8 times the seeds) are skipped before
// any work: the fuzzer minimizes each new input in time quadratic in its
// length and fuzzes nothing meanwhile. Seeds are small LoRAs (rank 2,
// [3, 4]) in every style, and a LoHa, a LoKr, a DoRA and an XLabs module.
// Dense modules' ΔW is formed when it has at most 2^16 values (fuse-lora
// forms it only for modules whose shape matches a layer).
func FuzzOpen(f *testing.F) {
	rng := rand.New(rand.NewPCG(9, 9))
	dir := f.TempDir()
	for i, opt := range []WriteOptions{{Style: StylePEFT}, {Style: StyleKohya, DType: safetensors.BF16}, {Style: StyleComfyUI, DType: safetensors.F8E4M3}} {
		p := filepath.Join(dir, "seed.safetensors")
		m := randFactors(rng, "a.b", 2, 3, 4, 1)
		m.NoAlpha = i == 1
		if err := Write(p, []Factors{m}, opt); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, ts := range [][]rawTensor{
		{m32("m.hada_w1_a", 2, 1, 1, 2), m32("m.hada_w1_b", 1, 3, 1, 0, -1), m32("m.hada_w2_a", 2, 1, 3, 1), m32("m.hada_w2_b", 1, 3, 2, 1, 1), alpha32("m.alpha", 0.5)},
		{m32("m.lokr_w1", 2, 2, 1, 2, 3, 4), m32("m.lokr_w2_a", 2, 1, 1, -1), m32("m.lokr_w2_b", 1, 2, 2, 0.5)},
		{m32("m.lora_A.weight", 1, 2, 1, 0), m32("m.lora_B.weight", 2, 1, 0, 1), {"m.lora_magnitude_vector.weight", safetensors.F32, []int64{2}, []float32{6, 1}}},
		{m32("single_blocks.0.processor.qkv_lora.down.weight", 1, 2, 1, 2), m32("single_blocks.0.processor.qkv_lora.up.weight", 3, 1, 1, 2, 3)},
	} {
		b, err := os.ReadFile(writeRaw(f, ts))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<12 {
			return
		}
		const p = "fuzz.safetensors"
		r, err := safetensors.OpenBytes(p, data)
		if err != nil {
			return
		}
		lf, err := parse(r, p)
		if err != nil {
			return
		}
		defer lf.Close()
		for i := range lf.Modules {
			m := &lf.Modules[i]
			if m.Rank < 0 || (m.Rank == 0 && m.Type != TypeLoKr && m.Type != TypeFull) || m.N <= 0 || m.K <= 0 || math.IsNaN(m.Alpha) {
				t.Fatalf("module %+v", m)
			}
			if m.N*m.K > 1<<16 {
				continue
			}
			var d []float64
			switch {
			case m.Dora != "":
				d, err = m.DenseDoRA(make([]float64, m.N*m.K))
			case !m.LowRank():
				d, err = m.Dense()
			default:
				a, b, err := m.Factors()
				if err == nil && (len(a) != m.Rank*m.K || len(b) != m.N*m.Rank) {
					t.Fatalf("factors %d, %d for %+v", len(a), len(b), m)
				}
				continue
			}
			if err == nil && len(d) != m.N*m.K {
				t.Fatalf("ΔW has %d values for %+v", len(d), m)
			}
		}
	})
}

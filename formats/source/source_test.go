package source

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/gguf"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

type tensor struct {
	name  string
	dtype safetensors.DType
	shape []int64
	data  []byte
}

func writeST(t *testing.T, meta map[string]string, ts ...tensor) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "m.safetensors")
	var st []safetensors.Tensor
	for _, x := range ts {
		st = append(st, safetensors.Tensor{Spec: safetensors.Spec{Name: x.name, DType: x.dtype, Shape: x.shape}, Data: x.data})
	}
	if err := safetensors.WriteFile(p, st, meta); err != nil {
		t.Fatal(err)
	}
	return p
}

func f32(v ...float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func floats(t *testing.T, r safetensors.Reader, name string) []float32 {
	t.Helper()
	info, ok := r.Info(name)
	if !ok {
		t.Fatalf("no tensor %q", name)
	}
	b, err := r.Bytes(name)
	if err != nil {
		t.Fatal(err)
	}
	v := make([]float32, info.Elems())
	if err := quant.Decode(v, string(info.DType), b); err != nil {
		t.Fatal(err)
	}
	return v
}

// fp8codes are 8 E4M3 codes and the values they stand for (E4M3: bias 7;
// 0x38 = 1.0, 0x40 = 2, 0xb8 = −1, 0x30 = 0.5, 0x7e = 448, 0x01 = 2^-9).
var fp8codes = []byte{0x38, 0x40, 0xb8, 0x30, 0x7e, 0x01, 0x00, 0xc0}
var fp8vals = []float32{1, 2, -1, 0.5, 448, 1.0 / 512, 0, -2}

func TestScaledFP8(t *testing.T) {
	bf := quant.BF16.Encode([]float32{1, 1, 1, 1})
	p := writeST(t, nil,
		tensor{"scaled_fp8", safetensors.F8E4M3, []int64{0}, nil},
		tensor{"a.weight", safetensors.F8E4M3, []int64{2, 4}, fp8codes},
		tensor{"a.scale_weight", safetensors.F32, []int64{}, f32(0.25)},
		tensor{"a.scale_input", safetensors.F32, []int64{}, f32(1)},
		tensor{"a.bias", safetensors.BF16, []int64{2}, quant.BF16.Encode([]float32{3, 4})},
		tensor{"b.weight", safetensors.F8E4M3, []int64{2, 4}, fp8codes},
		tensor{"b.scale_weight", safetensors.F32, []int64{2}, f32(2, 3)},
		tensor{"norm.weight", safetensors.BF16, []int64{4}, bf},
	)
	in, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if got := strings.Join(in.Names(), " "); got != "a.bias a.weight b.weight norm.weight" {
		t.Fatalf("names %s", got)
	}
	// fp8 × scale: a: scalar 0.25; b: row 0 × 2, row 1 × 3.
	wantA := []float32{0.25, 0.5, -0.25, 0.125, 112, 1.0 / 2048, 0, -0.5}
	wantB := []float32{2, 4, -2, 1, 448 * 3, 3.0 / 512, 0, -6}
	for name, want := range map[string][]float32{"a.weight": wantA, "b.weight": wantB} {
		got := floats(t, in, name)
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s[%d] = %v, want %v", name, i, got[i], want[i])
			}
		}
		if s, ok := in.Dequantized(name); !ok || s != "F8_E4M3 × scale_weight" {
			t.Errorf("%s: Dequantized = %q %v", name, s, ok)
		}
	}
	if _, ok := in.Dequantized("a.bias"); ok || in.Computed("a.bias") {
		t.Error("a.bias reported as dequantized")
	}
	if len(in.Dequant) != 1 || in.Dequant[0].Tensors != 2 || in.Dequant[0].Consumed != 4 || in.Dequant[0].Scheme != "ComfyUI scaled FP8" {
		t.Errorf("dequant %+v", in.Dequant)
	}
	// Stored: 2×8 FP8 bytes, scales 4+4+8, BF16 bias 4 and norm 8.
	if in.Found["F8_E4M3"] != 3 || in.Found["F32"] != 3 || in.Found["BF16"] != 2 || in.StoredBytes != 44 {
		t.Errorf("found %v", in.Found)
	}
}

// TestScaledPrefixed: a ComfyUI-named diffusion model file (every name
// under model.diffusion_model., no other component) keeps its names; its
// marker there is recognised and consumed.
func TestScaledPrefixed(t *testing.T) {
	pre := DiffusionPrefix
	p := writeST(t, nil,
		tensor{pre + "scaled_fp8", safetensors.F8E4M3, []int64{0}, nil},
		tensor{pre + "a.weight", safetensors.F8E4M3, []int64{2, 4}, fp8codes},
		tensor{pre + "a.scale_weight", safetensors.F32, []int64{}, f32(0.5)},
	)
	in, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if got := strings.Join(in.Names(), " "); got != pre+"a.weight" {
		t.Fatalf("names %s", got)
	}
	if got := floats(t, in, pre+"a.weight"); got[4] != 224 {
		t.Errorf("a.weight %v", got)
	}
	// Without the scale the marker makes the FP8 weight an error.
	p = writeST(t, nil, tensor{pre + "scaled_fp8", safetensors.F8E4M3, []int64{0}, nil},
		tensor{pre + "a.weight", safetensors.F8E4M3, []int64{2, 4}, fp8codes})
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), pre+"a.scale_weight") {
		t.Errorf("missing scale: %v", err)
	}
}

func TestComfyQuantFP8(t *testing.T) {
	p := writeST(t, nil,
		tensor{"a.weight", safetensors.F8E5M2, []int64{1, 2}, []byte{0x3c, 0x40}}, // E5M2: 1, 2
		tensor{"a.weight_scale", safetensors.F32, []int64{}, f32(0.5)},
		tensor{"a.input_scale", safetensors.F32, []int64{}, f32(1)},
		tensor{"a.comfy_quant", safetensors.U8, []int64{int64(len(`{"format":"float8_e5m2"}`))}, []byte(`{"format":"float8_e5m2"}`)},
	)
	in, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if got := floats(t, in, "a.weight"); got[0] != 0.5 || got[1] != 1 || len(in.Names()) != 1 {
		t.Errorf("a.weight %v, names %v", got, in.Names())
	}
}

// TestScaledBroken: each broken scaled-FP8 file is refused with an error
// naming the file and both tensors.
func TestScaledBroken(t *testing.T) {
	w := tensor{"a.weight", safetensors.F8E4M3, []int64{2, 4}, fp8codes}
	marker := tensor{"scaled_fp8", safetensors.F8E4M3, []int64{0}, nil}
	cases := map[string]struct {
		ts   []tensor
		meta map[string]string
		want []string
	}{
		"scale without weight": {[]tensor{marker, {"x.scale_weight", safetensors.F32, []int64{}, f32(1)}}, nil,
			[]string{`"x.scale_weight"`, `"x.weight"`}},
		"input scale without weight": {[]tensor{marker, {"x.scale_input", safetensors.F32, []int64{}, f32(1)}}, nil,
			[]string{`"x.scale_input"`, `"x.weight"`}},
		"weight without scale": {[]tensor{marker, w}, nil, []string{`"a.weight"`, `"a.scale_weight"`}},
		"nan scale": {[]tensor{marker, w, {"a.scale_weight", safetensors.F32, []int64{}, f32(float32(math.NaN()))}}, nil,
			[]string{`"a.scale_weight"`, "non-finite"}},
		"scale shape": {[]tensor{marker, w, {"a.scale_weight", safetensors.F32, []int64{3}, f32(1, 2, 3)}}, nil,
			[]string{`"a.scale_weight"`, `"a.weight"`}},
		"weight_scale without config": {[]tensor{w, {"a.weight_scale", safetensors.F32, []int64{}, f32(1)}}, nil,
			[]string{`"a.weight_scale"`, `"a.weight"`, `"a.comfy_quant"`}},
		"nvfp4": {[]tensor{w, {"a.weight_scale", safetensors.F32, []int64{}, f32(1)}},
			map[string]string{"_quantization_metadata": `{"layers":{"a":{"format":"nvfp4"}}}`}, []string{`"a"`, "nvfp4"}},
	}
	for name, c := range cases {
		p := writeST(t, c.meta, c.ts...)
		in, err := Open(p)
		if err == nil {
			in.Close()
			t.Errorf("%s: no error", name)
			continue
		}
		for _, s := range append(c.want, p) {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q lacks %s", name, err, s)
			}
		}
	}
}

func TestAllInOne(t *testing.T) {
	bf := func(n int) []byte { return make([]byte, 2*n) }
	p := writeST(t, nil,
		tensor{"model.diffusion_model.img_in.weight", safetensors.BF16, []int64{4, 2}, bf(8)},
		tensor{"model.diffusion_model.scaled_fp8", safetensors.F8E4M3, []int64{0}, nil},
		tensor{"model.diffusion_model.x.weight", safetensors.F8E4M3, []int64{2, 4}, fp8codes},
		tensor{"model.diffusion_model.x.scale_weight", safetensors.F32, []int64{}, f32(2)},
		tensor{"vae.decoder.conv.weight", safetensors.BF16, []int64{3}, bf(3)},
		tensor{"vae.encoder.conv.weight", safetensors.BF16, []int64{5}, bf(5)},
		tensor{"text_encoders.clip_l.transformer.w", safetensors.F16, []int64{7}, bf(7)},
		tensor{"text_encoders.t5xxl.transformer.w", safetensors.F8E4M3, []int64{4}, make([]byte, 4)},
		tensor{"text_encoders.t5xxl.scaled_fp8", safetensors.F8E4M3, []int64{0}, nil},
	)
	in, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if got := strings.Join(in.Names(), " "); got != "img_in.weight x.weight" {
		t.Errorf("names %s", got)
	}
	want := []Component{{"diffusion_model", "diffusion model", "model.diffusion_model.", 4, 16 + 8 + 4},
		{"clip_l", "text encoder", "text_encoders.clip_l.", 1, 14}, {"t5xxl", "text encoder", "text_encoders.t5xxl.", 2, 4},
		{"vae", "VAE", "vae.", 2, 16}}
	if len(in.Components) != len(want) {
		t.Fatalf("components %+v", in.Components)
	}
	for i := range want {
		if in.Components[i] != want[i] {
			t.Errorf("component %d: %+v, want %+v", i, in.Components[i], want[i])
		}
	}
	if got := floats(t, in, "x.weight"); got[0] != 2 || got[4] != 896 {
		t.Errorf("x.weight %v", got)
	}
	r, c, err := in.Component("t5xxl")
	if err != nil || c.Tensors != 2 || strings.Join(r.Names(), " ") != "scaled_fp8 transformer.w" {
		t.Errorf("t5xxl: %v %+v %v", err, c, r.Names())
	}
	if _, _, err := in.Component("unet"); err == nil || !strings.Contains(err.Error(), "clip_l") {
		t.Errorf("unknown component: %v", err)
	}
}

func TestGGUF(t *testing.T) {
	x := make([]float32, 2*256)
	for i := range x {
		x[i] = float32(math.Sin(float64(i)))
	}
	var b bytes.Buffer
	if err := gguf.Write(&b, []gguf.KV{{Key: "general.architecture", Value: "flux"}}, []gguf.WTensor{
		{Name: "a.weight", Type: gguf.Q4_K, Shape: []int64{2, 256}, Data: gguf.EncodeQ4_K(x)},
		{Name: "b.weight", Type: gguf.Q8_0, Shape: []int64{2, 256}, Data: gguf.EncodeQ8_0(x)},
		{Name: "a.bias", Type: gguf.F16, Shape: []int64{2}, Data: []byte{0x00, 0x3c, 0x00, 0xc0}},
	}); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(p, b.Bytes(), 0o644)
	in, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	// Stored: 2 Q4_K blocks of 144 bytes, 16 Q8_0 blocks of 34, 2 F16 values.
	if in.Format != "gguf" || in.Found["Q4_K"] != 1 || in.Found["Q8_0"] != 1 || in.Found["F16"] != 1 || in.StoredBytes != 2*144+16*34+4 {
		t.Errorf("format %s found %v", in.Format, in.Found)
	}
	if len(in.Warnings) != 1 || !strings.Contains(in.Warnings[0], "Q4_K") {
		t.Errorf("warnings %v", in.Warnings)
	}
	info, _ := in.Info("a.bias")
	if info.DType != safetensors.F16 || floats(t, in, "a.bias")[1] != -2 {
		t.Errorf("a.bias %v", info)
	}
	if s, ok := in.Dequantized("a.weight"); !ok || s != "Q4_K" {
		t.Errorf("a.weight: %q %v", s, ok)
	}
	if _, ok := in.Dequantized("a.bias"); ok {
		t.Error("F16 bias reported dequantized")
	}
	if sz, ok := in.StoredSize("a.weight"); !ok || sz != 2*144 {
		t.Errorf("a.weight stored size %d %v, want 288", sz, ok)
	}
	a := floats(t, in, "a.weight")
	floats(t, in, "b.weight")
	var e2, n2 float64
	for i := range x {
		e2 += float64(a[i]-x[i]) * float64(a[i]-x[i])
		n2 += float64(x[i]) * float64(x[i])
	}
	errs := in.GGUFErrors()
	if len(errs) != 2 || errs[0].Type != "Q4_K" {
		t.Fatalf("errors %+v", errs)
	}
	// The estimate is within a factor 2 of the true error of Q4_K.
	if r := errs[0].RelError / math.Sqrt(e2/n2); r < 0.5 || r > 2 {
		t.Errorf("Q4_K estimated %.4f, true %.4f", errs[0].RelError, math.Sqrt(e2/n2))
	}
}

// TestGGUFPrefix: a GGUF wholly under model.diffusion_model. is read
// without the prefix, as city96's loader does.
func TestGGUFPrefix(t *testing.T) {
	var b bytes.Buffer
	gguf.Write(&b, nil, []gguf.WTensor{{Name: DiffusionPrefix + "a.weight", Type: gguf.F32, Shape: []int64{1}, Data: f32(1)}})
	p := filepath.Join(t.TempDir(), "m.gguf")
	os.WriteFile(p, b.Bytes(), 0o644)
	in, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if strings.Join(in.Names(), " ") != "a.weight" || in.Components != nil {
		t.Errorf("names %v, components %v", in.Names(), in.Components)
	}
}

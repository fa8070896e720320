package calib

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

func randStats(rng *rand.Rand, k, s int, count int64) *Stats {
	st := &Stats{K: k, S: s, Count: count, AbsMax: make([]float32, k), Samples: make([]float32, s*k)}
	for i := range st.Samples {
		v := float32(rng.NormFloat64() * math.Exp(rng.NormFloat64()))
		st.Samples[i] = v
		st.AbsMax[i%k] = max(st.AbsMax[i%k], float32(math.Abs(float64(v))))
	}
	for j := range st.AbsMax {
		st.AbsMax[j] *= 1.5 // tokens beyond the samples
	}
	return st
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 1))
	stats := map[string]*Stats{
		"transformer_blocks.0.attn.to_q":       randStats(rng, 48, 10, 1000),
		"single_transformer_blocks.0.proj_out": randStats(rng, 80, 7, 0),
		"transformer_blocks.0.ff.net.2":        randStats(rng, 16, 1, 1),
		"double_blocks.0.img_attn.qkv":         randStats(rng, 3, 5, 5),
	}
	for _, dt := range []safetensors.DType{safetensors.F32, safetensors.F16, safetensors.BF16} {
		p := filepath.Join(dir, string(dt)+".safetensors")
		if err := WriteAs(p, stats, dt); err != nil {
			t.Fatal(err)
		}
		f, err := Open(p)
		if err != nil {
			t.Fatal(err)
		}
		if got := f.Names(); len(got) != 4 || got[0] != "double_blocks.0.img_attn.qkv" {
			t.Errorf("Names %v", got)
		}
		if !f.Has("transformer_blocks.0.ff.net.2") || f.Has("transformer_blocks.0") {
			t.Errorf("Has")
		}
		for name, want := range stats {
			got, err := f.Layer(name)
			if err != nil {
				t.Fatalf("%s %s: %v", dt, name, err)
			}
			if got.K != want.K || got.S != want.S || got.Count != want.Count {
				t.Errorf("%s %s: K=%d S=%d Count=%d", dt, name, got.K, got.S, got.Count)
			}
			rounded := append([]float32(nil), want.Samples...)
			roundSamples(rounded, dt)
			for i, v := range got.Samples {
				if v != rounded[i] {
					t.Fatalf("%s %s: sample %d = %v, want %v", dt, name, i, v, rounded[i])
				}
			}
			for j, v := range got.AbsMax {
				if v != want.AbsMax[j] {
					t.Fatalf("%s %s: absmax %d = %v, want %v", dt, name, j, v, want.AbsMax[j])
				}
			}
		}
		if _, err := f.Layer("nope"); err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "nope") {
			t.Errorf("missing layer error %v", err)
		}
		f.Close()
	}
	// Deterministic bytes.
	p2 := filepath.Join(dir, "again.safetensors")
	if err := WriteAs(p2, stats, safetensors.BF16); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(filepath.Join(dir, "BF16.safetensors"))
	b, _ := os.ReadFile(p2)
	if !bytes.Equal(a, b) {
		t.Errorf("the same stats gave different bytes")
	}
	// Rounding a sample up in BF16 raises absmax, so the file validates.
	tight := &Stats{K: 1, S: 1, AbsMax: []float32{1.00390625 + 0x1p-12}, Samples: []float32{1.00390625 + 0x1p-12}}
	p3 := filepath.Join(dir, "tight.safetensors")
	if err := WriteAs(p3, map[string]*Stats{"l": tight}, safetensors.BF16); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p3)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Layer("l"); err != nil {
		t.Error(err)
	}
	// Invalid stats are refused with the layer named.
	bad := randStats(rng, 4, 2, 0)
	bad.Samples[0] = float32(math.NaN())
	if err := Write(filepath.Join(dir, "bad.safetensors"), map[string]*Stats{"bad.layer": bad}); err == nil || !strings.Contains(err.Error(), "bad.layer") {
		t.Errorf("invalid stats written: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "bad.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed write left a file")
	}
}

// rawTensor builds a safetensors tensor from values of the given dtype.
func rawTensor(name string, dt safetensors.DType, shape []int64, vals ...float64) safetensors.Tensor {
	var buf []byte
	for _, v := range vals {
		switch dt {
		case safetensors.F32:
			buf = binary.LittleEndian.AppendUint32(buf, math.Float32bits(float32(v)))
		case safetensors.F16:
			buf = binary.LittleEndian.AppendUint16(buf, f32ToF16(float32(v)))
		case safetensors.BF16:
			buf = binary.LittleEndian.AppendUint16(buf, f32ToBF16(float32(v)))
		case safetensors.I64:
			buf = binary.LittleEndian.AppendUint64(buf, uint64(int64(v)))
		case safetensors.I32:
			buf = binary.LittleEndian.AppendUint32(buf, uint32(int32(v)))
		}
	}
	return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: dt, Shape: shape}, Data: buf}
}

// countTensor is an input_count holding c exactly (rawTensor's float64
// cannot hold every int64).
func countTensor(name string, c int64) safetensors.Tensor {
	return safetensors.Tensor{Spec: safetensors.Spec{Name: name, DType: safetensors.I64, Shape: []int64{1}},
		Data: binary.LittleEndian.AppendUint64(nil, uint64(c))}
}

func TestOpenRejects(t *testing.T) {
	dir := t.TempDir()
	good := func() []safetensors.Tensor {
		return []safetensors.Tensor{
			rawTensor("l.input_absmax", safetensors.F32, []int64{2}, 1, 2),
			rawTensor("l.input_samples", safetensors.BF16, []int64{2, 2}, 0.5, -2, 1, 0),
			rawTensor("l.input_count", safetensors.I64, []int64{1}, 9),
		}
	}
	fmtMeta := map[string]string{"format": Format}
	big := make([]float64, (MaxSamples+1)*2)
	for _, tc := range []struct {
		name    string
		tensors []safetensors.Tensor
		meta    map[string]string
		tensor  string // the tensor the error must name ("" = only the file)
		msg     string
		atLayer bool // detected by Layer rather than Open
	}{
		{name: "no format", tensors: good(), meta: nil, msg: "no \"format\""},
		{name: "wrong format", tensors: good(), meta: map[string]string{"format": "svdq-calib/2"}, msg: "svdq-calib/2"},
		{name: "unknown tensor", tensors: append(good(), rawTensor("l.input_absmx", safetensors.F32, []int64{1}, 1)), tensor: "l.input_absmx", msg: "not a calibration tensor"},
		{name: "empty layer name", tensors: append(good(), rawTensor(".input_count", safetensors.I64, []int64{1}, 1)), tensor: ".input_count", msg: "not a calibration tensor"},
		{name: "missing samples", tensors: good()[:1], tensor: "l.input_samples", msg: "missing"},
		{name: "missing absmax", tensors: good()[1:], tensor: "l.input_absmax", msg: "missing"},
		{name: "absmax dtype", tensors: []safetensors.Tensor{rawTensor("l.input_absmax", safetensors.BF16, []int64{2}, 1, 2), good()[1]}, tensor: "l.input_absmax", msg: "dtype BF16"},
		{name: "samples dtype", tensors: []safetensors.Tensor{good()[0], rawTensor("l.input_samples", safetensors.I32, []int64{2, 2}, 0, 0, 0, 0)}, tensor: "l.input_samples", msg: "dtype I32"},
		{name: "K mismatch", tensors: []safetensors.Tensor{good()[0], rawTensor("l.input_samples", safetensors.F32, []int64{1, 3}, 0, 0, 0)}, tensor: "l.input_samples", msg: "[S, 2]"},
		{name: "absmax shape", tensors: []safetensors.Tensor{rawTensor("l.input_absmax", safetensors.F32, []int64{1, 2}, 1, 2), good()[1]}, tensor: "l.input_absmax", msg: "want [K]"},
		{name: "too many rows", tensors: []safetensors.Tensor{good()[0], rawTensor("l.input_samples", safetensors.BF16, []int64{MaxSamples + 1, 2}, big...)}, tensor: "l.input_samples", msg: "4097 sample rows"},
		{name: "count dtype", tensors: []safetensors.Tensor{good()[0], good()[1], rawTensor("l.input_count", safetensors.I32, []int64{1}, 9)}, tensor: "l.input_count", msg: "want I64 [1]"},
		{name: "count below S", tensors: []safetensors.Tensor{good()[0], good()[1], rawTensor("l.input_count", safetensors.I64, []int64{1}, 1)}, tensor: "l.input_count", msg: "below"},
		{name: "count negative", tensors: []safetensors.Tensor{good()[0], good()[1], countTensor("l.input_count", -5)}, tensor: "l.input_count", msg: "count -5 is negative"},
		{name: "count 2^63-1", tensors: []safetensors.Tensor{good()[0], good()[1], countTensor("l.input_count", math.MaxInt64)}, tensor: "l.input_count", msg: "exceeds the limit"},
		{name: "count MaxCount+1", tensors: []safetensors.Tensor{good()[0], good()[1], countTensor("l.input_count", MaxCount+1)}, tensor: "l.input_count", msg: "exceeds the limit"},
		{name: "NaN sample", tensors: []safetensors.Tensor{good()[0], rawTensor("l.input_samples", safetensors.F16, []int64{2, 2}, 0.5, math.NaN(), 1, 0)}, tensor: "l.input_samples", msg: "not finite", atLayer: true},
		{name: "Inf absmax", tensors: []safetensors.Tensor{rawTensor("l.input_absmax", safetensors.F32, []int64{2}, math.Inf(1), 2), good()[1]}, tensor: "l.input_absmax", msg: "finite", atLayer: true},
		{name: "sample above absmax", tensors: []safetensors.Tensor{good()[0], rawTensor("l.input_samples", safetensors.F32, []int64{1, 2}, 1.001, 0)}, tensor: "l.input_samples", msg: "exceeds input_absmax[0]", atLayer: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			meta := tc.meta
			if meta == nil && tc.name != "no format" {
				meta = fmtMeta
			}
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".safetensors")
			if err := safetensors.WriteFile(p, tc.tensors, meta); err != nil {
				t.Fatal(err)
			}
			f, err := Open(p)
			if tc.atLayer {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				defer f.Close()
				_, err = f.Layer("l")
			}
			if err == nil {
				t.Fatalf("accepted")
			}
			var ce *Error
			if !errors.As(err, &ce) || ce.File != p || ce.Tensor != tc.tensor || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("error %v, want a calib.Error naming %s, tensor %q, saying %q", err, p, tc.tensor, tc.msg)
			}
		})
	}
	if _, err := Open(filepath.Join(dir, "absent.safetensors")); err == nil {
		t.Errorf("absent file opened")
	}
}

func TestMergeFiles(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(2, 2))
	a := map[string]*Stats{"x": randStats(rng, 8, 30, 300), "only_a": randStats(rng, 4, 3, 0)}
	b := map[string]*Stats{"x": randStats(rng, 8, 30, 600), "only_b": randStats(rng, 2, 2, 2)}
	pa, pb, out := filepath.Join(dir, "a.safetensors"), filepath.Join(dir, "b.safetensors"), filepath.Join(dir, "m.safetensors")
	if err := WriteAs(pa, a, safetensors.BF16); err != nil {
		t.Fatal(err)
	}
	if err := WriteAs(pb, b, safetensors.F16); err != nil {
		t.Fatal(err)
	}
	if err := MergeFiles([]string{pa, pb}, out, 42); err != nil {
		t.Fatal(err)
	}
	f, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := f.Names(); len(got) != 3 {
		t.Fatalf("names %v", got)
	}
	x, err := f.Layer("x")
	if err != nil {
		t.Fatal(err)
	}
	if x.Count != 900 || x.S != 30 {
		t.Errorf("merged x: S=%d Count=%d", x.S, x.Count)
	}
	if _, _, dt, _ := f.Shape("x"); dt != safetensors.F32 {
		t.Errorf("mixed BF16+F16 merged as %s, want F32", dt)
	}
	if _, _, dt, _ := f.Shape("only_a"); dt != safetensors.BF16 {
		t.Errorf("single-file layer dtype %s, want BF16", dt)
	}
	oa, _ := f.Layer("only_a")
	if oa.Count != 0 || oa.S != 3 {
		t.Errorf("copied layer S=%d Count=%d", oa.S, oa.Count)
	}
	// The same result as the in-memory merge of what the files hold.
	fa, _ := Open(pa)
	defer fa.Close()
	fb, _ := Open(pb)
	defer fb.Close()
	la, _ := fa.Layer("x")
	lb, _ := fb.Layer("x")
	want := Merge(la, lb, layerSeed(42, "x", 1))
	for i := range want.Samples {
		if x.Samples[i] != want.Samples[i] {
			t.Fatalf("MergeFiles differs from Merge at %d", i)
		}
	}
	for j := range want.AbsMax {
		if x.AbsMax[j] != want.AbsMax[j] {
			t.Fatalf("absmax %d", j)
		}
	}
	// K mismatch names both files; the output is not created.
	pc := filepath.Join(dir, "c.safetensors")
	if err := Write(pc, map[string]*Stats{"x": randStats(rng, 9, 3, 3)}); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(dir, "m2.safetensors")
	err = MergeFiles([]string{pa, pc}, out2, 1)
	if err == nil || !strings.Contains(err.Error(), pa) || !strings.Contains(err.Error(), pc) {
		t.Errorf("K mismatch: %v", err)
	}
	if _, err := os.Stat(out2); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed merge left %s", out2)
	}
	// Counts within MaxCount each whose sum is not: the error names the
	// file and tensor that push the sum over, and the files before it.
	big1, big2 := filepath.Join(dir, "big1.safetensors"), filepath.Join(dir, "big2.safetensors")
	for i, p := range []string{big1, big2} {
		st := randStats(rng, 8, 3, MaxCount-int64(i))
		if err := Write(p, map[string]*Stats{"x": st}); err != nil {
			t.Fatal(err)
		}
	}
	out3 := filepath.Join(dir, "m3.safetensors")
	err = MergeFiles([]string{pa, big1, big2}, out3, 1)
	var ce *Error
	if !errors.As(err, &ce) || ce.File != big1 || ce.Tensor != "x.input_count" || !strings.Contains(err.Error(), pa) {
		t.Errorf("count sum past MaxCount: %v", err)
	}
	if _, err := os.Stat(out3); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed merge left %s", out3)
	}
	if err := MergeFiles([]string{pa, out}, out, 1); err == nil {
		t.Errorf("merging into an input accepted")
	}
	if err := MergeFiles(nil, out2, 1); err == nil {
		t.Errorf("merging nothing accepted")
	}
}

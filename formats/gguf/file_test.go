package gguf

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeFile(t *testing.T, kvs []KV, ts []WTensor) string {
	t.Helper()
	var b bytes.Buffer
	if err := Write(&b, kvs, ts); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "m.gguf")
	if err := os.WriteFile(p, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadBack(t *testing.T) {
	x := make([]float32, 2*64)
	for i := range x {
		x[i] = float32(i%17) - 8
	}
	f32 := make([]byte, 4*len(x))
	for i, v := range x {
		binary.LittleEndian.PutUint32(f32[4*i:], mathFloat32bits(v))
	}
	p := writeFile(t, []KV{{"general.architecture", "flux"}, {"comfy.gguf.orig_shape.w8", []int32{2, 64, 1, 1}}},
		[]WTensor{{Name: "w32", Type: F32, Shape: []int64{2, 64}, Data: f32},
			{Name: "w8", Type: Q8_0, Shape: []int64{2, 64}, Data: EncodeQ8_0(x)}})
	g, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.String("general.architecture") != "flux" || len(g.Tensors()) != 2 {
		t.Fatalf("kv %v, %d tensors", g.KV, len(g.Tensors()))
	}
	w32, _ := g.Tensor("w32")
	if w32.Dims[0] != 64 || w32.Shape[0] != 2 || w32.Shape[1] != 64 {
		t.Errorf("w32 dims %v shape %v", w32.Dims, w32.Shape)
	}
	w8, _ := g.Tensor("w8")
	if len(w8.Shape) != 4 || w8.Shape[2] != 1 {
		t.Errorf("w8 shape %v, want the recorded orig_shape", w8.Shape)
	}
	v, _, err := g.Float32("w32")
	if err != nil || v[5] != x[5] || v[100] != x[100] {
		t.Errorf("w32: %v %v", err, v[:8])
	}
	if _, _, err := g.Float32("w8"); err != nil {
		t.Error(err)
	}
	if !IsGGUF(p) || IsGGUF(filepath.Join(t.TempDir(), "none")) {
		t.Error("IsGGUF")
	}
}

func mathFloat32bits(f float32) uint32 { return math.Float32bits(f) }

// TestHostile: each corrupted file is refused with an error naming the
// file (and the tensor where there is one), never a panic.
func TestHostile(t *testing.T) {
	good := func() []byte {
		var b bytes.Buffer
		x := make([]float32, 256)
		Write(&b, []KV{{"general.architecture", "flux"}}, []WTensor{{Name: "a.weight", Type: Q4_K, Shape: []int64{1, 256}, Data: EncodeQ4_K(x)}})
		return b.Bytes()
	}
	// Offsets in the good file: magic 0, version 4, counts 8/16, key at 24.
	kvEnd := 24 + 8 + len("general.architecture") + 4 + 8 + len("flux")
	tiDims := kvEnd + 8 + len("a.weight") + 4
	cases := map[string]struct {
		edit func([]byte) []byte
		msg  string
	}{
		"truncated header": {func(b []byte) []byte { return b[:20] }, "past the end"},
		"bad magic":        {func(b []byte) []byte { b[0] = 'X'; return b }, "not a GGUF"},
		"version 1":        {func(b []byte) []byte { b[4] = 1; return b }, "version 1"},
		"huge tensor count": {func(b []byte) []byte {
			binary.LittleEndian.PutUint64(b[8:], 1<<60)
			return b
		}, "cannot fit"},
		"huge string": {func(b []byte) []byte { binary.LittleEndian.PutUint64(b[24:], 1<<40); return b }, "past the end"},
		"unknown kv type": {func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[24+8+len("general.architecture"):], 77)
			return b
		}, "unknown value type"},
		"five dims":        {func(b []byte) []byte { binary.LittleEndian.PutUint32(b[tiDims-4:], 5); return b }, "dimensions"},
		"row not in block": {func(b []byte) []byte { binary.LittleEndian.PutUint64(b[tiDims:], 255); return b }, "block size"},
		"unknown type": {func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[tiDims+16:], 99)
			return b
		}, "unknown ggml type"},
		"misaligned offset": {func(b []byte) []byte { binary.LittleEndian.PutUint64(b[tiDims+20:], 3); return b }, "alignment"},
		"data past end":     {func(b []byte) []byte { return b[:len(b)-20] }, "past the end"},
	}
	for name, c := range cases {
		p := filepath.Join(t.TempDir(), "bad.gguf")
		if err := os.WriteFile(p, c.edit(good()), 0o644); err != nil {
			t.Fatal(err)
		}
		g, err := Open(p)
		if err == nil {
			g.Close()
			t.Errorf("%s: no error", name)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %q lacks the file or %q", name, err, c.msg)
		}
	}
}

// FuzzOpen parses in memory (no file per input) and dequantizes every
// readable tensor; inputs over 4 KiB are skipped (docs/testing.md).
func FuzzOpen(f *testing.F) {
	var b bytes.Buffer
	Write(&b, []KV{{"k", "v"}, {"comfy.gguf.orig_shape.a", []int32{1, 32}}}, []WTensor{{Name: "a", Type: Q8_0, Shape: []int64{1, 32}, Data: EncodeQ8_0(make([]float32, 32))}})
	f.Add(b.Bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 4<<10 {
			return
		}
		g, err := OpenBytes("fuzz.gguf", data)
		if err != nil {
			return
		}
		for _, tn := range g.Tensors() {
			if tn.Type.Readable() {
				g.Float32(tn.Name)
			}
		}
		g.Close()
	})
}

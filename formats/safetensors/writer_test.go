package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
)

// randomTensors returns one tensor of every dtype with seeded random bytes,
// including a scalar and a zero-size tensor.
func randomTensors(seed uint64) []Tensor {
	r := rand.New(rand.NewPCG(seed, 1))
	shapes := [][]int64{{3, 5}, {7}, {}, {2, 3, 4}, {0, 9}, {1, 1, 1, 1}}
	var ts []Tensor
	for i, d := range DTypes {
		shape := shapes[i%len(shapes)]
		size, _ := byteSize(d, shape)
		data := make([]byte, size)
		for j := range data {
			data[j] = byte(r.Uint32())
		}
		if d == BOOL {
			for j := range data {
				data[j] &= 1
			}
		}
		ts = append(ts, Tensor{Spec{fmt.Sprintf("blocks.%d.%s", i, strings.ToLower(string(d))), d, shape}, data})
	}
	return ts
}

func TestRoundTripEveryDType(t *testing.T) {
	p := filepath.Join(t.TempDir(), "all.safetensors")
	ts := randomTensors(1)
	meta := map[string]string{"format": "pt", "quantization_config": `{"rank":32}`}
	if err := WriteFile(p, ts, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := os.Stat(p)
	checkInvariants(t, f.hdr, st.Size())
	if f.HeaderSize()%8 != 0 {
		t.Errorf("header size %d is not a multiple of 8", f.HeaderSize())
	}
	if got := f.Metadata(); len(got) != 2 || got["format"] != "pt" || got["quantization_config"] != `{"rank":32}` {
		t.Errorf("metadata = %q", got)
	}
	if len(f.Names()) != len(ts) {
		t.Errorf("%d tensors, want %d", len(f.Names()), len(ts))
	}
	for _, tt := range ts {
		info, ok := f.Info(tt.Name)
		if !ok || info.DType != tt.DType || !slices.Equal(info.Shape, tt.Shape) {
			t.Errorf("Info(%q) = %+v, %v; want %s %v", tt.Name, info, ok, tt.DType, tt.Shape)
			continue
		}
		// Every tensor is aligned to its element size.
		if (8+f.HeaderSize()+info.Begin)%int64(tt.DType.Size()) != 0 {
			t.Errorf("%q (%s) at file offset %d is misaligned", tt.Name, tt.DType, 8+f.HeaderSize()+info.Begin)
		}
		b, err := f.Bytes(tt.Name)
		if err != nil || !bytes.Equal(b, tt.Data) {
			t.Errorf("Bytes(%q) = %v, %v; want %v", tt.Name, b, err, tt.Data)
		}
	}
}

// TestWriterGolden pins the exact bytes of a small file: header layout,
// key order, padding.
func TestWriterGolden(t *testing.T) {
	p := filepath.Join(t.TempDir(), "g.safetensors")
	ts := []Tensor{
		{Spec{"b", U8, []int64{3}}, []byte{1, 2, 3}},
		{Spec{"a", F32, []int64{}}, []byte{0, 0, 0x80, 0x3f}},
	}
	if err := WriteFile(p, ts, map[string]string{"z": "1", "m": "é\"\n"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	js := `{"__metadata__":{"m":"é\"\n","z":"1"},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[3],"data_offsets":[4,7]}}`
	hdr := js + strings.Repeat(" ", (8-len(js)%8)%8)
	want := build(hdr, []byte{0, 0, 0x80, 0x3f, 1, 2, 3})
	if !bytes.Equal(got, want) {
		t.Errorf("file bytes\n got %q\nwant %q", got, want)
	}
}

// TestWriterMatchesReference checks a file the reference serializer
// (Rust safetensors: compact serde JSON, fields dtype, shape,
// data_offsets, padded with spaces to 8) would write byte for byte.
func TestWriterMatchesReference(t *testing.T) {
	p := filepath.Join(t.TempDir(), "ref.safetensors")
	if err := WriteFile(p, []Tensor{{Spec{"test", I32, []int64{2, 2}}, make([]byte, 16)}}, nil); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	want := build(`{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}    `, make([]byte, 16))
	if !bytes.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestWriterDeterministic(t *testing.T) {
	dir := t.TempDir()
	ts := randomTensors(2)
	write := func(name string, order []int, meta map[string]string) []byte {
		p := filepath.Join(dir, name)
		specs := make([]Spec, len(ts))
		for i, j := range order {
			specs[i] = ts[j].Spec
		}
		w, err := Create(p, specs, map[string]string{"initial": "x"}, ReserveHeader(300))
		if err != nil {
			t.Fatal(err)
		}
		defer w.Abort()
		for i := len(order) - 1; i >= 0; i-- {
			if err := w.Write(ts[order[i]].Name, ts[order[i]].Data); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.SetMetadata(meta); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	n := len(ts)
	fwd := make([]int, n)
	rev := make([]int, n)
	for i := range n {
		fwd[i], rev[i] = i, n-1-i
	}
	m1 := map[string]string{}
	m2 := map[string]string{}
	for i := range 20 {
		m1[fmt.Sprint("k", i)] = fmt.Sprint(i * i)
		m2[fmt.Sprint("k", 19-i)] = fmt.Sprint((19 - i) * (19 - i))
	}
	a := write("a.safetensors", fwd, m1)
	b := write("b.safetensors", rev, m2)
	if !bytes.Equal(a, b) {
		t.Errorf("same tensors and metadata gave different files (%d and %d bytes)", len(a), len(b))
	}
}

func TestWriterReserveHeader(t *testing.T) {
	dir := t.TempDir()
	spec := []Spec{{"w", F16, []int64{4}}}
	data := make([]byte, 8)
	long := map[string]string{"smoothing": strings.Repeat("0.5,", 50)}

	// Without a reservation the longer metadata does not fit.
	p := filepath.Join(dir, "small.safetensors")
	w, err := Create(p, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetMetadata(long); err == nil || !strings.Contains(err.Error(), "ReserveHeader") {
		t.Errorf("SetMetadata without room: err = %v", err)
	}
	w.Abort()

	// With one, it does, and the header is padded to the reserved size.
	p = filepath.Join(dir, "reserved.safetensors")
	w, err = Create(p, spec, nil, ReserveHeader(512))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write("w", data); err != nil {
		t.Fatal(err)
	}
	if err := w.SetMetadata(long); err != nil {
		t.Fatal(err)
	}
	if err := w.SetMetadata(map[string]string{"x": strings.Repeat("y", 600)}); err == nil {
		t.Error("SetMetadata past the reservation succeeded")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Metadata()["smoothing"] != long["smoothing"] {
		t.Errorf("metadata = %q", f.Metadata())
	}
	minN := int64(len(`{"w":{"dtype":"F16","shape":[4],"data_offsets":[0,8]}}`) + 512)
	if n := f.HeaderSize(); n < minN || n >= minN+8 || n%8 != 0 {
		t.Errorf("header size %d, want the reservation %d rounded up to 8", n, minN)
	}
}

// noTemp fails if dir holds anything but the names given.
func noTemp(t *testing.T, dir string, keep ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.Contains(keep, e.Name()) {
			t.Errorf("left behind %s", e.Name())
		}
	}
}

func TestWriterAbortAndErrors(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "out.safetensors")
	specs := []Spec{{"a", F32, []int64{2}}, {"b", I8, []int64{3}}}

	w, err := Create(p, specs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write("a", make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	noTemp(t, dir)
	if err := w.Write("b", make([]byte, 3)); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Abort: %v", err)
	}

	// Write errors name the file and tensor and leave the writer usable.
	w, err = Create(p, specs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		n    int
		msg  string
	}{
		{"a", 7, "got 7 bytes, want 8"},
		{"c", 1, "not declared"},
		{"a", 8, ""},
		{"a", 8, "written twice"},
	} {
		err := w.Write(c.name, make([]byte, c.n))
		if c.msg == "" {
			if err != nil {
				t.Errorf("Write(%q, %d): %v", c.name, c.n, err)
			}
			continue
		}
		var se *Error
		if !errors.As(err, &se) || se.File != p || se.Tensor != c.name || !strings.Contains(se.Msg, c.msg) {
			t.Errorf("Write(%q, %d) = %v, want *Error for %s %q containing %q", c.name, c.n, err, p, c.name, c.msg)
		}
	}
	// Close with a tensor missing fails, names it, and cleans up.
	err = w.Close()
	if err == nil || !strings.Contains(err.Error(), `"b"`) || !strings.Contains(err.Error(), p) {
		t.Errorf("Close with b unwritten: %v", err)
	}
	noTemp(t, dir)
	if err := w.Abort(); err != nil {
		t.Errorf("Abort after failed Close: %v", err)
	}
	if err := w.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}

	// A failed WriteFile leaves nothing.
	if err := WriteFile(p, []Tensor{{Spec{"a", F32, []int64{2}}, make([]byte, 5)}}, nil); err == nil {
		t.Error("WriteFile with a short tensor succeeded")
	}
	noTemp(t, dir)

	// Abort after a successful Close keeps the file.
	w, err = Create(p, specs[:1], nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write("a", make([]byte, 8)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Abort(); err != nil {
		t.Fatal(err)
	}
	noTemp(t, dir, "out.safetensors")
}

func TestCreateRejects(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "x.safetensors")
	for _, c := range []struct {
		specs  []Spec
		meta   map[string]string
		tensor string
		msg    string
	}{
		{[]Spec{{"", F32, nil}}, nil, "", "empty tensor name"},
		{[]Spec{{"a", F32, nil}, {"a", F16, nil}}, nil, "a", "declared twice"},
		{[]Spec{{"__metadata__", F32, nil}}, nil, "__metadata__", "reserved"},
		{[]Spec{{"a\xff", F32, nil}}, nil, "a\xff", "UTF-8"},
		{[]Spec{{"a", "F4", nil}}, nil, "a", `unknown dtype "F4"`},
		{[]Spec{{"a", F32, []int64{2, -1}}}, nil, "a", "negative dimension"},
		{[]Spec{{"a", F32, []int64{1 << 40, 1 << 40}}}, nil, "a", "overflows"},
		{nil, map[string]string{"k": "\xff"}, "", "not valid UTF-8"},
	} {
		_, err := Create(p, c.specs, c.meta)
		var se *Error
		if !errors.As(err, &se) || se.File != p || se.Tensor != c.tensor || !strings.Contains(se.Msg, c.msg) {
			t.Errorf("Create(%v, %q) = %v, want tensor %q, %q", c.specs, c.meta, err, c.tensor, c.msg)
		}
	}
	noTemp(t, dir)

	missing := filepath.Join(dir, "no", "such", "dir", "x.safetensors")
	if _, err := Create(missing, nil, nil); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("Create in a missing directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "no")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Create in a missing directory left %v", err)
	}
	if _, err := Create(dir, nil, nil); err == nil {
		t.Error("Create onto a directory succeeded")
	}
	noTemp(t, dir)
}

func TestWriterConcurrentAndCopy(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.safetensors")
	ts := randomTensors(3)
	if err := WriteFile(src, ts, nil); err != nil {
		t.Fatal(err)
	}
	r, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	// Copy every tensor under a new name from many goroutines.
	dst := filepath.Join(dir, "dst.safetensors")
	var specs []Spec
	for _, name := range r.Names() {
		info, _ := r.Info(name)
		s := info.Spec()
		s.Name = "copy." + name
		specs = append(specs, s)
	}
	w, err := Create(dst, specs, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	var wg sync.WaitGroup
	errs := make([]error, len(specs))
	for i, name := range r.Names() {
		wg.Go(func() { errs[i] = w.Copy("copy."+name, r, name) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	// A shape mismatch is refused.
	if err := w.Copy(specs[0].Name, r, r.Names()[1]); err == nil {
		t.Error("Copy between different shapes succeeded")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out, err := Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for _, tt := range ts {
		if b, err := out.Bytes("copy." + tt.Name); err != nil || !bytes.Equal(b, tt.Data) {
			t.Errorf("copy of %q: %v %v", tt.Name, b, err)
		}
	}
}

// The header length field is what Create computed, whatever SetMetadata
// did later.
func TestWriterHeaderLengthField(t *testing.T) {
	p := filepath.Join(t.TempDir(), "h.safetensors")
	w, err := Create(p, nil, map[string]string{"a": strings.Repeat("x", 40)})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.SetMetadata(nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	n := binary.LittleEndian.Uint64(b)
	if int(n) != len(b)-8 || strings.TrimRight(string(b[8:]), " ") != "{}" {
		t.Errorf("file %q", b)
	}
}

func TestCreateHeaderLimit(t *testing.T) {
	dir := t.TempDir()
	_, err := Create(filepath.Join(dir, "x.safetensors"), nil, nil, ReserveHeader(1<<62))
	if err == nil || !strings.Contains(err.Error(), "exceeds the limit") {
		t.Errorf("huge reservation: %v", err)
	}
	noTemp(t, dir)
}

package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// checkInvariants asserts what an accepted header guarantees for a file of
// size bytes.
func checkInvariants(t *testing.T, h *header, size int64) {
	t.Helper()
	dataLen := size - 8 - h.n
	if h.n < 0 || h.n > MaxHeaderSize || dataLen < 0 {
		t.Fatalf("header length %d, file %d bytes", h.n, size)
	}
	if h.meta == nil {
		t.Errorf("nil metadata map")
	}
	if len(h.index) != len(h.infos) {
		t.Fatalf("index has %d names, infos %d", len(h.index), len(h.infos))
	}
	for i, info := range h.infos {
		if i > 0 && h.infos[i-1].Name >= info.Name {
			t.Errorf("names not sorted and unique: %q, %q", h.infos[i-1].Name, info.Name)
		}
		if h.index[info.Name] != i {
			t.Errorf("index[%q] = %d, want %d", info.Name, h.index[info.Name], i)
		}
		if info.Name == metadataKey {
			t.Errorf("tensor named %s", metadataKey)
		}
		if !info.DType.Known() {
			t.Errorf("%q: unknown dtype %q", info.Name, info.DType)
		}
		if info.Shape == nil {
			t.Errorf("%q: nil shape", info.Name)
		}
		size, ok := byteSize(info.DType, info.Shape)
		if !ok || slices.ContainsFunc(info.Shape, func(d int64) bool { return d < 0 }) {
			t.Errorf("%q: bad shape %v", info.Name, info.Shape)
		}
		if info.Begin < 0 || info.Begin > info.End || info.End > dataLen || info.End-info.Begin != size {
			t.Errorf("%q: %s %v at [%d, %d) in %d data bytes", info.Name, info.DType, info.Shape, info.Begin, info.End, dataLen)
		}
		if size != info.Elems()*int64(info.DType.Size()) {
			t.Errorf("%q: Elems %d disagrees with byte size %d", info.Name, info.Elems(), size)
		}
	}
	// The tensors tile [0, dataLen) exactly.
	ranges := slices.Clone(h.infos)
	slices.SortFunc(ranges, func(a, b Info) int {
		if a.Begin != b.Begin {
			return int(a.Begin - b.Begin)
		}
		return int(a.End - b.End)
	})
	var pos int64
	for _, r := range ranges {
		if r.Begin != pos {
			t.Errorf("%q starts at %d, previous tensor ends at %d", r.Name, r.Begin, pos)
		}
		pos = r.End
	}
	if pos != dataLen {
		t.Errorf("tensors end at %d of %d data bytes", pos, dataLen)
	}
}

func FuzzParseHeader(f *testing.F) {
	paths, _ := filepath.Glob(filepath.Join(corpusDir, "*.safetensors"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		h, err := readHeader(bytes.NewReader(b), int64(len(b)), "fuzz.safetensors")
		if err != nil {
			var se *Error
			if errors.As(err, &se) && (se.File != "fuzz.safetensors" || se.Offset < -1 || strings.Contains(se.Error(), "\n")) {
				t.Errorf("malformed error %#v", se)
			}
			return
		}
		checkInvariants(t, h, int64(len(b)))
	})
}

// FuzzHeaderRoundTrip writes a header with arbitrary names and metadata and
// checks that it parses back to the same thing. Strings over 64 bytes are
// skipped before any work: escaping is per character, which short strings
// exercise fully, and the fuzzer minimizes each new input in time
// quadratic in its length while fuzzing nothing else (it stalled for
// seconds on strings of a few hundred bytes).
func FuzzHeaderRoundTrip(f *testing.F) {
	f.Add("a.weight", "format", "pt", int64(3))
	f.Add("x\"\\\n\x00\u2028é", "k\t", "{\"v\":[1]}", int64(0))
	f.Fuzz(func(t *testing.T, name, key, value string, dim int64) {
		const maxLen = 64
		if dim < 0 || dim > 1<<10 || len(name) > maxLen || len(key) > maxLen || len(value) > maxLen {
			return
		}
		w := &Writer{path: "rt", slots: map[string]*slot{}}
		spec := Spec{Name: name, DType: I16, Shape: []int64{dim, 2}}
		meta := map[string]string{key: value}
		if w.checkSpec(spec) != nil || checkMeta("rt", meta) != nil {
			return
		}
		s := &slot{spec: spec, begin: 0, end: 4 * dim}
		w.order = []*slot{s}
		js := w.headerJSON(meta)
		h, err := parseHeader(js, 4*dim, "rt")
		if err != nil {
			t.Fatalf("header %q: %v", js, err)
		}
		if len(h.infos) != 1 || h.infos[0].Name != name || !slices.Equal(h.infos[0].Shape, spec.Shape) || h.meta[key] != value || len(h.meta) != 1 {
			t.Fatalf("header %q parsed as %+v %q", js, h.infos, h.meta)
		}
	})
}

// countingReaderAt records the furthest byte read.
type countingReaderAt struct {
	r   *os.File
	end int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.end = max(c.end, off+int64(len(p)))
	return c.r.ReadAt(p, off)
}

// TestReadHeaderReadsOnlyHeader checks that opening reads nothing of the
// data section.
func TestReadHeaderReadsOnlyHeader(t *testing.T) {
	p := filepath.Join(t.TempDir(), "big.safetensors")
	data := make([]byte, 1<<20)
	if err := WriteFile(p, []Tensor{{Spec{"w", U8, []int64{1 << 20}}, data}}, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	c := &countingReaderAt{r: f}
	h, err := readHeader(c, st.Size(), p)
	if err != nil {
		t.Fatal(err)
	}
	if c.end != 8+h.n {
		t.Errorf("read up to byte %d; the header ends at %d", c.end, 8+h.n)
	}
}

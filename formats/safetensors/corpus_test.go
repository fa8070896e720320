package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/safetensors from the corpus table")

// corpusDir holds the hand-made files of the corpus, shared with other
// packages' tests (repository root testdata/safetensors).
const corpusDir = "../../testdata/safetensors"

// corpusCase is one file of the corpus with what Open must say about it.
// A case with an empty msg is a valid file.
type corpusCase struct {
	name   string // file name without .safetensors
	data   []byte
	msg    string // substring of Error.Msg
	tensor string // Error.Tensor
	offset int64  // Error.Offset, or anyOffset
}

// anyOffset accepts any Offset ≥ 0: the position of a JSON syntax error is
// the decoder's business.
const anyOffset = -2

// build returns 8-byte N = len(hdr), hdr, data.
func build(hdr string, data []byte) []byte { return buildN(uint64(len(hdr)), hdr, data) }

// buildN is build with a chosen (possibly lying) N.
func buildN(n uint64, hdr string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, n)
	b = append(b, hdr...)
	return append(b, data...)
}

// at returns the absolute offset of the first sub in hdr.
func at(hdr, sub string) int64 {
	i := strings.Index(hdr, sub)
	if i < 0 {
		panic("corpus: " + sub + " not in " + hdr)
	}
	return 8 + int64(i)
}

// seq returns n bytes 0, 1, 2, …
func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// corpus returns the hostile-file corpus (and a few valid files). Offsets
// are computed from the header text so the table stays readable.
func corpus() []corpusCase {
	var cs []corpusCase
	add := func(c corpusCase) { cs = append(cs, c) }
	bad := func(name, hdr string, data []byte, msg, tensor, sub string) {
		off := int64(anyOffset)
		if sub != "" {
			off = at(hdr, sub)
		}
		add(corpusCase{name: name, data: build(hdr, data), msg: msg, tensor: tensor, offset: off})
	}
	// layout returns a case whose fault is in the data section at data
	// offset pos.
	layout := func(name, hdr string, data []byte, msg, tensor string, pos int64) {
		add(corpusCase{name: name, data: build(hdr, data), msg: msg, tensor: tensor, offset: 8 + int64(len(hdr)) + pos})
	}
	const e = `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`

	add(corpusCase{name: "empty", data: nil, msg: "shorter than the 8-byte header length", offset: -1})
	add(corpusCase{name: "truncated", data: []byte{0x40, 0, 0, 0, 0}, msg: "shorter than the 8-byte header length", offset: -1})
	add(corpusCase{name: "header-past-eof", data: buildN(400, e, seq(8)), msg: "runs past the end of the file", offset: 0})
	add(corpusCase{name: "header-huge", data: buildN(5<<30, e, seq(8)), msg: "exceeds the limit", offset: 0})
	add(corpusCase{name: "header-zero", data: buildN(0, "", nil), msg: "header is empty", offset: 8})
	add(corpusCase{name: "header-spaces", data: build("        ", nil), msg: "header is empty", offset: 8})
	bad("invalid-json", `{"a":{"dtype":"F32",,"shape":[2],"data_offsets":[0,8]}}`, seq(8), "invalid JSON", "a", "")
	bad("invalid-utf8", "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", seq(8), "not valid UTF-8", "", "\xff")
	bad("not-object", `[{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}]`, seq(8), "header is not a JSON object", "", "[")
	bad("string-header", `"a"`, nil, "header is not a JSON object", "", `"a"`)
	bad("trailing-json", e+` {}`, seq(8), "data after the header's JSON object", "", `{}`)
	bad("unterminated", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}`, seq(8), "invalid JSON", "", "")
	bad("duplicate-name", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`,
		seq(16), "duplicate tensor name", "a", `"a":{"dtype":"F32","shape":[2],"data_offsets":[8`)
	bad("duplicate-field", `{"a":{"dtype":"F32","shape":[2],"dtype":"I32","data_offsets":[0,8]}}`, seq(8),
		`duplicate field "dtype"`, "a", `"dtype":"I32"`)
	bad("duplicate-metadata", `{"__metadata__":{},"__metadata__":{}}`, nil, "duplicate __metadata__", "", `"__metadata__":{}}`)
	bad("entry-not-object", `{"a":[1,2]}`, nil, "entry is not a JSON object", "a", "[1,2]")
	bad("missing-offsets", `{"a":{"dtype":"F32","shape":[2]}}`, seq(8), "entry has no data_offsets", "a", `"a"`)
	bad("missing-dtype", `{"a":{"shape":[2],"data_offsets":[0,8]}}`, seq(8), "entry has no dtype", "a", `"a"`)
	bad("unknown-dtype", `{"a":{"dtype":"F12","shape":[2],"data_offsets":[0,8]}}`, seq(8), `unknown dtype "F12"`, "a", `"F12"`)
	bad("dtype-not-string", `{"a":{"dtype":4,"shape":[2],"data_offsets":[0,8]}}`, seq(8), "dtype is not a string", "a", `4,`)
	bad("negative-dim", `{"a":{"dtype":"F32","shape":[-2,1],"data_offsets":[0,8]}}`, seq(8), "shape: value -2 is negative", "a", `[-2,1]`)
	bad("float-dim", `{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}`, seq(8), "shape: value 2.0 is not an integer", "a", `[2.0]`)
	bad("string-dim", `{"a":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}}`, seq(8), `shape: value "2" is not an integer`, "a", `["2"]`)
	bad("huge-dim", `{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,8]}}`, seq(8), "out of range", "a", `[9`)
	bad("overflow-shape", `{"a":{"dtype":"F32","shape":[4294967296,4294967296,0],"data_offsets":[0,0]}}`, nil, "overflows the byte count", "a", `"a"`)
	bad("shape-not-array", `{"a":{"dtype":"F32","shape":null,"data_offsets":[0,8]}}`, seq(8), "shape: not a JSON array", "a", `null`)
	bad("offsets-one-value", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}}`, seq(8), "data_offsets has 1 values", "a", `[8]`)
	bad("negative-offset", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}`, seq(8), "data_offsets: value -8 is negative", "a", `[-8,0]`)
	bad("begin-after-end", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}`, seq(8), "begin > end", "a", `"a"`)
	bad("out-of-range", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[400,408]}}`, seq(8), "run past the end of the 8-byte data section", "a", `"a"`)
	bad("size-mismatch", `{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}`, seq(20), "F32 [2 3] is 24 bytes but data_offsets [0, 20] span 20", "a", `"a"`)
	// The span must equal dtype × shape exactly, in both directions: a
	// span one element larger would hand Bytes more than the tensor holds.
	bad("span-larger", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}`, seq(12), "F32 [2] is 8 bytes but data_offsets [0, 12] span 12", "a", `"a"`)
	bad("span-larger-by-one", `{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,5]}}`, seq(5), "BF16 [2] is 4 bytes but data_offsets [0, 5] span 5", "a", `"a"`)
	bad("span-smaller", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, seq(4), "F32 [2] is 8 bytes but data_offsets [0, 4] span 4", "a", `"a"`)
	bad("span-nonzero-for-empty", `{"a":{"dtype":"F32","shape":[0,3],"data_offsets":[0,4]}}`, seq(4), "F32 [0 3] is 0 bytes but data_offsets [0, 4] span 4", "a", `"a"`)
	layout("overlap", `{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`,
		seq(16), `data_offsets [8, 16] overlap tensor "a"`, "b", 8)
	layout("overlap-zero-size", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}`,
		seq(8), `overlap tensor "a"`, "z", 4)
	layout("gap", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}`,
		seq(24), "leave a gap: bytes [8, 16)", "b", 8)
	layout("gap-at-start", `{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}`, seq(16), "leave a gap: bytes [0, 8)", "a", 0)
	layout("trailing-data", e, seq(12), "4 bytes after the last tensor", "", 8)
	bad("metadata-not-object", `{"__metadata__":["format","pt"]}`, nil, "__metadata__ is not a JSON object", "", `["format"`)
	bad("metadata-null", `{"__metadata__":null}`, nil, "__metadata__ is not a JSON object", "", `null`)
	bad("metadata-non-string", `{"__metadata__":{"format":"pt","epoch":5}}`, nil, `__metadata__: value of "epoch" is not a string`, "", `5}`)
	bad("metadata-duplicate-key", `{"__metadata__":{"format":"pt","format":"np"}}`, nil, `__metadata__: duplicate key "format"`, "", `"format":"np"`)

	valid := func(name, hdr string, data []byte) {
		add(corpusCase{name: name, data: build(hdr, data)})
	}
	valid("valid-empty", `{}      `, nil)
	// The example of the reference implementation's documentation: no
	// padding, N = 60.
	valid("valid-unpadded", `{"test":{"dtype":"I32","shape":[2,2],"data_offsets":[0,16]}}`, make([]byte, 16))
	valid("valid-metadata-only", `{"__metadata__":{"format":"pt"}}`, nil)
	valid("valid-scalar", `{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}  `, []byte{0, 0, 0x80, 0x3f})
	valid("valid-mixed", `{"__metadata__":{"note":"tab\there \u00e9"},`+
		`"w":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},`+
		`"b":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},`+
		`"mask":{"dtype":"BOOL","shape":[3],"data_offsets":[20,23]},`+
		`"empty":{"dtype":"I32","shape":[4,0],"data_offsets":[23,23]},`+
		`"q":{"dtype":"I8","shape":[1,1],"data_offsets":[23,24],"extra":{"ignored":[1,{"x":2}]}}}`, seq(24))
	return cs
}

func TestWriteCorpus(t *testing.T) {
	cs := corpus()
	want := map[string]bool{}
	for _, c := range cs {
		p := filepath.Join(corpusDir, c.name+".safetensors")
		want[filepath.Base(p)] = true
		if *update {
			if err := os.WriteFile(p, c.data, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatalf("%v (run go test -run TestWriteCorpus -update)", err)
		}
		if !bytes.Equal(got, c.data) {
			t.Errorf("%s differs from the corpus table (run go test -run TestWriteCorpus -update)", p)
		}
	}
	entries, err := os.ReadDir(corpusDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), ".safetensors") && !want[e.Name()] {
			t.Errorf("%s is not in the corpus table", e.Name())
		}
	}
}

func TestCorpus(t *testing.T) {
	for _, c := range corpus() {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(corpusDir, c.name+".safetensors")
			f, err := Open(p)
			if c.msg == "" {
				if err != nil {
					t.Fatalf("valid file rejected: %v", err)
				}
				checkInvariants(t, f.hdr, f.size)
				f.Close()
				return
			}
			if err == nil {
				f.Close()
				t.Fatalf("accepted; want error %q", c.msg)
			}
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %v is %T, want *Error", err, err)
			}
			offsetOK := se.Offset == c.offset || c.offset == anyOffset && se.Offset >= 0
			if se.File != p || se.Tensor != c.tensor || !offsetOK || !strings.Contains(se.Msg, c.msg) {
				t.Errorf("got  File %q Tensor %q Offset %d Msg %q\nwant File %q Tensor %q Offset %d Msg containing %q",
					se.File, se.Tensor, se.Offset, se.Msg, p, c.tensor, c.offset, c.msg)
			}
			if !strings.HasPrefix(err.Error(), p+": ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("Error() = %q: want one line starting with the file", err.Error())
			}
		})
	}
}

// TestCorpusValidContents checks what the valid corpus files hold.
func TestCorpusValidContents(t *testing.T) {
	f, err := Open(filepath.Join(corpusDir, "valid-mixed.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, want := f.Names(), []string{"b", "empty", "mask", "q", "w"}; !slices.Equal(got, want) {
		t.Errorf("Names() = %q, want %q", got, want)
	}
	if got := f.Metadata()["note"]; got != "tab\there é" {
		t.Errorf("metadata note = %q", got)
	}
	for _, c := range []struct {
		name  string
		dtype DType
		shape []int64
		data  []byte
	}{
		{"b", F64, []int64{1}, seq(8)},
		{"w", BF16, []int64{2, 3}, seq(20)[8:]},
		{"mask", BOOL, []int64{3}, []byte{20, 21, 22}},
		{"empty", I32, []int64{4, 0}, []byte{}},
		{"q", I8, []int64{1, 1}, []byte{23}},
	} {
		info, ok := f.Info(c.name)
		if !ok || info.DType != c.dtype || !slices.Equal(info.Shape, c.shape) || info.File != f.Path() {
			t.Errorf("Info(%q) = %+v, %v", c.name, info, ok)
		}
		b, err := f.Bytes(c.name)
		if err != nil || !bytes.Equal(b, c.data) {
			t.Errorf("Bytes(%q) = %v, %v; want %v", c.name, b, err, c.data)
		}
	}

	s, err := Open(filepath.Join(corpusDir, "valid-scalar.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	info, _ := s.Info("s")
	if len(info.Shape) != 0 || info.Shape == nil || info.Elems() != 1 {
		t.Errorf("scalar Info = %+v (Elems %d)", info, info.Elems())
	}
	if b, _ := s.Bytes("s"); !bytes.Equal(b, []byte{0, 0, 0x80, 0x3f}) {
		t.Errorf("scalar bytes = %v", b)
	}
}

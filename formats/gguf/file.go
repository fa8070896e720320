package gguf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"math/bits"
	"os"
	"slices"

	"github.com/svdq/svdq/formats/safetensors"
)

// Value types of key-value pairs (gguf.h enum gguf_type).
const (
	tUint8 uint32 = iota
	tInt8
	tUint16
	tInt16
	tUint32
	tInt32
	tFloat32
	tBool
	tString
	tArray
	tUint64
	tInt64
	tFloat64
)

// scalarSize is the byte size of each scalar value type.
var scalarSize = map[uint32]int64{tUint8: 1, tInt8: 1, tUint16: 2, tInt16: 2, tUint32: 4, tInt32: 4,
	tFloat32: 4, tBool: 1, tUint64: 8, tInt64: 8, tFloat64: 8}

// DefaultAlignment is the data alignment when general.alignment is absent.
const DefaultAlignment = 32

// MaxDims is ggml's GGML_MAX_DIMS.
const MaxDims = 4

// Error is a malformed-file error naming the file, the tensor (may be
// empty) and the absolute byte offset (-1 when not applicable): the same
// type as safetensors', so callers handle both formats' faults as one.
type Error = safetensors.Error

// Tensor is one tensor's entry.
type Tensor struct {
	Name string
	Type Type
	// Dims are ggml's ne, innermost first; Shape the torch shape (Dims
	// reversed, or the recorded comfy.gguf.orig_shape).
	Dims  []int64
	Shape []int64
	// Offset is the absolute file offset of the data, Size its bytes.
	Offset, Size int64
}

// Elems returns the element count.
func (t *Tensor) Elems() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// File is an open GGUF file. Tensor data is read on demand with ReadAt;
// a File is safe for concurrent use.
type File struct {
	path      string
	f         io.ReaderAt
	closer    func() error
	size      int64
	Version   uint32
	Alignment int64
	// KV holds the key-value pairs: string, uint64 (unsigned types),
	// int64 (signed), float64, bool, or []any for arrays.
	KV      map[string]any
	tensors []Tensor
	index   map[string]int
}

// Open reads and validates the header of the GGUF file at path (see the
// package doc); no tensor data is read.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &Error{File: path, Offset: -1, Msg: "not a regular file"}
	}
	g := &File{path: path, f: f, closer: f.Close, size: st.Size(), KV: map[string]any{}, index: map[string]int{}}
	if err := g.parse(); err != nil {
		f.Close()
		return nil, err
	}
	return g, nil
}

// OpenBytes is Open on a file held in memory; name labels errors.
func OpenBytes(name string, b []byte) (*File, error) {
	g := &File{path: name, f: bytes.NewReader(b), closer: func() error { return nil }, size: int64(len(b)),
		KV: map[string]any{}, index: map[string]int{}}
	if err := g.parse(); err != nil {
		return nil, err
	}
	return g, nil
}

// IsGGUF reports whether the file at path starts with the GGUF magic.
func IsGGUF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var m [4]byte
	_, err = io.ReadFull(f, m[:])
	return err == nil && string(m[:]) == "GGUF"
}

// Path returns the path the file was opened with.
func (g *File) Path() string { return g.path }

// Tensors returns the tensor entries in file order (a new slice).
func (g *File) Tensors() []Tensor { return slices.Clone(g.tensors) }

// Tensor returns the named tensor's entry.
func (g *File) Tensor(name string) (Tensor, bool) {
	i, ok := g.index[name]
	if !ok {
		return Tensor{}, false
	}
	return g.tensors[i], true
}

// String returns a string key-value ("" if absent or not a string).
func (g *File) String(key string) string { s, _ := g.KV[key].(string); return s }

// Close closes the file.
func (g *File) Close() error { return g.closer() }

// Raw reads the named tensor's stored bytes.
func (g *File) Raw(name string) ([]byte, error) {
	t, ok := g.Tensor(name)
	if !ok {
		return nil, &Error{File: g.path, Tensor: name, Offset: -1, Msg: "no such tensor"}
	}
	buf := make([]byte, t.Size)
	if _, err := g.f.ReadAt(buf, t.Offset); err != nil {
		return nil, &Error{File: g.path, Tensor: name, Offset: t.Offset, Msg: fmt.Sprintf("reading %d bytes: %v", t.Size, err)}
	}
	return buf, nil
}

// Float32 reads and dequantizes the named tensor (row-major in Shape
// order) and returns its rounding noise (see Dequantize).
func (g *File) Float32(name string) ([]float32, float64, error) {
	t, ok := g.Tensor(name)
	if !ok {
		return nil, 0, &Error{File: g.path, Tensor: name, Offset: -1, Msg: "no such tensor"}
	}
	raw, err := g.Raw(name)
	if err != nil {
		return nil, 0, err
	}
	v := make([]float32, t.Elems())
	noise, err := Dequantize(v, t.Type, raw)
	if err != nil {
		return nil, 0, &Error{File: g.path, Tensor: name, Offset: t.Offset, Msg: err.Error()}
	}
	return v, noise, nil
}

// parser reads the header sequentially, tracking the offset.
type parser struct {
	g   *File
	r   *bufio.Reader
	pos int64
	err error
}

func (p *parser) fail(at int64, tensor, format string, args ...any) error {
	return &Error{File: p.g.path, Tensor: tensor, Offset: at, Msg: fmt.Sprintf(format, args...)}
}

func (p *parser) read(n int64, tensor string) ([]byte, error) {
	if n < 0 || n > p.g.size-p.pos {
		return nil, p.fail(p.pos, tensor, "%d bytes wanted, past the end of the file (%d bytes)", n, p.g.size)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(p.r, b); err != nil {
		return nil, p.fail(p.pos, tensor, "%v", err)
	}
	p.pos += n
	return b, nil
}

func (p *parser) u32(tensor string) (uint32, error) {
	b, err := p.read(4, tensor)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (p *parser) u64(tensor string) (uint64, error) {
	b, err := p.read(8, tensor)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (p *parser) str(tensor string) (string, error) {
	at := p.pos
	n, err := p.u64(tensor)
	if err != nil {
		return "", err
	}
	if n > uint64(p.g.size-p.pos) {
		return "", p.fail(at, tensor, "string of %d bytes runs past the end of the file", n)
	}
	b, err := p.read(int64(n), tensor)
	return string(b), err
}

// value reads one value of type typ; depth bounds nested arrays.
func (p *parser) value(typ uint32, key string, depth int) (any, error) {
	at := p.pos
	if typ == tString {
		return p.str("")
	}
	if typ == tArray {
		if depth > 4 {
			return nil, p.fail(at, "", "key %q: arrays nested too deep", key)
		}
		et, err := p.u32("")
		if err != nil {
			return nil, err
		}
		n, err := p.u64("")
		if err != nil {
			return nil, err
		}
		min := scalarSize[et]
		if et == tString || et == tArray {
			min = 8
		}
		if min == 0 {
			return nil, p.fail(at, "", "key %q: unknown array element type %d", key, et)
		}
		if n > uint64(p.g.size-p.pos)/uint64(min) {
			return nil, p.fail(at, "", "key %q: array of %d elements runs past the end of the file", key, n)
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = p.value(et, key, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	size, ok := scalarSize[typ]
	if !ok {
		return nil, p.fail(at, "", "key %q: unknown value type %d", key, typ)
	}
	b, err := p.read(size, "")
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	switch typ {
	case tUint8:
		return uint64(b[0]), nil
	case tInt8:
		return int64(int8(b[0])), nil
	case tUint16:
		return uint64(le.Uint16(b)), nil
	case tInt16:
		return int64(int16(le.Uint16(b))), nil
	case tUint32:
		return uint64(le.Uint32(b)), nil
	case tInt32:
		return int64(int32(le.Uint32(b))), nil
	case tFloat32:
		return float64(math.Float32frombits(le.Uint32(b))), nil
	case tBool:
		return b[0] != 0, nil
	case tUint64:
		return le.Uint64(b), nil
	case tInt64:
		return int64(le.Uint64(b)), nil
	default: // tFloat64
		return math.Float64frombits(le.Uint64(b)), nil
	}
}

func (g *File) parse() error {
	p := &parser{g: g, r: bufio.NewReaderSize(io.NewSectionReader(g.f, 0, g.size), 1<<16)}
	magic, err := p.read(4, "")
	if err != nil {
		return err
	}
	if string(magic) != "GGUF" {
		return p.fail(0, "", "not a GGUF file (magic %q)", magic)
	}
	if g.Version, err = p.u32(""); err != nil {
		return err
	}
	if g.Version != 2 && g.Version != 3 {
		return p.fail(4, "", "GGUF version %d is not supported (2 or 3)", g.Version)
	}
	at := p.pos
	nt, err := p.u64("")
	if err != nil {
		return err
	}
	nkv, err := p.u64("")
	if err != nil {
		return err
	}
	// Every pair takes at least 12 bytes, every tensor info at least 24.
	rest := uint64(g.size - p.pos)
	if nkv > rest/12 || nt > rest/24 {
		return p.fail(at, "", "%d tensors and %d key-value pairs cannot fit in %d bytes", nt, nkv, g.size)
	}
	for range nkv {
		at := p.pos
		key, err := p.str("")
		if err != nil {
			return err
		}
		typ, err := p.u32("")
		if err != nil {
			return err
		}
		v, err := p.value(typ, key, 0)
		if err != nil {
			return err
		}
		if _, dup := g.KV[key]; dup {
			return p.fail(at, "", "duplicate key %q", key)
		}
		g.KV[key] = v
	}
	g.Alignment = DefaultAlignment
	if v, ok := g.KV["general.alignment"]; ok {
		a, isU := v.(uint64)
		if !isU || a == 0 || a&(a-1) != 0 || a > 1<<20 {
			return p.fail(-1, "", "general.alignment %v is not a power of two up to 2^20", v)
		}
		g.Alignment = int64(a)
	}
	for range nt {
		at := p.pos
		name, err := p.str("")
		if err != nil {
			return err
		}
		nd, err := p.u32(name)
		if err != nil {
			return err
		}
		if nd == 0 || nd > MaxDims {
			return p.fail(at, name, "%d dimensions (1 to %d)", nd, MaxDims)
		}
		t := Tensor{Name: name}
		elems := uint64(1)
		for range nd {
			d, err := p.u64(name)
			if err != nil {
				return err
			}
			hi, lo := bits.Mul64(elems, d)
			if int64(d) < 0 || hi != 0 || lo > math.MaxInt64/4 {
				return p.fail(at, name, "dimension %d: element count overflows", d)
			}
			elems = lo
			t.Dims = append(t.Dims, int64(d))
		}
		typ, err := p.u32(name)
		if err != nil {
			return err
		}
		t.Type = Type(typ)
		off, err := p.u64(name)
		if err != nil {
			return err
		}
		ti, ok := types[t.Type]
		if !ok {
			return p.fail(at, name, "unknown ggml type %d", typ)
		}
		if t.Dims[0]%int64(ti.blockSize) != 0 {
			return p.fail(at, name, "row length %d is not a multiple of %s's block size %d", t.Dims[0], ti.name, ti.blockSize)
		}
		t.Size = int64(elems) / int64(ti.blockSize) * int64(ti.typeSize)
		if off > math.MaxInt64/2 || int64(off)%g.Alignment != 0 {
			return p.fail(at, name, "data offset %d is not a multiple of the alignment %d", off, g.Alignment)
		}
		t.Offset = int64(off)
		if _, dup := g.index[name]; dup {
			return p.fail(at, name, "duplicate tensor name")
		}
		g.index[name] = len(g.tensors)
		g.tensors = append(g.tensors, t)
	}
	data := (p.pos + g.Alignment - 1) / g.Alignment * g.Alignment
	for i := range g.tensors {
		t := &g.tensors[i]
		t.Offset += data
		if t.Offset > g.size || t.Size > g.size-t.Offset {
			return p.fail(t.Offset, t.Name, "%d bytes of data run past the end of the file (%d bytes)", t.Size, g.size)
		}
		t.Shape = make([]int64, len(t.Dims))
		for j, d := range t.Dims {
			t.Shape[len(t.Dims)-1-j] = d
		}
		if v, ok := g.KV["comfy.gguf.orig_shape."+t.Name]; ok {
			shape, err := origShape(v, t.Elems())
			if err != nil {
				return p.fail(-1, t.Name, "comfy.gguf.orig_shape: %v", err)
			}
			t.Shape = shape
		}
	}
	return nil
}

// origShape reads a comfy.gguf.orig_shape value: an INT32 array whose
// product is elems.
func origShape(v any, elems int64) ([]int64, error) {
	arr, ok := v.([]any)
	if !ok || len(arr) == 0 || len(arr) > 8 {
		return nil, fmt.Errorf("%v is not an INT32 array of 1 to 8 elements", v)
	}
	out := make([]int64, len(arr))
	n := int64(1)
	for i, x := range arr {
		d, ok := x.(int64)
		if !ok || d < 0 || d > math.MaxInt32 {
			return nil, fmt.Errorf("%v is not an INT32 array of sizes", v)
		}
		if d != 0 && n > math.MaxInt64/d {
			return nil, fmt.Errorf("%v overflows", v)
		}
		out[i] = d
		n *= d
	}
	if n != elems {
		return nil, fmt.Errorf("shape %v holds %d elements, the tensor %d", out, n, elems)
	}
	return out, nil
}

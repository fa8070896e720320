package safetensors

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize bounds the header length N read from a file's first 8
// bytes; a larger N is rejected before anything of that size is allocated.
const MaxHeaderSize = 100 << 20

// metadataKey is the reserved top-level header key holding free-form
// string→string metadata.
const metadataKey = "__metadata__"

// Info describes one tensor of a file.
type Info struct {
	Name  string
	DType DType
	Shape []int64
	// Begin, End: byte offsets relative to the start of the data section,
	// as written in the header.
	Begin, End int64
	File       string // path of the file holding the tensor
}

// Elems returns the product of the shape (1 for a scalar). For an Info
// returned by a Reader the product is known not to overflow.
func (i Info) Elems() int64 {
	n := int64(1)
	for _, d := range i.Shape {
		n *= d
	}
	return n
}

// Spec returns the Spec that declares a tensor like i to a Writer, with its
// own copy of the shape.
func (i Info) Spec() Spec {
	return Spec{Name: i.Name, DType: i.DType, Shape: slices.Clone(i.Shape)}
}

// header is a parsed and validated header.
type header struct {
	n     int64             // header length N: the data section starts at 8+N
	infos []Info            // sorted by name
	index map[string]int    // name → position in infos
	meta  map[string]string // __metadata__, empty (not nil) when absent
}

// readHeader reads and validates the header of a file of size bytes
// through ra, reading nothing outside bytes [0, 8+N). name labels errors
// and is stored in each Info's File field.
func readHeader(ra io.ReaderAt, size int64, name string) (*header, error) {
	if size < 8 {
		return nil, &Error{File: name, Offset: -1,
			Msg: fmt.Sprintf("file is %d bytes, shorter than the 8-byte header length", size)}
	}
	var prefix [8]byte
	if err := readFull(ra, prefix[:], 0); err != nil {
		return nil, fmt.Errorf("%s: reading header length: %w", name, err)
	}
	n := binary.LittleEndian.Uint64(prefix[:])
	if n > MaxHeaderSize {
		return nil, &Error{File: name, Offset: 0,
			Msg: fmt.Sprintf("header length %d exceeds the limit of %d bytes", n, MaxHeaderSize)}
	}
	if int64(n) > size-8 {
		return nil, &Error{File: name, Offset: 0,
			Msg: fmt.Sprintf("header length %d runs past the end of the file (%d bytes)", n, size)}
	}
	buf := make([]byte, n)
	if err := readFull(ra, buf, 8); err != nil {
		return nil, fmt.Errorf("%s: reading %d-byte header: %w", name, n, err)
	}
	return parseHeader(buf, size-8-int64(n), name)
}

// readFull fills b from ra at off; io.EOF with b filled is success, as
// io.ReaderAt allows.
func readFull(ra io.ReaderAt, b []byte, off int64) error {
	n, err := ra.ReadAt(b, off)
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// parseHeader validates the header JSON buf of a file whose data section
// is dataLen bytes long, following the rules in the package doc.
func parseHeader(buf []byte, dataLen int64, name string) (*header, error) {
	p := newParser(name, 8, buf)
	h := &header{n: int64(len(buf)), index: map[string]int{}, meta: map[string]string{}}
	if i := invalidUTF8(buf); i >= 0 {
		return nil, p.errAt("", 8+int64(i), "header is not valid UTF-8")
	}
	if len(bytes.TrimLeft(buf, " \t\r\n")) == 0 {
		return nil, p.errAt("", 8, "header is empty")
	}
	if err := p.open("", "header"); err != nil {
		return nil, err
	}
	seenMeta := false
	for p.dec.More() {
		at := p.next()
		key, err := p.key("")
		if err != nil {
			return nil, err
		}
		if key == metadataKey {
			if seenMeta {
				return nil, p.errAt("", at, "duplicate "+metadataKey)
			}
			seenMeta = true
			if h.meta, err = p.stringMap("", metadataKey); err != nil {
				return nil, err
			}
			continue
		}
		if _, dup := h.index[key]; dup {
			return nil, p.errAt(key, at, "duplicate tensor name")
		}
		info, err := p.entry(key, at, dataLen)
		if err != nil {
			return nil, err
		}
		h.index[key] = len(h.infos)
		h.infos = append(h.infos, info)
	}
	if err := p.close("", "header"); err != nil {
		return nil, err
	}
	// Only JSON whitespace (the writer's padding) may follow the object.
	end := p.next()
	if _, err := p.dec.Token(); err != io.EOF {
		return nil, p.errAt("", end, "data after the header's JSON object")
	}
	if err := checkLayout(h.infos, h.n, dataLen, name); err != nil {
		return nil, err
	}
	slices.SortFunc(h.infos, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	for i, info := range h.infos {
		h.index[info.Name] = i
	}
	return h, nil
}

// checkLayout verifies that the tensors' byte ranges tile the data section
// [0, dataLen) exactly: no overlap, no gap, nothing after the last tensor.
// infos is reordered by offsets.
func checkLayout(infos []Info, n, dataLen int64, file string) error {
	slices.SortFunc(infos, func(a, b Info) int {
		if c := cmp.Compare(a.Begin, b.Begin); c != 0 {
			return c
		}
		if c := cmp.Compare(a.End, b.End); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	var pos int64 // end of the covered prefix
	prev := ""    // tensor ending at pos
	for _, t := range infos {
		switch {
		case t.Begin < pos:
			return &Error{File: file, Tensor: t.Name, Offset: 8 + n + t.Begin,
				Msg: fmt.Sprintf("data_offsets [%d, %d] overlap tensor %q, which ends at %d", t.Begin, t.End, prev, pos)}
		case t.Begin > pos:
			return &Error{File: file, Tensor: t.Name, Offset: 8 + n + pos,
				Msg: fmt.Sprintf("data_offsets [%d, %d] leave a gap: bytes [%d, %d) of the data section belong to no tensor", t.Begin, t.End, pos, t.Begin)}
		}
		pos, prev = t.End, t.Name
	}
	if pos != dataLen {
		return &Error{File: file, Offset: 8 + n + pos,
			Msg: fmt.Sprintf("%d bytes after the last tensor belong to no tensor", dataLen-pos)}
	}
	return nil
}

// headerParser walks a JSON document token by token so that duplicate keys,
// which encoding/json silently collapses, are seen. Values of interest are
// decoded with Decode, which bounds nesting depth.
type headerParser struct {
	file string
	base int64  // absolute file offset of the JSON's first byte
	src  []byte // the JSON
	dec  *json.Decoder
}

func newParser(file string, base int64, src []byte) *headerParser {
	return &headerParser{file: file, base: base, src: src, dec: json.NewDecoder(bytes.NewReader(src))}
}

// pos returns the absolute offset just after the last token read.
func (p *headerParser) pos() int64 { return p.base + p.dec.InputOffset() }

// next returns the absolute offset of the next token, skipping whitespace
// and separators.
func (p *headerParser) next() int64 {
	i := p.dec.InputOffset()
	for i < int64(len(p.src)) && strings.IndexByte(" \t\r\n,:", p.src[i]) >= 0 {
		i++
	}
	return p.base + i
}

func (p *headerParser) errAt(tensor string, off int64, msg string) *Error {
	return &Error{File: p.file, Tensor: tensor, Offset: off, Msg: msg}
}

// jsonErr turns a decoder error into an *Error at the end of the last
// token read; io.EOF inside a document means the JSON was cut short.
func (p *headerParser) jsonErr(tensor string, err error) *Error {
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return p.errAt(tensor, p.pos(), "invalid JSON: "+err.Error())
}

// open consumes a '{' token; what names the value in the message.
func (p *headerParser) open(tensor, what string) error {
	at := p.next()
	tok, err := p.dec.Token()
	if err != nil {
		return p.jsonErr(tensor, err)
	}
	if tok != json.Delim('{') {
		return p.errAt(tensor, at, what+" is not a JSON object")
	}
	return nil
}

// close consumes the '}' ending an object whose members were all read.
func (p *headerParser) close(tensor, what string) error {
	tok, err := p.dec.Token()
	if err != nil {
		return p.jsonErr(tensor, err)
	}
	if tok != json.Delim('}') {
		return p.errAt(tensor, p.pos(), what+": unexpected "+fmt.Sprint(tok))
	}
	return nil
}

// key reads an object key.
func (p *headerParser) key(tensor string) (string, error) {
	tok, err := p.dec.Token()
	if err != nil {
		return "", p.jsonErr(tensor, err)
	}
	s, ok := tok.(string)
	if !ok { // the decoder only yields strings in key position
		return "", p.errAt(tensor, p.pos(), fmt.Sprintf("object key is %v, not a string", tok))
	}
	return s, nil
}

// raw reads the next value whole.
func (p *headerParser) raw(tensor string) (json.RawMessage, int64, error) {
	var v json.RawMessage
	if err := p.dec.Decode(&v); err != nil {
		return nil, 0, p.jsonErr(tensor, err)
	}
	// The value ends at the decoder's offset; report where it starts.
	return v, p.pos() - int64(len(v)), nil
}

// stringMap reads an object of string→string with unique keys.
func (p *headerParser) stringMap(tensor, what string) (map[string]string, error) {
	if err := p.open(tensor, what); err != nil {
		return nil, err
	}
	m := map[string]string{}
	for p.dec.More() {
		at := p.next()
		k, err := p.key(tensor)
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, p.errAt(tensor, at, fmt.Sprintf("%s: duplicate key %q", what, k))
		}
		v, vat, err := p.raw(tensor)
		if err != nil {
			return nil, err
		}
		var s string
		if v[0] != '"' || json.Unmarshal(v, &s) != nil {
			return nil, p.errAt(tensor, vat, fmt.Sprintf("%s: value of %q is not a string", what, k))
		}
		m[k] = s
	}
	return m, p.close(tensor, what)
}

// entry reads one tensor's header entry {"dtype", "shape", "data_offsets"}
// (other fields are ignored) and checks it on its own: known dtype,
// non-negative dimensions whose byte size does not overflow, begin ≤ end ≤
// dataLen, and end − begin equal to the byte size. at is the offset of the
// entry's key.
func (p *headerParser) entry(name string, at, dataLen int64) (Info, error) {
	info := Info{Name: name, File: p.file}
	if err := p.open(name, "entry"); err != nil {
		return info, err
	}
	seen := map[string]bool{}
	for p.dec.More() {
		fat := p.next()
		field, err := p.key(name)
		if err != nil {
			return info, err
		}
		if seen[field] {
			return info, p.errAt(name, fat, fmt.Sprintf("duplicate field %q", field))
		}
		seen[field] = true
		v, vat, err := p.raw(name)
		if err != nil {
			return info, err
		}
		switch field {
		case "dtype":
			var s string
			if v[0] != '"' || json.Unmarshal(v, &s) != nil {
				return info, p.errAt(name, vat, "dtype is not a string")
			}
			info.DType = DType(s)
			if !info.DType.Known() {
				return info, p.errAt(name, vat, fmt.Sprintf("unknown dtype %q", s))
			}
		case "shape":
			if info.Shape, err = intList(v); err != nil {
				return info, p.errAt(name, vat, "shape: "+err.Error())
			}
			if info.Shape == nil {
				info.Shape = []int64{}
			}
		case "data_offsets":
			offs, err := intList(v)
			if err != nil {
				return info, p.errAt(name, vat, "data_offsets: "+err.Error())
			}
			if len(offs) != 2 {
				return info, p.errAt(name, vat, fmt.Sprintf("data_offsets has %d values, want [begin, end]", len(offs)))
			}
			info.Begin, info.End = offs[0], offs[1]
		}
	}
	if err := p.close(name, "entry"); err != nil {
		return info, err
	}
	for _, f := range [...]string{"dtype", "shape", "data_offsets"} {
		if !seen[f] {
			return info, p.errAt(name, at, "entry has no "+f)
		}
	}
	size, ok := byteSize(info.DType, info.Shape)
	if !ok {
		return info, p.errAt(name, at, fmt.Sprintf("shape %v of %s overflows the byte count", info.Shape, info.DType))
	}
	switch {
	case info.Begin > info.End:
		return info, p.errAt(name, at, fmt.Sprintf("data_offsets [%d, %d]: begin > end", info.Begin, info.End))
	case info.End > dataLen:
		return info, p.errAt(name, at, fmt.Sprintf("data_offsets [%d, %d] run past the end of the %d-byte data section", info.Begin, info.End, dataLen))
	case info.End-info.Begin != size:
		return info, p.errAt(name, at, fmt.Sprintf("%s %v is %d bytes but data_offsets [%d, %d] span %d", info.DType, info.Shape, size, info.Begin, info.End, info.End-info.Begin))
	}
	return info, nil
}

// intList parses a JSON array of non-negative integers fitting int64.
// Integers must be written as such: 2.0, 2e3 and "2" are rejected.
func intList(v json.RawMessage) ([]int64, error) {
	var elems []json.RawMessage
	if v[0] != '[' || json.Unmarshal(v, &elems) != nil {
		return nil, errors.New("not a JSON array")
	}
	out := make([]int64, len(elems))
	for i, e := range elems {
		s := string(bytes.TrimSpace(e))
		x, err := strconv.ParseInt(s, 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange):
			return nil, fmt.Errorf("value %s out of range", s)
		case err != nil:
			return nil, fmt.Errorf("value %s is not an integer", s)
		case x < 0:
			return nil, fmt.Errorf("value %s is negative", s)
		}
		out[i] = x
	}
	return out, nil
}

// byteSize returns product(shape) × d.Size(), false if the running product
// overflows int64 (checked left to right, as the reference implementation
// does, so a zero after an overflow does not rescue the shape).
func byteSize(d DType, shape []int64) (int64, bool) {
	n := int64(d.Size())
	for _, x := range shape {
		if x != 0 && n > math.MaxInt64/x {
			return 0, false
		}
		n *= x
	}
	return n, true
}

// invalidUTF8 returns the index of the first byte of b that is not part of
// valid UTF-8, or -1.
func invalidUTF8(b []byte) int {
	if utf8.Valid(b) {
		return -1
	}
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && size == 1 {
			return i
		}
		i += size
	}
	return -1
}

// names returns the tensor names in sorted order, in a new slice.
func (h *header) names() []string {
	names := make([]string, len(h.infos))
	for i, info := range h.infos {
		names[i] = info.Name
	}
	return names
}

// info returns the header entry of the named tensor with its own copy of
// the shape.
func (h *header) info(name string) (Info, bool) {
	i, ok := h.index[name]
	if !ok {
		return Info{}, false
	}
	info := h.infos[i]
	info.Shape = slices.Clone(info.Shape)
	return info, true
}

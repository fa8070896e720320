package safetensors

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"sync"
)

// MemFile is a safetensors file held in memory, validated like a file on
// disk. Parsers built on Reader use it to be fuzzed without touching the
// file system. A MemFile is safe for concurrent use.
type MemFile struct {
	name string
	b    []byte
	hdr  *header

	mu     sync.Mutex
	closed bool
}

var _ Reader = (*MemFile)(nil)

// OpenBytes validates the header of the safetensors file whose bytes are b
// by the rules of Open (the package doc) and returns a Reader over it;
// name stands for the path in errors and in each Info's File field.
// Malformed bytes give the *Error Open gives for the same bytes on disk at
// path name. The slices Bytes returns alias b, which the caller must not
// modify while the MemFile is in use; nothing is copied.
func OpenBytes(name string, b []byte) (*MemFile, error) {
	h, err := readHeader(bytes.NewReader(b), int64(len(b)), name)
	if err != nil {
		return nil, err
	}
	return &MemFile{name: name, b: b, hdr: h}, nil
}

// Path returns the name given to OpenBytes.
func (f *MemFile) Path() string { return f.name }

// Names returns the tensor names in sorted order, in a new slice.
func (f *MemFile) Names() []string { return f.hdr.names() }

// Info returns the header entry of the named tensor; the Shape is the
// caller's own copy.
func (f *MemFile) Info(name string) (Info, bool) { return f.hdr.info(name) }

// Metadata returns a copy of the header's __metadata__ (empty when there
// is none).
func (f *MemFile) Metadata() map[string]string { return maps.Clone(f.hdr.meta) }

// HeaderSize returns N, the header length; tensor data starts at byte 8+N.
func (f *MemFile) HeaderSize() int64 { return f.hdr.n }

// Bytes returns the named tensor's raw little-endian bytes, End − Begin of
// them, as a slice of the bytes given to OpenBytes with capacity equal to
// its length.
func (f *MemFile) Bytes(name string) ([]byte, error) {
	i, ok := f.hdr.index[name]
	if !ok {
		return nil, &Error{File: f.name, Tensor: name, Offset: -1, Msg: "no such tensor"}
	}
	f.mu.Lock()
	closed := f.closed
	f.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.name, name, os.ErrClosed)
	}
	info := f.hdr.infos[i]
	lo, hi := 8+f.hdr.n+info.Begin, 8+f.hdr.n+info.End
	return f.b[lo:hi:hi], nil
}

// Close marks the MemFile closed: Bytes fails afterwards. Closing twice
// returns an error wrapping os.ErrClosed.
func (f *MemFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("%s: %w", f.name, os.ErrClosed)
	}
	f.closed = true
	return nil
}

package safetensors

import (
	"fmt"
	"io"
	"maps"
	"os"
	"sync"
)

// Reader is the read side shared by one File and a sharded Checkpoint.
type Reader interface {
	Names() []string                   // sorted tensor names
	Info(name string) (Info, bool)     // header entry
	Bytes(name string) ([]byte, error) // raw little-endian bytes (memory-mapped; valid until Close)
	Metadata() map[string]string
	Close() error
}

var (
	_ Reader = (*File)(nil)
	_ Reader = (*Checkpoint)(nil)
)

// File is one open .safetensors file. Open reads and validates only the
// header; tensor bytes are reached through a read-only memory mapping made
// on the first Bytes call, so pages are read from disk only as they are
// touched. A File is safe for concurrent use.
type File struct {
	path string
	f    *os.File
	size int64
	hdr  *header

	mu     sync.Mutex
	data   mapping // whole file, nil until the first Bytes
	closed bool
}

// Open opens the safetensors file at path and validates its header (see
// the package doc for the rules). Malformed files give an *Error naming
// path; nothing beyond the header is read.
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
	h, err := readHeader(f, st.Size(), path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &File{path: path, f: f, size: st.Size(), hdr: h}, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Names returns the tensor names in sorted order, in a new slice.
func (f *File) Names() []string { return f.hdr.names() }

// Info returns the header entry of the named tensor; the Shape is the
// caller's own copy.
func (f *File) Info(name string) (Info, bool) { return f.hdr.info(name) }

// Metadata returns a copy of the header's __metadata__ (empty when the
// file has none).
func (f *File) Metadata() map[string]string { return maps.Clone(f.hdr.meta) }

// HeaderSize returns N, the header length; tensor data starts at byte 8+N.
func (f *File) HeaderSize() int64 { return f.hdr.n }

// Bytes returns the named tensor's raw little-endian bytes, End − Begin of
// them. The slice aliases a read-only mapping of the file: writing to it
// faults, and it must not be used after Close. Its capacity equals its
// length. If the file shrinks on disk while mapped, touching the lost
// pages faults (SIGBUS); Bytes checks the size once, when it maps.
func (f *File) Bytes(name string) ([]byte, error) {
	i, ok := f.hdr.index[name]
	if !ok {
		return nil, &Error{File: f.path, Tensor: name, Offset: -1, Msg: "no such tensor"}
	}
	info := f.hdr.infos[i]
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, fmt.Errorf("%s: tensor %q: %w", f.path, name, os.ErrClosed)
	}
	if info.Begin == info.End {
		return []byte{}, nil
	}
	if f.data == nil {
		if err := f.mapFile(); err != nil {
			return nil, err
		}
	}
	lo := 8 + f.hdr.n + info.Begin
	hi := 8 + f.hdr.n + info.End
	return f.data.slice(lo, hi), nil
}

// mapFile maps the whole file; f.mu is held.
func (f *File) mapFile() error {
	st, err := f.f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != f.size {
		return &Error{File: f.path, Offset: -1,
			Msg: fmt.Sprintf("file changed size from %d to %d bytes since Open", f.size, st.Size())}
	}
	m, err := mapReadOnly(f.f, f.size)
	if err != nil {
		return fmt.Errorf("%s: mapping %d bytes: %w", f.path, f.size, err)
	}
	f.data = m
	return nil
}

// Close unmaps and closes the file. Slices from Bytes become invalid.
// Closing twice returns an error wrapping os.ErrClosed.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("%s: %w", f.path, os.ErrClosed)
	}
	f.closed = true
	var err error
	if f.data != nil {
		err = f.data.unmap()
		f.data = nil
	}
	if cerr := f.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// SectionReader returns an io.SectionReader over the named tensor's bytes
// that reads through the file descriptor instead of the mapping; it is
// valid until Close.
func (f *File) SectionReader(name string) (*io.SectionReader, error) {
	i, ok := f.hdr.index[name]
	if !ok {
		return nil, &Error{File: f.path, Tensor: name, Offset: -1, Msg: "no such tensor"}
	}
	info := f.hdr.infos[i]
	return io.NewSectionReader(f.f, 8+f.hdr.n+info.Begin, info.End-info.Begin), nil
}

package safetensors

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// Spec declares one tensor of a file being written.
type Spec struct {
	Name  string
	DType DType
	Shape []int64
}

// Tensor is a Spec with its raw little-endian bytes, for WriteFile.
type Tensor struct {
	Spec
	Data []byte
}

// Option configures Create.
type Option func(*options)

type options struct {
	reserve int
	wrap    func(path string, f io.WriterAt) io.WriterAt
}

// WrapWrites routes every write of the file's bytes (tensor data and
// header) through wrap(destination path, temporary file): a test injects
// a failing writer (a full disk, ENOSPC) there. The wrapper must write
// through to f for the file to be correct; an error it returns fails the
// Write (or Close) as the file's own would.
func WrapWrites(wrap func(path string, f io.WriterAt) io.WriterAt) Option {
	return func(o *options) { o.wrap = wrap }
}

// ReserveHeader leaves room for n more bytes of header JSON than the
// metadata given to Create needs, so that SetMetadata can later store
// longer values (n rounded up with the header to a multiple of 8). It
// panics if n < 0.
func ReserveHeader(n int) Option {
	if n < 0 {
		panic("safetensors: ReserveHeader: negative size")
	}
	return func(o *options) { o.reserve = n }
}

// Writer streams one safetensors file. Create fixes the layout: tensors
// ordered by decreasing dtype size then by name (so that every tensor is
// aligned to its element size), data contiguous, the header padded with
// spaces to a multiple of 8. Tensor bytes are then written in any order,
// from any goroutine, straight to their final offsets in a temporary file
// next to the destination (named .NAME.tmp-PID-DIGITS: see temp.go);
// Close writes the header and renames the file into place. The same specs,
// metadata and options give byte-identical files. Every Writer not yet
// closed or aborted is known to AbortAll.
type Writer struct {
	path string // destination
	tmp  string // temporary file in the same directory
	f    *os.File
	wa   io.WriterAt // f, or the WrapWrites wrapper around it

	order   []*slot          // data order
	slots   map[string]*slot // by name
	dataLen int64
	n       int64 // header length N, fixed at Create

	mu       sync.Mutex
	inflight sync.WaitGroup // Writes between claim and WriteAt's return
	meta     map[string]string
	pending  int   // tensors not yet written
	err      error // first write failure; Close reports it
	done     bool  // closed or aborted
}

type slot struct {
	spec       Spec
	begin, end int64
	written    bool
}

// Create validates specs and meta, computes every offset and the header
// size, and creates the temporary file. Errors name path and the tensor:
// an empty, duplicate, reserved ("__metadata__") or non-UTF-8 name, an
// unknown dtype, a negative dimension, a byte size overflowing int64,
// non-UTF-8 metadata, a header over MaxHeaderSize, or a missing directory.
// On error nothing is left on disk.
func Create(path string, specs []Spec, meta map[string]string, opts ...Option) (*Writer, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	w := &Writer{path: path, slots: make(map[string]*slot, len(specs))}
	for _, s := range specs {
		if err := w.checkSpec(s); err != nil {
			return nil, err
		}
		w.slots[s.Name] = &slot{spec: Spec{Name: s.Name, DType: s.DType, Shape: slices.Clone(s.Shape)}}
	}
	w.order = slices.Collect(maps.Values(w.slots))
	slices.SortFunc(w.order, func(a, b *slot) int {
		if c := cmp.Compare(b.spec.DType.Size(), a.spec.DType.Size()); c != 0 {
			return c
		}
		return strings.Compare(a.spec.Name, b.spec.Name)
	})
	for _, s := range w.order {
		size, _ := byteSize(s.spec.DType, s.spec.Shape)
		if w.dataLen > math.MaxInt64-size {
			return nil, &Error{File: path, Tensor: s.spec.Name, Offset: -1, Msg: "total data size overflows int64"}
		}
		s.begin, s.end = w.dataLen, w.dataLen+size
		w.dataLen += size
	}
	w.pending = len(w.order)
	if err := checkMeta(path, meta); err != nil {
		return nil, err
	}
	w.meta = maps.Clone(meta)
	w.n = int64(roundUp8(len(w.headerJSON(meta)) + min(o.reserve, MaxHeaderSize)))
	if w.n > MaxHeaderSize {
		return nil, &Error{File: path, Offset: -1,
			Msg: fmt.Sprintf("header of %d bytes exceeds the limit of %d", w.n, MaxHeaderSize)}
	}

	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return nil, fmt.Errorf("safetensors: create %s: is a directory", path)
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return nil, fmt.Errorf("safetensors: create %s: directory %s does not exist", path, dir)
	}
	var f *os.File
	if err := register(w, func() error { // AbortAll sees w as soon as its file exists
		var err error
		if f, err = os.CreateTemp(dir, tempPattern(base)); err != nil {
			return fmt.Errorf("safetensors: create %s: %w", path, err)
		}
		w.f, w.tmp, w.wa = f, f.Name(), f
		if o.wrap != nil {
			w.wa = o.wrap(path, f)
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if err := f.Truncate(8 + w.n + w.dataLen); err != nil {
		w.Abort()
		return nil, fmt.Errorf("safetensors: create %s: %w", path, err)
	}
	return w, nil
}

func (w *Writer) checkSpec(s Spec) error {
	bad := func(msg string) error { return &Error{File: w.path, Tensor: s.Name, Offset: -1, Msg: msg} }
	switch {
	case s.Name == "":
		return bad("empty tensor name")
	case s.Name == metadataKey:
		return bad("the name " + metadataKey + " is reserved")
	case !utf8.ValidString(s.Name):
		return bad("tensor name is not valid UTF-8")
	case w.slots[s.Name] != nil:
		return bad("tensor declared twice")
	case !s.DType.Known():
		return bad(fmt.Sprintf("unknown dtype %q", s.DType))
	}
	for _, d := range s.Shape {
		if d < 0 {
			return bad(fmt.Sprintf("negative dimension in shape %v", s.Shape))
		}
	}
	if _, ok := byteSize(s.DType, s.Shape); !ok {
		return bad(fmt.Sprintf("shape %v of %s overflows the byte count", s.Shape, s.DType))
	}
	return nil
}

func checkMeta(path string, meta map[string]string) error {
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		if !utf8.ValidString(k) || !utf8.ValidString(meta[k]) {
			return &Error{File: path, Offset: -1, Msg: fmt.Sprintf("metadata %q is not valid UTF-8", k)}
		}
	}
	return nil
}

// Path returns the destination path.
func (w *Writer) Path() string { return w.path }

// Write stores the bytes of the named tensor, which must be exactly
// product(shape) × dtype size long. Each declared tensor is written exactly
// once, in any order; Write is safe for concurrent use. The data is copied
// to the file before Write returns.
func (w *Writer) Write(name string, data []byte) error {
	w.mu.Lock()
	s, err := w.claim(name, int64(len(data)))
	if err == nil {
		w.inflight.Add(1)
	}
	w.mu.Unlock()
	if err != nil {
		return err
	}
	defer w.inflight.Done()
	if len(data) == 0 {
		return nil
	}
	if _, err := w.wa.WriteAt(data, 8+w.n+s.begin); err != nil {
		err = fmt.Errorf("%s: tensor %q: %w", w.path, name, err)
		w.mu.Lock()
		if w.err == nil {
			w.err = err
		}
		w.mu.Unlock()
		return err
	}
	return nil
}

// claim marks the named tensor written after checking its size; w.mu is
// held.
func (w *Writer) claim(name string, size int64) (*slot, error) {
	bad := func(msg string) error { return &Error{File: w.path, Tensor: name, Offset: -1, Msg: msg} }
	if w.done {
		return nil, fmt.Errorf("%s: tensor %q: %w", w.path, name, os.ErrClosed)
	}
	s := w.slots[name]
	switch {
	case s == nil:
		return nil, bad("tensor was not declared to Create")
	case s.written:
		return nil, bad("tensor written twice")
	case size != s.end-s.begin:
		return nil, bad(fmt.Sprintf("got %d bytes, want %d for %s %v", size, s.end-s.begin, s.spec.DType, s.spec.Shape))
	}
	s.written = true
	w.pending--
	return s, nil
}

// Copy writes tensor src of r as the declared tensor dst, whose dtype and
// shape must equal src's.
func (w *Writer) Copy(dst string, r Reader, src string) error {
	info, ok := r.Info(src)
	if !ok {
		return fmt.Errorf("%s: tensor %q: copy source %q not found", w.path, dst, src)
	}
	s := w.slots[dst] // fixed at Create: safe to read without the lock
	if s == nil {
		return &Error{File: w.path, Tensor: dst, Offset: -1, Msg: "tensor was not declared to Create"}
	}
	if info.DType != s.spec.DType || !slices.Equal(info.Shape, s.spec.Shape) {
		return &Error{File: w.path, Tensor: dst, Offset: -1,
			Msg: fmt.Sprintf("declared %s %v, but source %q in %s is %s %v", s.spec.DType, s.spec.Shape, src, info.File, info.DType, info.Shape)}
	}
	data, err := r.Bytes(src)
	if err != nil {
		return err
	}
	return w.Write(dst, data)
}

// SetMetadata replaces the metadata given to Create. The header it gives
// must fit in the header size fixed at Create (see ReserveHeader);
// otherwise SetMetadata returns an error and keeps the previous metadata.
func (w *Writer) SetMetadata(meta map[string]string) error {
	if err := checkMeta(w.path, meta); err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return fmt.Errorf("%s: %w", w.path, os.ErrClosed)
	}
	if n := len(w.headerJSON(meta)); int64(n) > w.n {
		return &Error{File: w.path, Offset: -1,
			Msg: fmt.Sprintf("metadata makes a %d-byte header, but Create fixed its size at %d bytes (reserve room with ReserveHeader)", n, w.n)}
	}
	w.meta = maps.Clone(meta)
	return nil
}

// Close checks that every tensor was written, writes the header, syncs the
// file and renames it onto the destination path. Whatever happens, the
// temporary file is gone when Close returns; on error the destination is
// untouched. Calling Close or Write after Close or Abort is an error.
func (w *Writer) Close() error {
	if !w.stop() {
		return fmt.Errorf("%s: %w", w.path, os.ErrClosed)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.finish()
	if err != nil {
		w.abort()
	}
	return err
}

// stop marks the writer done, so that no Write starts, and waits for the
// Writes in flight; it reports false if the writer was already done.
func (w *Writer) stop() bool {
	w.mu.Lock()
	was := w.done
	w.done = true
	w.mu.Unlock()
	if !was {
		unregister(w)
		w.inflight.Wait()
	}
	return !was
}

// finish does Close's work; w.mu is held.
func (w *Writer) finish() error {
	if w.err != nil {
		return w.err
	}
	if w.pending > 0 {
		var missing []string
		for _, s := range w.order {
			if !s.written {
				missing = append(missing, strconv.Quote(s.spec.Name))
			}
		}
		more := ""
		if len(missing) > 5 {
			more = fmt.Sprintf(" and %d more", len(missing)-5)
			missing = missing[:5]
		}
		return &Error{File: w.path, Offset: -1,
			Msg: fmt.Sprintf("%d tensors never written: %s%s", w.pending, strings.Join(missing, ", "), more)}
	}
	js := w.headerJSON(w.meta)
	hdr := make([]byte, 8+w.n)
	binary.LittleEndian.PutUint64(hdr, uint64(w.n))
	copy(hdr[8:], js)
	for i := 8 + len(js); i < len(hdr); i++ {
		hdr[i] = ' '
	}
	if _, err := w.wa.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("%s: writing header: %w", w.path, err)
	}
	if err := w.f.Chmod(0o644); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	err := w.f.Close()
	w.f = nil
	if err != nil {
		return fmt.Errorf("%s: %w", w.path, err)
	}
	if err := os.Rename(w.tmp, w.path); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	// Make the rename durable; some file systems cannot sync directories,
	// and the file itself is already safe, so errors are not reported.
	if d, err := os.Open(filepath.Dir(w.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// Abort discards the file being written: the temporary file is removed and
// the destination untouched. Abort after Close or Abort does nothing and
// returns nil, so `defer w.Abort()` right after Create is the usual
// pattern.
func (w *Writer) Abort() error {
	if !w.stop() {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.abort()
}

// abort closes and removes the temporary file; w.mu is held.
func (w *Writer) abort() error {
	var errs []error
	if w.f != nil {
		errs = append(errs, w.f.Close())
		w.f = nil
	}
	if err := os.Remove(w.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// headerJSON encodes the header: __metadata__ first (omitted when empty,
// keys sorted), then the tensors in data order, each as
// {"dtype":…,"shape":[…],"data_offsets":[begin,end]}; no whitespace.
func (w *Writer) headerJSON(meta map[string]string) []byte {
	b := []byte{'{'}
	sep := false
	if len(meta) > 0 {
		b = appendJSONString(b, metadataKey)
		b = append(b, ':', '{')
		for i, k := range slices.Sorted(maps.Keys(meta)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, meta[k])
		}
		b = append(b, '}')
		sep = true
	}
	for _, s := range w.order {
		if sep {
			b = append(b, ',')
		}
		sep = true
		b = appendJSONString(b, s.spec.Name)
		b = append(b, `:{"dtype":`...)
		b = appendJSONString(b, string(s.spec.DType))
		b = append(b, `,"shape":[`...)
		for i, d := range s.spec.Shape {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendInt(b, d, 10)
		}
		b = append(b, `],"data_offsets":[`...)
		b = strconv.AppendInt(b, s.begin, 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, s.end, 10)
		b = append(b, ']', '}')
	}
	return append(b, '}')
}

// appendJSONString appends s, valid UTF-8, as a JSON string: '"' and '\\'
// escaped, control characters as \n, \r, \t or \u00XX, the rest verbatim.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

func roundUp8(n int) int { return (n + 7) &^ 7 }

// WriteFile writes tensors and meta to path in one go (see Create; opts
// are passed on). On error nothing is left on disk.
func WriteFile(path string, tensors []Tensor, meta map[string]string, opts ...Option) error {
	specs := make([]Spec, len(tensors))
	for i, t := range tensors {
		specs[i] = t.Spec
	}
	w, err := Create(path, specs, meta, opts...)
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, t := range tensors {
		if err := w.Write(t.Name, t.Data); err != nil {
			return err
		}
	}
	return w.Close()
}

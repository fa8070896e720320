//go:build !unix

package safetensors

import (
	"io"
	"os"
)

// mapping is a whole file read into memory: the fallback where mmap is not
// available. It is read on the first Bytes call, not at Open.
type mapping []byte

func mapReadOnly(f *os.File, size int64) (mapping, error) {
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && err != io.EOF {
		return nil, err
	}
	return mapping(b), nil
}

func (m mapping) slice(lo, hi int64) []byte { return m[lo:hi:hi] }

func (m mapping) unmap() error { return nil }

//go:build unix

package safetensors

import (
	"os"

	"golang.org/x/sys/unix"
)

// mapping is a read-only view of a whole file.
type mapping []byte

// mapReadOnly maps size bytes of f read-only and shared; no page is read
// until it is touched. size must be positive.
func mapReadOnly(f *os.File, size int64) (mapping, error) {
	if int64(int(size)) != size {
		return nil, unix.EFBIG
	}
	b, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	return mapping(b), nil
}

// slice returns bytes [lo, hi) with capacity hi − lo.
func (m mapping) slice(lo, hi int64) []byte { return m[lo:hi:hi] }

func (m mapping) unmap() error { return unix.Munmap(m) }

//go:build unix

package model

import (
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dropPages tells the kernel that this process no longer needs the
// resident pages of b, which must be a read-only shared file mapping (what
// safetensors.Reader.Bytes returns): they leave the process's resident set
// and are read again from the page cache or the disk if touched. Only the
// whole pages inside b are dropped. Errors are ignored: it is a hint.
func dropPages(b []byte) {
	if len(b) == 0 {
		return
	}
	ps := uintptr(os.Getpagesize())
	start := uintptr(unsafe.Pointer(&b[0]))
	lo := int((ps - start%ps) % ps)
	hi := len(b) - int((start+uintptr(len(b)))%ps)
	if hi-lo < int(ps) {
		return
	}
	_ = unix.Madvise(b[lo:hi], unix.MADV_DONTNEED)
}

package safetensors

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestLazySparse opens a file whose 2 GiB data section is a hole, reads a
// small tensor at its end, and checks with mincore that the big tensor's
// pages were never brought into memory.
func TestLazySparse(t *testing.T) {
	const big = 2 << 30
	p := filepath.Join(t.TempDir(), "sparse.safetensors")
	hdr := fmt.Sprintf(`{"big":{"dtype":"U8","shape":[%d],"data_offsets":[0,%d]},"small":{"dtype":"F32","shape":[2],"data_offsets":[%d,%d]}}`,
		big, big, big, big+8)
	for len(hdr)%8 != 0 {
		hdr += " "
	}
	fw, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	head := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	head = append(head, hdr...)
	dataStart := int64(len(head))
	small := []byte{1, 2, 3, 4, 5, 6, 7, 8}
	_, err1 := fw.Write(head)
	_, err2 := fw.WriteAt(small, dataStart+big)
	if err := fw.Close(); err != nil || err1 != nil || err2 != nil {
		t.Fatal(err, err1, err2)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 64<<20 {
		t.Skipf("file system did not make a sparse file (%d bytes allocated)", st.Blocks*512)
	}

	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.data != nil {
		t.Fatal("Open mapped the file")
	}
	b, err := f.Bytes("small")
	if err != nil || string(b) != string(small) {
		t.Fatalf("Bytes(small) = %v, %v", b, err)
	}
	bb, err := f.Bytes("big")
	if err != nil || len(bb) != big {
		t.Fatalf("Bytes(big): len %d, %v", len(bb), err)
	}
	// Pages of the big tensor away from both ends (the header page and the
	// readahead around the small tensor) must not be resident.
	page := int64(os.Getpagesize())
	lo := (dataStart + 64<<20) / page * page
	hi := (dataStart + big - 64<<20) / page * page
	vec := make([]byte, (hi-lo)/page)
	region := f.data[lo:hi]
	if _, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&region[0])), uintptr(len(region)), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatal(errno)
	}
	resident := 0
	for _, v := range vec {
		resident += int(v & 1)
	}
	if resident != 0 {
		t.Errorf("%d of %d pages of the untouched tensor are resident", resident, len(vec))
	}
	if bb[big/2] != 0 { // touching one page works (and reads a hole)
		t.Error("hole reads nonzero")
	}
}

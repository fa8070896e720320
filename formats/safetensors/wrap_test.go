package safetensors

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// failAt is an io.WriterAt that writes through to f until its n-th
// write, which fails with ENOSPC, as a full disk does.
type failAt struct {
	f     io.WriterAt
	n     int
	calls int
}

func (w *failAt) WriteAt(b []byte, off int64) (int, error) {
	w.calls++
	if w.calls == w.n {
		return 0, syscall.ENOSPC
	}
	return w.f.WriteAt(b, off)
}

// TestWrapWritesFullDisk: with every write going through WrapWrites, a
// write failing with ENOSPC (a tensor's, or the header's at Close) makes
// Write or Close fail with that error naming the file, and leaves neither
// the destination nor the temporary file; a wrapper that writes through
// gives the same bytes as none.
func TestWrapWritesFullDisk(t *testing.T) {
	ts := randomTensors(3)
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain.safetensors")
	if err := WriteFile(plain, ts, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(plain)
	writes := 0
	for _, t := range ts {
		if len(t.Data) > 0 {
			writes++
		}
	}
	for n := 1; n <= writes+2; n++ { // the last: no failure
		path := filepath.Join(dir, "w.safetensors")
		var gotPath string
		err := WriteFile(path, ts, map[string]string{"k": "v"}, WrapWrites(func(p string, f io.WriterAt) io.WriterAt {
			gotPath = p
			return &failAt{f: f, n: n}
		}))
		if gotPath != path {
			t.Fatalf("wrapper called with %q, want %q", gotPath, path)
		}
		if n <= writes+1 { // tensor writes, then the header
			if !errors.Is(err, syscall.ENOSPC) || !bytes.Contains([]byte(err.Error()), []byte(path)) {
				t.Fatalf("write %d failing: err = %v", n, err)
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("write %d failing: destination exists", n)
			}
			if tmp, _ := TempFiles(dir); len(tmp) != 0 {
				t.Fatalf("write %d failing: temporary files left: %v", n, tmp)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		if !bytes.Equal(got, want) {
			t.Fatal("a write-through wrapper changed the bytes")
		}
	}
}

package safetensors

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestFileBytesLifecycle(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.safetensors")
	ts := randomTensors(4)
	if err := WriteFile(p, ts, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if f.data != nil {
		t.Error("Open mapped the file; mapping must wait for the first Bytes")
	}
	// Concurrent first use maps once and everyone sees the right bytes.
	var wg sync.WaitGroup
	for range 8 {
		for _, tt := range ts {
			wg.Go(func() {
				b, err := f.Bytes(tt.Name)
				if err != nil || !bytes.Equal(b, tt.Data) {
					t.Errorf("Bytes(%q) = %v, %v", tt.Name, b, err)
				}
				if cap(b) != len(b) {
					t.Errorf("Bytes(%q): cap %d > len %d", tt.Name, cap(b), len(b))
				}
			})
		}
	}
	wg.Wait()
	sr, err := f.SectionReader(ts[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(sr); err != nil || !bytes.Equal(b, ts[0].Data) {
		t.Errorf("SectionReader: %v, %v", b, err)
	}
	var se *Error
	if _, err := f.Bytes("missing"); !errors.As(err, &se) || se.Tensor != "missing" || se.File != p {
		t.Errorf("Bytes(missing) = %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Bytes(ts[0].Name); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Bytes after Close: %v", err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}

	if _, err := Open(dir); err == nil {
		t.Error("Open of a directory succeeded")
	}
	if _, err := Open(filepath.Join(dir, "absent.safetensors")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of a missing file: %v", err)
	}
}

// A file that changed size between Open and the first Bytes is refused
// rather than mapped past its end.
func TestFileShrunkBeforeMapping(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f.safetensors")
	if err := WriteFile(p, randomTensors(5), nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(p, 8+f.HeaderSize()); err != nil {
		t.Fatal(err)
	}
	var se *Error
	if _, err := f.Bytes(f.Names()[0]); !errors.As(err, &se) || se.File != p {
		t.Errorf("Bytes after truncation: %v", err)
	}
}

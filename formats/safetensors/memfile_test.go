package safetensors

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// TestOpenBytesCorpus: every corpus file gives OpenBytes the error Open
// gives it (same text, same *Error), and every valid one the same names,
// entries, metadata and bytes.
func TestOpenBytesCorpus(t *testing.T) {
	for _, c := range corpus() {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(corpusDir, c.name+".safetensors")
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			f, ferr := Open(p)
			m, merr := OpenBytes(p, b)
			if (ferr == nil) != (merr == nil) {
				t.Fatalf("Open: %v; OpenBytes: %v", ferr, merr)
			}
			if ferr != nil {
				var fe, me *Error
				if !errors.As(ferr, &fe) || !errors.As(merr, &me) || *fe != *me {
					t.Errorf("Open: %#v\nOpenBytes: %#v", ferr, merr)
				}
				return
			}
			defer f.Close()
			defer m.Close()
			checkInvariants(t, m.hdr, int64(len(b)))
			if !reflect.DeepEqual(f.Names(), m.Names()) || !reflect.DeepEqual(f.Metadata(), m.Metadata()) ||
				f.HeaderSize() != m.HeaderSize() || m.Path() != p {
				t.Fatalf("names %q / %q, metadata %v / %v, header %d / %d, path %q",
					f.Names(), m.Names(), f.Metadata(), m.Metadata(), f.HeaderSize(), m.HeaderSize(), m.Path())
			}
			for _, n := range f.Names() {
				fi, _ := f.Info(n)
				mi, ok := m.Info(n)
				fb, _ := f.Bytes(n)
				mb, err := m.Bytes(n)
				if !ok || !reflect.DeepEqual(fi, mi) || err != nil || !bytes.Equal(fb, mb) || cap(mb) != len(mb) {
					t.Errorf("%s: Info %+v / %+v, Bytes %v / %v (%v, cap %d)", n, fi, mi, fb, mb, err, cap(mb))
				}
			}
		})
	}
}

func TestOpenBytesClosed(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(corpusDir, "valid-scalar.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := OpenBytes("mem", b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Bytes("nope"); err == nil {
		t.Error("Bytes of a missing tensor: no error")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Bytes("s"); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Bytes after Close: %v", err)
	}
	if err := m.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
}

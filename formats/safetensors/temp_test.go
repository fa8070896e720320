package safetensors

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseTemp(t *testing.T) {
	for _, c := range []struct {
		name, target string
		pid          int
		ok           bool
	}{
		{".q.safetensors.tmp-4711-123", "q.safetensors", 4711, true},
		{".q.safetensors.tmp-123", "q.safetensors", 0, true}, // earlier versions
		{".a.tmp-b.tmp-1-2", "a.tmp-b", 1, true},
		{"q.safetensors.tmp-1-2", "", 0, false}, // not hidden
		{".q.safetensors.tmp-", "", 0, false},
		{".q.safetensors.tmp-x-1", "", 0, false},
		{".q.safetensors.tmp-1-", "", 0, false},
		{".tmp-1-2", "", 0, false},
		{".q.safetensors", "", 0, false},
	} {
		target, pid, ok := ParseTemp(c.name)
		if target != c.target || pid != c.pid || ok != c.ok {
			t.Errorf("ParseTemp(%q) = %q, %d, %v; want %q, %d, %v", c.name, target, pid, ok, c.target, c.pid, c.ok)
		}
	}
}

// TestTempFilesAndAbortAll: an open Writer's temporary file follows the
// pattern, is not listed by TempFiles (it is this process's) while other
// matching files are; AbortAll removes it and leaves the destination
// untouched, and Create and Probe fail afterwards.
func TestTempFilesAndAbortAll(t *testing.T) {
	defer func() { // the registry is process-wide: reopen it for other tests
		registry.Lock()
		registry.aborted = false
		registry.Unlock()
	}()
	dir := t.TempDir()
	dst := filepath.Join(dir, "x.safetensors")
	if err := os.WriteFile(dst, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, ".y.safetensors.tmp-1-2")
	if err := os.WriteFile(stale, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Create(dst, []Spec{{Name: "a", DType: F32, Shape: []int64{4}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if want := fmt.Sprintf(".x.safetensors.tmp-%d-", os.Getpid()); !strings.HasPrefix(filepath.Base(w.tmp), want) {
		t.Errorf("temporary file %s, want prefix %s", w.tmp, want)
	}
	ts, err := TempFiles(dir)
	if err != nil || len(ts) != 1 || ts[0] != (Temp{Path: stale, Target: filepath.Join(dir, "y.safetensors"), PID: 1}) {
		t.Errorf("TempFiles: %+v, %v", ts, err)
	}
	if err := Probe(dst); err != nil {
		t.Errorf("Probe: %v", err)
	}
	paths, err := AbortAll()
	if err != nil || len(paths) != 1 || paths[0] != dst {
		t.Errorf("AbortAll: %v, %v", paths, err)
	}
	if _, err := os.Stat(w.tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary file left: %v", err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "old" {
		t.Errorf("destination changed: %q", b)
	}
	if err := w.Write("a", make([]byte, 16)); err == nil {
		t.Error("Write after AbortAll succeeded")
	}
	if _, err := Create(filepath.Join(dir, "z.safetensors"), nil, nil); !errors.Is(err, errAborted) {
		t.Errorf("Create after AbortAll: %v", err)
	}
	if err := Probe(dst); !errors.Is(err, errAborted) {
		t.Errorf("Probe after AbortAll: %v", err)
	}
	if ts, _ := TempFiles(dir); len(ts) != 1 {
		t.Errorf("after AbortAll: %+v", ts)
	}
}

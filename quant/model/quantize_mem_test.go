package model

import (
	"bytes"
	"math"
	"path/filepath"
	"runtime/debug"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// TestReleaseTensors drops the mapped pages of tensors (one spanning many
// pages, one smaller than a page) and reads them again: the bytes are
// unchanged, and names the file lacks are ignored.
func TestReleaseTensors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	big := make([]byte, 5*4096+300)
	small := make([]byte, 100)
	for i := range big {
		big[i] = byte(i*7 + 3)
	}
	for i := range small {
		small[i] = byte(i + 1)
	}
	w, err := safetensors.Create(path, []safetensors.Spec{
		{Name: "big", DType: safetensors.U8, Shape: []int64{int64(len(big))}},
		{Name: "small", DType: safetensors.U8, Shape: []int64{int64(len(small))}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write("big", big); err != nil {
		t.Fatal(err)
	}
	if err := w.Write("small", small); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := safetensors.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for range 2 {
		releaseTensors(r, "big", "small", "missing", "")
		for name, want := range map[string][]byte{"big": big, "small": small} {
			got, err := r.Bytes(name)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("%s changed after releasing its pages", name)
			}
		}
	}
}

// TestLimitHeap: the job's heap limit applies only when none is set, and
// the previous limit comes back.
func TestLimitHeap(t *testing.T) {
	prev := debug.SetMemoryLimit(math.MaxInt64)
	defer debug.SetMemoryLimit(prev)
	restore := limitHeap()
	if got := debug.SetMemoryLimit(-1); got != JobHeapLimit {
		t.Errorf("limit during a job %d, want %d", got, JobHeapLimit)
	}
	restore()
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("limit after a job %d, want none", got)
	}
	debug.SetMemoryLimit(1 << 40)
	limitHeap()()
	if got := debug.SetMemoryLimit(-1); got != 1<<40 {
		t.Errorf("a set limit became %d", got)
	}
}

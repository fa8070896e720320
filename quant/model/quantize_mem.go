package model

import (
	"math"
	"runtime/debug"

	"github.com/svdq/svdq/formats/safetensors"
)

// Memory of a whole-checkpoint job. The checkpoint is memory-mapped: every
// page a job reads stays in its resident set until the kernel needs the
// memory, so a 24 GB FLUX.1 checkpoint read once would show as 24 GB of
// resident memory on a machine with that much free. The job drops a
// tensor's pages once it has decoded it (dropPages), which keeps the
// resident set at the tensors in flight plus the Go heap.

// JobHeapLimit is the soft limit on the Go heap that Quantize sets for its
// duration when the process has none (no GOMEMLIMIT, no
// debug.SetMemoryLimit): a unit's buffers are large pointer-free slices, so
// a garbage collection costs little, while the default GOGC=100 lets the
// heap grow to twice the live units (peak resident memory then, not
// time, is what a job runs out of).
const JobHeapLimit = 2 << 30

// limitHeap sets JobHeapLimit as the Go memory limit if none is set and
// returns the function that restores the previous one.
func limitHeap() (restore func()) {
	old := debug.SetMemoryLimit(-1)
	if old != math.MaxInt64 {
		return func() {}
	}
	debug.SetMemoryLimit(JobHeapLimit)
	return func() { debug.SetMemoryLimit(old) }
}

// releaseTensors drops the mapped pages of the named tensors of r (names
// r does not hold are skipped).
func releaseTensors(r safetensors.Reader, names ...string) {
	// Tensors a formats/source.Input computes (dequantized) are heap
	// bytes it may cache: drop them from its cache, never unmap them.
	computed, _ := r.(interface {
		Computed(string) bool
		Release(...string)
	})
	for _, n := range names {
		if computed != nil && computed.Computed(n) {
			computed.Release(n)
			continue
		}
		if n == "" {
			continue
		}
		if _, ok := r.Info(n); !ok {
			continue
		}
		if b, err := r.Bytes(n); err == nil {
			dropPages(b)
		}
	}
}

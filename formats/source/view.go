package source

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/svdq/svdq/formats/safetensors"
)

// entry is one tensor of a view: its header as presented, where its bytes
// come from (src in the underlying reader, or compute), and how it is
// stored in the file (for the summary).
type entry struct {
	info    safetensors.Info
	src     string
	compute func() ([]byte, error) // nil: the underlying bytes of src
	stored  string                 // stored form when computed ("Q4_K", "F8_E4M3 × scale_weight")
	size    int64                  // stored bytes when computed
}

// view is a safetensors.Reader over selected, renamed or computed tensors
// of an underlying reader (nil for GGUF, where every entry computes).
type view struct {
	r       safetensors.Reader
	entries map[string]*entry
	names   []string
	meta    map[string]string
	closer  func() error

	mu    sync.Mutex
	cache map[string][]byte // computed tensors, at most cacheSize
	order []string
}

// cacheSize bounds the computed tensors a view keeps: a layer's sources
// are read once per row block (FLUX's fused qkv three times).
const cacheSize = 4

var _ safetensors.Reader = (*view)(nil)

func newView(r safetensors.Reader, meta map[string]string, closer func() error) *view {
	return &view{r: r, entries: map[string]*entry{}, meta: meta, closer: closer, cache: map[string][]byte{}}
}

func (v *view) add(name string, e *entry) {
	e.info.Name = name
	v.entries[name] = e
}

func (v *view) seal() { v.names = slices.Sorted(maps.Keys(v.entries)) }

func (v *view) Names() []string { return slices.Clone(v.names) }

func (v *view) Info(name string) (safetensors.Info, bool) {
	e, ok := v.entries[name]
	if !ok {
		return safetensors.Info{}, false
	}
	i := e.info
	i.Shape = slices.Clone(i.Shape)
	return i, true
}

func (v *view) Metadata() map[string]string { return maps.Clone(v.meta) }

func (v *view) Bytes(name string) ([]byte, error) {
	e, ok := v.entries[name]
	if !ok {
		return nil, fmt.Errorf("no tensor %q", name)
	}
	if e.compute == nil {
		return v.r.Bytes(e.src)
	}
	v.mu.Lock()
	if b, ok := v.cache[name]; ok {
		v.mu.Unlock()
		return b, nil
	}
	v.mu.Unlock()
	b, err := e.compute()
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if _, ok := v.cache[name]; !ok {
		if len(v.order) == cacheSize {
			delete(v.cache, v.order[0])
			v.order = v.order[1:]
		}
		v.cache[name] = b
		v.order = append(v.order, name)
	}
	return b, nil
}

// release drops computed tensors from the cache.
func (v *view) release(names ...string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, n := range names {
		if _, ok := v.cache[n]; ok {
			delete(v.cache, n)
			v.order = slices.DeleteFunc(v.order, func(s string) bool { return s == n })
		}
	}
}

func (v *view) Close() error {
	if v.closer != nil {
		return v.closer()
	}
	if v.r != nil {
		return v.r.Close()
	}
	return nil
}

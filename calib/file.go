package calib

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"

	"github.com/svdq/svdq/formats/safetensors"
)

// Error is a fault of a calibration file, naming the file and, when it
// concerns one, the tensor.
type Error struct {
	File   string
	Tensor string // may be empty
	Msg    string
}

func (e *Error) Error() string {
	if e.Tensor == "" {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s: tensor %q: %s", e.File, e.Tensor, e.Msg)
}

// File is an open svdq-calib/1 file. Open validates the header (names,
// dtypes, shapes, metadata); Layer reads and validates one layer's values.
// A File is safe for concurrent use.
type File struct {
	path   string
	r      safetensors.Reader
	layers map[string]layerInfo
	names  []string
}

// layerInfo is what the header (and input_count) says about one layer.
type layerInfo struct {
	k, s     int
	samples  safetensors.DType
	hasCount bool
	count    int64 // input_count, checked by Open; 0 without one
}

// Open opens the calibration file at path and checks its header against the
// svdq-calib/1 rules (see the package doc), and every layer's input_count
// (8 bytes each): S ≤ count ≤ MaxCount. Errors are *Error or
// *safetensors.Error values naming the file and tensor, or the os error of
// opening it. The other tensors' data is read lazily by Layer.
func Open(path string) (*File, error) {
	r, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	f, err := newFile(path, r)
	if err != nil {
		r.Close()
		return nil, err
	}
	return f, nil
}

func newFile(path string, r safetensors.Reader) (*File, error) {
	bad := func(tensor, format string, a ...any) error {
		return &Error{File: path, Tensor: tensor, Msg: fmt.Sprintf(format, a...)}
	}
	meta := r.Metadata()
	if fm, ok := meta["format"]; !ok {
		return nil, bad("", "no \"format\" metadata: not a calibration file (want format %q)", Format)
	} else if fm != Format {
		return nil, bad("", "metadata format %q, want %q", fm, Format)
	}
	f := &File{path: path, r: r, layers: map[string]layerInfo{}}
	type parts struct{ absmax, samples, count *safetensors.Info }
	found := map[string]*parts{}
	for _, name := range r.Names() {
		info, _ := r.Info(name)
		var layer string
		var slot **safetensors.Info
		get := func(suffix string) bool {
			if l, ok := strings.CutSuffix(name, suffix); ok && l != "" {
				layer = l
				if found[l] == nil {
					found[l] = &parts{}
				}
				return true
			}
			return false
		}
		switch {
		case get(SuffixAbsMax):
			slot = &found[layer].absmax
		case get(SuffixSamples):
			slot = &found[layer].samples
		case get(SuffixCount):
			slot = &found[layer].count
		default:
			return nil, bad(name, "not a calibration tensor (want <layer>%s, <layer>%s or <layer>%s)",
				SuffixAbsMax, SuffixSamples, SuffixCount)
		}
		*slot = &info
	}
	for layer, p := range found {
		switch {
		case p.absmax == nil:
			return nil, bad(layer+SuffixAbsMax, "missing (layer %q has no input_absmax)", layer)
		case p.samples == nil:
			return nil, bad(layer+SuffixSamples, "missing (layer %q has no input_samples)", layer)
		}
		a, s := p.absmax, p.samples
		if a.DType != safetensors.F32 {
			return nil, bad(a.Name, "dtype %s, want F32", a.DType)
		}
		if len(a.Shape) != 1 || a.Shape[0] < 1 {
			return nil, bad(a.Name, "shape %v, want [K] with K ≥ 1", a.Shape)
		}
		k := a.Shape[0]
		if s.DType != safetensors.F32 && s.DType != safetensors.F16 && s.DType != safetensors.BF16 {
			return nil, bad(s.Name, "dtype %s, want F32, F16 or BF16", s.DType)
		}
		if len(s.Shape) != 2 || s.Shape[1] != k {
			return nil, bad(s.Name, "shape %v, want [S, %d] (K from input_absmax)", s.Shape, k)
		}
		if s.Shape[0] < 1 || s.Shape[0] > MaxSamples {
			return nil, bad(s.Name, "%d sample rows, want 1..%d", s.Shape[0], MaxSamples)
		}
		if c := p.count; c != nil {
			if c.DType != safetensors.I64 || c.Elems() != 1 || len(c.Shape) > 1 {
				return nil, bad(c.Name, "dtype %s shape %v, want I64 [1]", c.DType, c.Shape)
			}
		}
		li := layerInfo{k: int(k), s: int(s.Shape[0]), samples: s.DType, hasCount: p.count != nil}
		if li.hasCount {
			raw, err := r.Bytes(p.count.Name)
			if err != nil {
				return nil, err
			}
			if li.count, err = checkCount(raw, li.s); err != nil {
				return nil, bad(p.count.Name, "%v", err)
			}
		}
		f.layers[layer] = li
		f.names = append(f.names, layer)
	}
	slices.Sort(f.names)
	return f, nil
}

// checkCount decodes an input_count and checks S ≤ count ≤ MaxCount.
func checkCount(raw []byte, s int) (int64, error) {
	u := binary.LittleEndian.Uint64(raw)
	switch c := int64(u); {
	case c < 0:
		return 0, fmt.Errorf("count %d is negative (as unsigned: %d)", c, u)
	case c < int64(s):
		return 0, fmt.Errorf("count %d is below the %d sample rows", c, s)
	case c > MaxCount:
		return 0, fmt.Errorf("count %d exceeds the limit of %d tokens (MaxCount)", c, int64(MaxCount))
	default:
		return c, nil
	}
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Names returns the layer names, sorted, in a new slice.
func (f *File) Names() []string { return slices.Clone(f.names) }

// Has reports whether the file holds statistics for the layer.
func (f *File) Has(name string) bool { _, ok := f.layers[name]; return ok }

// Shape returns a layer's K, S and sample dtype from the header.
func (f *File) Shape(name string) (k, s int, samples safetensors.DType, ok bool) {
	li, ok := f.layers[name]
	return li.k, li.s, li.samples, ok
}

// Layer reads one layer's statistics, samples widened to float32, and checks
// the values: finite, absmax ≥ 0, every sample within absmax
// (up to one rounding of the sample dtype). Count is 0 when the file has no
// input_count. Errors are *Error values naming the file and the tensor.
func (f *File) Layer(name string) (*Stats, error) {
	li, ok := f.layers[name]
	if !ok {
		return nil, &Error{File: f.path, Tensor: name + SuffixAbsMax,
			Msg: fmt.Sprintf("no statistics for layer %q (the file has %d layers)", name, len(f.names))}
	}
	st := &Stats{K: li.k, S: li.s, AbsMax: make([]float32, li.k), Samples: make([]float32, li.s*li.k)}
	raw, err := f.r.Bytes(name + SuffixAbsMax)
	if err != nil {
		return nil, err
	}
	if err := decodeSamples(st.AbsMax, safetensors.F32, raw); err != nil {
		return nil, &Error{File: f.path, Tensor: name + SuffixAbsMax, Msg: err.Error()}
	}
	if raw, err = f.r.Bytes(name + SuffixSamples); err != nil {
		return nil, err
	}
	if err := decodeSamples(st.Samples, li.samples, raw); err != nil {
		return nil, &Error{File: f.path, Tensor: name + SuffixSamples, Msg: err.Error()}
	}
	st.Count = li.count
	if err := validate(st, li.k, sampleSlack(li.samples)); err != nil {
		tensor := name + SuffixSamples
		if strings.HasPrefix(err.Error(), "input_absmax") {
			tensor = name + SuffixAbsMax
		}
		return nil, &Error{File: f.path, Tensor: tensor, Msg: err.Error()}
	}
	return st, nil
}

// Close releases the file.
func (f *File) Close() error { return f.r.Close() }

// tokens returns a layer's token count (input_count, checked by Open; S
// without one).
func (f *File) tokens(name string) int64 {
	li := f.layers[name]
	if !li.hasCount {
		return int64(li.s)
	}
	return li.count
}

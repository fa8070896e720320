package source

import (
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/gguf"
	"github.com/svdq/svdq/formats/safetensors"
)

// Input is an opened checkpoint: the diffusion model's tensors as the
// presets see them (the embedded Reader) and what was done to get them.
type Input struct {
	safetensors.Reader
	Path   string
	Format string // "safetensors" or "gguf"
	// Components lists, for an all-in-one checkpoint, every component
	// found (the diffusion model first); nil otherwise.
	Components []Component
	// Dequant lists the dequantizations done (scaled FP8, GGUF).
	Dequant []Dequant
	// Found counts the diffusion model's tensors by stored dtype or ggml
	// type, as found in the file ("BF16": 300, "Q4_K": 120, ...).
	Found map[string]int
	// Warnings are things the user should know (stacked quantization).
	Warnings []string
	// StoredBytes is the stored size of the diffusion model's tensors (scales
	// included; GGUF blocks as stored).
	StoredBytes int64

	base  safetensors.Reader // the whole file, before any selection
	views []*view            // outermost first
	noise *ggufNoise
}

// Open opens the checkpoint at path: a GGUF file, or anything
// safetensors.OpenCheckpoint opens; see the package doc for what it
// presents.
func Open(path string) (*Input, error) {
	in := &Input{Path: path, Format: "safetensors", Found: map[string]int{}}
	var r safetensors.Reader
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() && gguf.IsGGUF(path) {
		v, noise, err := ggufView(path)
		if err != nil {
			return nil, err
		}
		in.Format, in.noise = "gguf", noise
		in.views = append(in.views, v)
		r = v
	} else {
		var err error
		if r, err = safetensors.OpenCheckpoint(path); err != nil {
			return nil, err
		}
	}
	in.base = r
	comps := splitComponents(r)
	if comps != nil || (in.Format == "gguf" && allPrefixed(r)) {
		// An all-in-one file; or a GGUF under the prefix, which city96's
		// loader strips (loader.py gguf_sd_loader handle_prefix). A
		// safetensors file wholly under it keeps its names: the presets
		// read that naming, and files quantized from it record them.
		in.Components = comps
		v := prefixView(r, DiffusionPrefix)
		in.views = append([]*view{v}, in.views...)
		r = v
	}
	for _, n := range r.Names() {
		form, size := in.storedForm(r, n)
		in.Found[form]++
		in.StoredBytes += size
	}
	sv, d, err := scaledView(r, path)
	if err != nil {
		in.base.Close()
		return nil, err
	}
	if sv != nil {
		in.Dequant = append(in.Dequant, *d)
		in.views = append([]*view{sv}, in.views...)
		r = sv
	}
	in.Reader = r
	if in.Format == "gguf" {
		in.ggufSummary(r)
	}
	return in, nil
}

// storedForm is how tensor n of r (the reader before the FP8 schemes,
// the outermost view so far when there is one) is stored: its ggml type
// for GGUF, else its dtype.
func (in *Input) storedForm(r safetensors.Reader, n string) (string, int64) {
	if _, _, e := in.computing(n); e != nil {
		return e.stored, e.size
	}
	info, _ := r.Info(n)
	return string(info.DType), info.End - info.Begin
}

// computing follows name inwards through the views to the one that
// computes it and returns that view, the name there and its entry; e is
// nil when the bytes of name are the file's.
func (in *Input) computing(name string) (v *view, at string, e *entry) {
	for _, v := range in.views {
		e, ok := v.entries[name]
		if !ok {
			return nil, "", nil
		}
		if e.compute != nil {
			return v, name, e
		}
		name = e.src
	}
	return nil, "", nil
}

// Dequantized returns the stored form of a tensor the Input computes by
// dequantization (a GGUF block type, "F8_E4M3 × scale_weight"); ok is
// false for tensors read as stored.
func (in *Input) Dequantized(name string) (stored string, ok bool) {
	_, _, e := in.computing(name)
	if e == nil {
		return "", false
	}
	info, _ := in.Info(name)
	return e.stored, e.stored != string(info.DType)
}

// StoredSize returns the stored bytes of a tensor the Input computes (a
// GGUF tensor's blocks, an FP8 weight without its scale); ok is false for
// tensors read as stored, whose Info gives their size.
func (in *Input) StoredSize(name string) (int64, bool) {
	if _, _, e := in.computing(name); e != nil {
		return e.size, true
	}
	return 0, false
}

// Computed reports whether the bytes of name are computed (not a mapping
// of the file): such bytes are shared and must not be unmapped.
func (in *Input) Computed(name string) bool {
	_, _, e := in.computing(name)
	return e != nil
}

// Release drops the cached bytes of computed tensors.
func (in *Input) Release(names ...string) {
	for _, n := range names {
		if v, at, e := in.computing(n); e != nil {
			v.release(at)
		}
	}
}

// Close closes the underlying file(s).
func (in *Input) Close() error { return in.base.Close() }

// lowBit are the GGUF types of 5 bits or fewer per weight: quantizing
// from them stacks two quantizations.
var lowBit = []gguf.Type{gguf.Q4_0, gguf.Q4_1, gguf.Q5_0, gguf.Q5_1, gguf.Q4_K, gguf.Q5_K, gguf.Q2_K, gguf.Q3_K}

func (in *Input) ggufSummary(r safetensors.Reader) {
	d := Dequant{Scheme: "GGUF"}
	var low []string
	for _, n := range r.Names() {
		s, ok := in.Dequantized(n)
		if !ok {
			continue
		}
		d.Tensors++
		for _, t := range lowBit {
			if s == t.String() && !slices.Contains(low, s) {
				low = append(low, s)
			}
		}
	}
	if d.Tensors > 0 {
		d.Note = "ggml reference dequantizers (ggml-quants.c), exact"
		in.Dequant = append(in.Dequant, d)
	}
	if len(low) > 0 {
		sort.Strings(low)
		in.Warnings = append(in.Warnings, fmt.Sprintf("%s stores weights in %s (5 bits or fewer): quantizing them to 4 bits stacks two quantizations; the output's error against the original model adds the GGUF's own", in.Path, strings.Join(low, ", ")))
	}
}

// GGUFError is the estimated relative error of one GGUF type against the
// weights it was made from: sqrt(Σ step²/12 / Σ ŵ²) over the tensors of
// that type dequantized so far (rounding to nearest on each block's grid;
// an estimate, the original weights being unknown).
type GGUFError struct {
	Type     string  `json:"type"`
	RelError float64 `json:"rel_error"`
}

// GGUFErrors returns the estimates of the quantized types read so far,
// sorted by type name (nil for safetensors inputs).
func (in *Input) GGUFErrors() []GGUFError {
	if in.noise == nil {
		return nil
	}
	in.noise.mu.Lock()
	defer in.noise.mu.Unlock()
	var out []GGUFError
	for t, noise := range in.noise.noise {
		if n2 := in.noise.norm2[t]; n2 > 0 {
			out = append(out, GGUFError{Type: t.String(), RelError: math.Sqrt(noise / n2)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Type < out[j].Type })
	return out
}

// Component returns a reader over one component of an all-in-one
// checkpoint (names without the component's prefix, bytes as stored) and
// its description. Close the Input, not the returned reader.
func (in *Input) Component(name string) (safetensors.Reader, Component, error) {
	c, err := findComponent(in.Components, name)
	if err != nil {
		return nil, c, fmt.Errorf("%s: %v", in.Path, err)
	}
	return prefixView(in.base, c.Prefix), c, nil
}

// allPrefixed reports whether r has tensors and all lie under DiffusionPrefix.
func allPrefixed(r safetensors.Reader) bool {
	names := r.Names()
	for _, n := range names {
		if !strings.HasPrefix(n, DiffusionPrefix) {
			return false
		}
	}
	return len(names) > 0
}

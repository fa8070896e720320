package lora

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
	"strings"
)

// MetaKey is the safetensors metadata key of the provenance record.
const MetaKey = "svdq_loras"

// ProvenanceVersion is the version fuse-lora writes. ParseProvenance also
// reads version 1 records, written before the sidecar: their kept tensors'
// base bytes and factors sit in the fused file's own tensor table, and no
// layer is widened.
const ProvenanceVersion = 2

// provenanceV1 is the version without Sidecar, Widened and
// Base.QuantizationConfig.
const provenanceV1 = 1

// Provenance records what was fused into a checkpoint, enough to take any
// LoRA out again and, once all are out, to rewrite the base file exactly.
//
// Example (wrapped):
//
//	{"version":2,"base":{"sha256":"9f…","header_pad":0,
//	          "quantization_config":"{\"method\": \"svdquant\", … \"rank\": 32}"},
//	 "layers":{"transformer_blocks.0.qkv_proj":{"kind":"w4a4","base":32},
//	           "x_embedder.weight":{"kind":"kept","base":0}},
//	 "loras":[{"name":"style","file":"style.safetensors","sha256":"1c…","strength":0.8,
//	           "format":"kohya","ranges":{"transformer_blocks.0.qkv_proj":[32,80],"x_embedder.weight":[0,16]}}],
//	 "widened":{"transformer_blocks.0.out_proj":32, …},
//	 "sidecar":{"file":"flux-style.safetensors.lora-base","sha256":"77…"}}
type Provenance struct {
	Version int              `json:"version"`
	Base    Base             `json:"base"`
	Layers  map[string]Layer `json:"layers"` // every layer a fused LoRA occupies
	LoRAs   []Applied        `json:"loras"`  // in fusion order
	// Widened lists the W4A4 layers no LoRA occupies whose branch the file
	// stores wider than their rank, with that rank: every W4A4 layer of a
	// fused file is stored at one rank (quantization_config's), the
	// columns past a layer's rank are zeros, and the svdq entry records
	// the stored width. Taking every LoRA out narrows them back.
	Widened map[string]int `json:"widened,omitempty"`
	// Sidecar names the file that holds the kept (16-bit) tensors' base
	// bytes and LoRA factors (the Reserved* tensors), written next to the
	// fused file; nil when no kept tensor has a LoRA merged in.
	Sidecar *Sidecar `json:"sidecar,omitempty"`
}

// Sidecar identifies the sidecar file of a fused checkpoint.
type Sidecar struct {
	File   string `json:"file"`   // base name, in the fused file's directory
	SHA256 string `json:"sha256"` // of the whole sidecar file
}

// Base describes the checkpoint before any LoRA.
type Base struct {
	SHA256 string `json:"sha256"` // of the whole base file
	// HeaderPad is the number of padding bytes after the base header's
	// JSON, so the header can be rebuilt at its exact length.
	HeaderPad int `json:"header_pad"`
	// SVDQ is the base file's svdq metadata entry verbatim, kept only when
	// re-encoding the parsed entry does not reproduce it.
	SVDQ string `json:"svdq,omitempty"`
	// QuantizationConfig is the base file's quantization_config metadata
	// verbatim ("" when it had none), kept only when the fused file's
	// differs (its rank is the one rank of the fused W4A4 layers).
	QuantizationConfig *string `json:"quantization_config,omitempty"`
	// Input is set while a fused LoRA widens the model's input (widen.go):
	// the layer, its base width and the base's config and comfy_config
	// metadata verbatim, which the output rewrites.
	Input *BaseInput `json:"input,omitempty"`
}

// BaseInput is the base state of a widened input layer (Base.Input).
type BaseInput struct {
	Layer string `json:"layer"`
	Width int    `json:"width"` // input features of the base weight
	// Config and ComfyConfig are the base's metadata entries verbatim;
	// nil when the base had none.
	Config      *string `json:"config,omitempty"`
	ComfyConfig *string `json:"comfy_config,omitempty"`
}

// Layer is the state of one layer before any LoRA: its kind (Kind.String)
// and the logical rank of its branch then (kept tensors: 0).
// KindVector is the kind of a 1-D tensor in Layers (a bias or norm
// weight a BFL control LoRA changes, vector.go): each LoRA occupies one
// range [i, i+1) of it, its op's index; Base is 0. The sidecar keeps the
// tensor's base bytes (ReservedBase) and the ops (ReservedVector).
const KindVector = "vector"

type Layer struct {
	Kind string `json:"kind"`
	Base int    `json:"base"`
}

// Applied is one fused LoRA.
type Applied struct {
	Name     string  `json:"name"`
	File     string  `json:"file"`   // file name as given (base name)
	SHA256   string  `json:"sha256"` // of the LoRA file
	Strength float64 `json:"strength"`
	Format   string  `json:"format"`
	// Ranges gives, per layer, the logical rank columns [lo, hi) the LoRA
	// occupies in that layer's branch.
	Ranges map[string][2]int `json:"ranges"`
	// Input is the input width the LoRA widens the model's input layer
	// (Base.Input) to; 0 when it does not widen it.
	Input int `json:"input,omitempty"`
}

// Rank returns the current logical rank of layer's branch: its base rank
// plus every LoRA's range width.
func (p *Provenance) Rank(layer string) int {
	r := p.Layers[layer].Base
	for _, a := range p.LoRAs {
		if rg, ok := a.Ranges[layer]; ok {
			r += rg[1] - rg[0]
		}
	}
	return r
}

// Find returns the index of the LoRA called name, -1 if none.
func (p *Provenance) Find(name string) int {
	for i, a := range p.LoRAs {
		if a.Name == name {
			return i
		}
	}
	return -1
}

// Remove takes LoRA i out of the record: its ranges go, and the ranges of
// later LoRAs in the same layers shift down; layers no LoRA occupies any
// more are dropped. It returns the removed entry. It panics when i is out
// of range.
func (p *Provenance) Remove(i int) Applied {
	if i < 0 || i >= len(p.LoRAs) {
		panic(fmt.Sprintf("lora: Provenance.Remove: index %d of %d", i, len(p.LoRAs)))
	}
	gone := p.LoRAs[i]
	p.LoRAs = append(p.LoRAs[:i:i], p.LoRAs[i+1:]...)
	for layer, rg := range gone.Ranges {
		w := rg[1] - rg[0]
		for j := i; j < len(p.LoRAs); j++ {
			if r, ok := p.LoRAs[j].Ranges[layer]; ok {
				p.LoRAs[j].Ranges[layer] = [2]int{r[0] - w, r[1] - w}
			}
		}
	}
	used := map[string]bool{}
	for _, a := range p.LoRAs {
		for l := range a.Ranges {
			used[l] = true
		}
	}
	for l := range p.Layers {
		if !used[l] {
			delete(p.Layers, l)
		}
	}
	return gone
}

// Marshal validates p and returns its JSON (compact, map keys sorted, no
// HTML escaping): equal records give identical bytes.
func (p *Provenance) Marshal() (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(p); err != nil {
		return "", fmt.Errorf("lora: %s: %v", MetaKey, err)
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

// ParseProvenance reads a MetaKey entry strictly: known version, no unknown
// fields or trailing data, and Validate.
func ParseProvenance(s string) (*Provenance, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.DisallowUnknownFields()
	p := new(Provenance)
	if err := dec.Decode(p); err != nil {
		return nil, fmt.Errorf("lora: %s metadata: %v", MetaKey, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("lora: %s metadata: trailing data", MetaKey)
	}
	if len(p.Widened) == 0 {
		p.Widened = nil // "widened":{} means none, as Marshal writes it (omitempty)
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// Validate checks the record: version (1 without the fields version 2
// added), a sidecar named by a base name and a SHA-256, widened layers no
// LoRA occupies, unique non-empty names, finite strengths, known kinds,
// non-negative base ranks, every range in a listed layer, and the ranges
// of each layer tiling [base, rank) in LoRA order.
func (p *Provenance) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("lora: %s metadata: %s", MetaKey, fmt.Sprintf(format, args...))
	}
	switch p.Version {
	case ProvenanceVersion:
	case provenanceV1:
		if p.Sidecar != nil || p.Widened != nil || p.Base.QuantizationConfig != nil || p.Base.Input != nil {
			return bad("version 1 has no sidecar, widened, base quantization_config or input")
		}
	default:
		return bad("version %d, this build reads %d and %d", p.Version, provenanceV1, ProvenanceVersion)
	}
	if s := p.Sidecar; s != nil {
		if s.File == "" || s.File != filepath.Base(s.File) || s.File == "." || s.File == ".." {
			return bad("sidecar file name %q is not a base name", s.File)
		}
		if !isHex64(s.SHA256) {
			return bad("sidecar sha256 %q is not 64 hex digits", s.SHA256)
		}
	}
	for name, r := range p.Widened {
		if _, ok := p.Layers[name]; ok || r < 0 {
			return bad("widened layer %s: rank %d, or also occupied by a LoRA", name, r)
		}
	}
	widens := false
	for _, a := range p.LoRAs {
		widens = widens || a.Input != 0
	}
	if in := p.Base.Input; in != nil && (in.Layer == "" || in.Width <= 0) {
		return bad("input layer %q of width %d", in.Layer, in.Width)
	}
	if in := p.Base.Input; widens {
		// A record may keep Base.Input while no LoRA widens (between
		// Remove and the write, which restores the base's metadata).
		if in == nil {
			return bad("a LoRA widens the input, but the base input is not recorded")
		}
		if st, ok := p.Layers[in.Layer]; !ok || st.Kind != Kept.String() {
			return bad("input layer %q: not a kept layer of the record", in.Layer)
		}
		for _, a := range p.LoRAs {
			if _, on := a.Ranges[in.Layer]; a.Input != 0 && (a.Input <= in.Width || !on) {
				return bad("LoRA %s: input width %d, base %d, on %s: %v", a.Name, a.Input, in.Width, in.Layer, on)
			}
		}
	}
	if p.Base.HeaderPad < 0 {
		return bad("negative header padding %d", p.Base.HeaderPad)
	}
	for name, l := range p.Layers {
		if l.Kind == KindVector {
			if l.Base != 0 {
				return bad("vector %s: base %d", name, l.Base)
			}
			continue
		}
		k, err := ParseKind(l.Kind)
		if err != nil {
			return bad("layer %s: %v", name, err)
		}
		if l.Base < 0 || (k == Kept && l.Base != 0) {
			return bad("layer %s: base rank %d", name, l.Base)
		}
	}
	next := map[string]int{}
	names := map[string]bool{}
	for _, a := range p.LoRAs {
		if a.Name == "" || names[a.Name] {
			return bad("LoRA name %q empty or repeated", a.Name)
		}
		names[a.Name] = true
		if a.Strength != a.Strength || a.Strength > 1e300 || a.Strength < -1e300 {
			return bad("LoRA %s: strength %v", a.Name, a.Strength)
		}
		layers := make([]string, 0, len(a.Ranges))
		for l := range a.Ranges {
			layers = append(layers, l)
		}
		sort.Strings(layers)
		for _, l := range layers {
			rg := a.Ranges[l]
			st, ok := p.Layers[l]
			if !ok {
				return bad("LoRA %s: layer %s is not listed in layers", a.Name, l)
			}
			at, seen := next[l]
			if !seen {
				at = st.Base
			}
			if rg[0] != at || rg[1] <= rg[0] {
				return bad("LoRA %s: layer %s range %v, want [%d, >%d)", a.Name, l, rg, at, at)
			}
			next[l] = rg[1]
		}
	}
	for l := range p.Layers {
		if _, ok := next[l]; !ok {
			return bad("layer %s is listed but no LoRA occupies it", l)
		}
	}
	return nil
}

// isHex64 reports whether s is 64 lowercase hex digits.
func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// ErrNotFused is returned by operations that need a provenance record on a
// file that has none.
var ErrNotFused = errors.New("no LoRA is fused in this file (no " + MetaKey + " metadata)")

// Summary is one line per fused LoRA for `svdq inspect`: name, strength,
// format, file, short hash and the number of layers and total rank it adds.
func (p *Provenance) Summary() []string {
	out := make([]string, 0, len(p.LoRAs))
	for _, a := range p.LoRAs {
		rank, vectors := 0, 0
		for l, rg := range a.Ranges {
			if p.Layers[l].Kind == KindVector {
				vectors++
				continue
			}
			rank += rg[1] - rg[0]
		}
		h := a.SHA256
		if len(h) > 12 {
			h = h[:12]
		}
		line := fmt.Sprintf("%s  strength %g  %s  %s (sha256 %s)  %d layers, rank +%d in total",
			a.Name, a.Strength, a.Format, a.File, h, len(a.Ranges)-vectors, rank)
		if vectors > 0 {
			line += fmt.Sprintf(", %d biases/norms", vectors)
		}
		out = append(out, line)
	}
	return out
}

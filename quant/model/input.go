package model

import (
	"fmt"
	"maps"

	"github.com/svdq/svdq/formats/safetensors"
	input "github.com/svdq/svdq/formats/source"
)

// InputSummary says how a checkpoint was read and what the output holds
// (the --report "input" entry and the summary lines): the stored dtypes
// or ggml types as found, the dtypes as written, the components of an
// all-in-one file left out, the dequantizations done, and warnings.
type InputSummary struct {
	Format  string            `json:"format"`
	Found   map[string]int    `json:"dtypes_found"`
	Written map[string]int    `json:"dtypes_written"`
	LeftOut []input.Component `json:"components_left_out,omitempty"`
	Dequant []input.Dequant   `json:"dequantized,omitempty"`
	GGUF    []input.GGUFError `json:"gguf_estimated_error,omitempty"`
	Warns   []string          `json:"warnings,omitempty"`
}

// InputSummary summarises p's input and output. The GGUF error estimates
// cover the tensors read so far (all of them after Quantize).
func (p *Plan) InputSummary() *InputSummary {
	s := &InputSummary{Format: "safetensors", Written: map[string]int{}}
	for _, t := range p.outSpecs() {
		s.Written[string(t.DType)]++
	}
	in := p.Input
	if in == nil {
		return s
	}
	s.Format, s.Found, s.Dequant, s.GGUF, s.Warns = in.Format, maps.Clone(in.Found), in.Dequant, in.GGUFErrors(), in.Warnings
	if len(in.Components) > 1 {
		s.LeftOut = in.Components[1:]
	}
	return s
}

// ExtractComponent writes one component of the all-in-one checkpoint at
// path (a VAE, a text encoder; formats/source names them) to out as a
// plain safetensors file: its tensors byte for byte, without the
// component's prefix. The file is written atomically; out may not be the
// input.
func ExtractComponent(path, name, out string) (input.Component, error) {
	in, err := input.Open(path)
	if err != nil {
		return input.Component{}, err
	}
	defer in.Close()
	if err := checkOut(out, path); err != nil {
		return input.Component{}, err
	}
	r, c, err := in.Component(name)
	if err != nil {
		return c, err
	}
	var specs []safetensors.Spec
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		specs = append(specs, info.Spec())
	}
	w, err := safetensors.Create(out, specs, map[string]string{"format": "pt"})
	if err != nil {
		return c, err
	}
	defer w.Abort()
	for _, n := range r.Names() {
		if err := w.Copy(n, r, n); err != nil {
			return c, fmt.Errorf("%s: %v", path, err)
		}
	}
	return c, w.Close()
}

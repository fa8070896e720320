package tinydit

import (
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// Tensor is one named parameter of the model.
type Tensor struct {
	Name  string
	Shape []int64
	Data  []float32 // aliases the model's storage: do not modify
}

// Tensors lists every parameter under its diffusers name (linear weights
// [out, in] and biases [out]; RMSNorm weights [HeadDim]) in creation order.
func (m *Model) Tensors() []Tensor {
	out := make([]Tensor, 0, len(m.names))
	for _, name := range m.names {
		if p, ok := m.Norms[name]; ok {
			out = append(out, Tensor{Name: name, Shape: []int64{int64(m.cfg.HeadDim)}, Data: weight(p)})
			continue
		}
		mod, suffix := splitSuffix(name)
		l := m.Linears[mod]
		b := weight(l.B)
		if suffix == "bias" {
			out = append(out, Tensor{Name: name, Shape: []int64{int64(len(b))}, Data: b})
		} else {
			w := weight(l.W)
			out = append(out, Tensor{Name: name, Shape: []int64{int64(len(b)), int64(len(w) / len(b))}, Data: w})
		}
	}
	return out
}

// splitSuffix splits "a.b.weight" into "a.b" and "weight".
func splitSuffix(name string) (string, string) {
	for i := len(name) - 1; i >= 0; i-- {
		if name[i] == '.' {
			return name[:i], name[i+1:]
		}
	}
	return name, ""
}

// Params returns the number of parameters of the model.
func (m *Model) Params() int64 {
	var n int64
	for _, t := range m.Tensors() {
		n += int64(len(t.Data))
	}
	return n
}

// WriteCheckpoint writes the model as a diffusers-named bf16 safetensors
// file (metadata "format": "pt", as diffusers writes). Every value is
// stored exactly: the weights are bf16 values already.
func (m *Model) WriteCheckpoint(path string) error {
	ts := m.Tensors()
	out := make([]safetensors.Tensor, len(ts))
	for i, t := range ts {
		out[i] = safetensors.Tensor{Spec: safetensors.Spec{Name: t.Name, DType: safetensors.BF16, Shape: t.Shape},
			Data: quant.BF16.Encode(t.Data)}
	}
	return safetensors.WriteFile(path, out, map[string]string{"format": "pt"})
}

package source

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"sync"

	"github.com/svdq/svdq/formats/gguf"
	"github.com/svdq/svdq/formats/safetensors"
)

// ggufNoise accumulates, per stored type, the rounding noise and the
// squared norm of the tensors dequantized so far (Input.GGUFErrors).
type ggufNoise struct {
	mu    sync.Mutex
	noise map[gguf.Type]float64
	norm2 map[gguf.Type]float64
}

// plainTypes are the GGUF types presented as stored, with their dtype.
var plainTypes = map[gguf.Type]safetensors.DType{gguf.F32: safetensors.F32, gguf.F16: safetensors.F16, gguf.BF16: safetensors.BF16}

// ggufView presents a GGUF file's tensors: F32, F16 and BF16 as stored,
// the block-quantized types dequantized to F32. Tensors of a type this
// package does not dequantize are an error naming them.
func ggufView(path string) (*view, *ggufNoise, error) {
	g, err := gguf.Open(path)
	if err != nil {
		return nil, nil, err
	}
	acc := &ggufNoise{noise: map[gguf.Type]float64{}, norm2: map[gguf.Type]float64{}}
	meta := map[string]string{}
	if a := g.String("general.architecture"); a != "" {
		meta["gguf.architecture"] = a
	}
	v := newView(nil, meta, g.Close)
	for _, t := range g.Tensors() {
		if !t.Type.Readable() {
			g.Close()
			return nil, nil, &gguf.Error{File: path, Tensor: t.Name, Offset: t.Offset,
				Msg: fmt.Sprintf("ggml type %s is not supported (svdq reads F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)", t.Type)}
		}
		info := safetensors.Info{Shape: slices.Clone(t.Shape), File: path}
		name := t.Name
		if dt, ok := plainTypes[t.Type]; ok {
			info.DType, info.End = dt, t.Size
			v.add(name, &entry{info: info, stored: t.Type.String(), size: t.Size, compute: func() ([]byte, error) { return g.Raw(name) }})
		} else {
			info.DType = safetensors.F32
			info.End = t.Elems() * 4
			v.add(name, &entry{info: info, stored: t.Type.String(), size: t.Size, compute: func() ([]byte, error) {
				x, noise, err := g.Float32(name)
				if err != nil {
					return nil, err
				}
				b := make([]byte, 4*len(x))
				n2 := 0.0
				for i, f := range x {
					binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f))
					n2 += float64(f) * float64(f)
				}
				acc.mu.Lock()
				acc.noise[t.Type] += noise
				acc.norm2[t.Type] += n2
				acc.mu.Unlock()
				return b, nil
			}})
		}
	}
	v.seal()
	return v, acc, nil
}

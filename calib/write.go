package calib

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/svdq/svdq/formats/safetensors"
)

// Write writes stats (keyed by layer name) to path as an svdq-calib/1 file
// with F32 samples. See WriteAs.
func Write(path string, stats map[string]*Stats) error {
	return WriteAs(path, stats, safetensors.F32)
}

// WriteAs writes stats to path as an svdq-calib/1 file with samples stored
// as dtype (F32, F16 or BF16; F16 and BF16 round to nearest even, and
// absmax is raised where a rounded sample would exceed it, so the file
// always validates). input_count is written when Count > 0. Every layer is
// validated first (Validate); the error names the layer. The output is
// deterministic: the same stats give the same bytes (the safetensors writer
// orders tensors by dtype size, then name). The file is written to a
// temporary name and renamed into place, so a failed write leaves nothing.
func WriteAs(path string, stats map[string]*Stats, dtype safetensors.DType) error {
	if dtype != safetensors.F32 && dtype != safetensors.F16 && dtype != safetensors.BF16 {
		return fmt.Errorf("%s: sample dtype %s, want F32, F16 or BF16", path, dtype)
	}
	names := make([]string, 0, len(stats))
	for n := range stats {
		names = append(names, n)
	}
	slices.Sort(names)
	var specs []safetensors.Spec
	for _, n := range names {
		st := stats[n]
		if n == "" {
			return fmt.Errorf("%s: empty layer name", path)
		}
		if err := Validate(st, 0); err != nil {
			return fmt.Errorf("%s: layer %q: %v", path, n, err)
		}
		specs = append(specs, layerSpecs(n, st.K, st.S, st.Count > 0, dtype)...)
	}
	w, err := safetensors.Create(path, specs, map[string]string{"format": Format})
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, n := range names { // one layer's bytes in memory at a time
		for _, t := range layerTensors(n, stats[n], dtype) {
			if err := w.Write(t.Name, t.Data); err != nil {
				return err
			}
		}
	}
	return w.Close()
}

// layerSpecs declares one layer's tensors.
func layerSpecs(name string, k, s int, count bool, dtype safetensors.DType) []safetensors.Spec {
	out := []safetensors.Spec{
		{Name: name + SuffixAbsMax, DType: safetensors.F32, Shape: []int64{int64(k)}},
		{Name: name + SuffixSamples, DType: dtype, Shape: []int64{int64(s), int64(k)}},
	}
	if count {
		out = append(out, safetensors.Spec{Name: name + SuffixCount, DType: safetensors.I64, Shape: []int64{1}})
	}
	return out
}

// layerTensors encodes one layer's tensors, samples as dtype.
func layerTensors(name string, st *Stats, dtype safetensors.DType) []safetensors.Tensor {
	samples := slices.Clone(st.Samples)
	roundSamples(samples, dtype)
	absmax := slices.Clone(st.AbsMax)
	for i := 0; i < st.S; i++ {
		for k, x := range samples[i*st.K : (i+1)*st.K] {
			if x < 0 {
				x = -x
			}
			absmax[k] = max(absmax[k], x)
		}
	}
	specs := layerSpecs(name, st.K, st.S, st.Count > 0, dtype)
	out := []safetensors.Tensor{
		{Spec: specs[0], Data: encodeSamples(absmax, safetensors.F32)},
		{Spec: specs[1], Data: encodeSamples(samples, dtype)},
	}
	if st.Count > 0 {
		c := make([]byte, 8)
		binary.LittleEndian.PutUint64(c, uint64(st.Count))
		out = append(out, safetensors.Tensor{Spec: specs[2], Data: c})
	}
	return out
}

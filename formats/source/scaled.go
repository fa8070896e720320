package source

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// ComfyUI's FP8 conventions, read from comfyanonymous/ComfyUI:
//
//   - legacy scaled FP8 (comfy/model_detection.py model_config_from_unet,
//     comfy/utils.py convert_old_quants, comfy/ops.py scaled_fp8_ops): a
//     marker tensor "scaled_fp8" under the model prefix (its dtype names
//     the FP8 type; 2 elements mean full-precision matmul), and per linear
//     "X.scale_weight" (float32 scalar) with the real weight
//     X.weight (FP8) × scale_weight; "X.scale_input" is an activation
//     scale for FP8 matmuls;
//   - per-layer quantization (comfy/ops.py mixed_precision_ops,
//     003124c1): "X.comfy_quant", a uint8 tensor holding JSON
//     {"format": "float8_e4m3fn", …}, or the same per layer in the file
//     metadata "_quantization_metadata" {"layers": {X: {…}}}; the FP8
//     formats keep their scale in "X.weight_scale" (weight = fp8 ×
//     weight_scale), "X.input_scale" being the activation scale; nvfp4
//     adds "X.weight_scale_2".
//
// svdq dequantizes the FP8 formats exactly (fp8 widened, times the scale,
// one float32 rounding) and refuses the others.

// scaleSuffixes are the tensor suffixes that belong to a layer's scheme.
var scaleSuffixes = []string{".scale_weight", ".scale_input", ".weight_scale", ".weight_scale_2", ".input_scale", ".comfy_quant"}

// fp8Formats are the comfy_quant formats dequantized here.
var fp8Formats = []string{"float8_e4m3fn", "float8_e5m2"}

// Dequant describes a dequantization done while opening.
type Dequant struct {
	Scheme   string `json:"scheme"`   // "ComfyUI scaled FP8", "ComfyUI comfy_quant", "GGUF"
	Tensors  int    `json:"tensors"`  // weights dequantized
	Consumed int    `json:"consumed"` // scale and marker tensors read and left out
	Note     string `json:"note,omitempty"`
}

// scaledView dequantizes the ComfyUI FP8 schemes of r (file names the
// checkpoint in errors); it returns nil, nil when r uses none.
func scaledView(r safetensors.Reader, file string) (*view, *Dequant, error) {
	names := r.Names()
	has := func(n string) bool { _, ok := r.Info(n); return ok }
	// The marker sits under the model prefix: at the root once an
	// all-in-one file's prefix is removed, under it in a ComfyUI-named
	// diffusion model file that keeps its names.
	markerName := "scaled_fp8"
	if !has(markerName) && has(DiffusionPrefix+markerName) {
		markerName = DiffusionPrefix + markerName
	}
	marker := has(markerName)
	layers := map[string]string{} // layer → format ("scaled_fp8" for the legacy scheme)
	consumed := map[string]bool{markerName: marker}
	found := marker
	for _, n := range names {
		for _, suf := range scaleSuffixes {
			if layer, ok := strings.CutSuffix(n, suf); ok {
				found = true
				consumed[n] = true
				if !has(layer + ".weight") {
					return nil, nil, fmt.Errorf("%s: tensor %q has no weight %q", file, n, layer+".weight")
				}
				switch suf {
				case ".scale_weight":
					layers[layer] = "scaled_fp8"
				case ".comfy_quant":
					f, err := comfyFormat(r, n)
					if err != nil {
						return nil, nil, fmt.Errorf("%s: tensor %q: %v", file, n, err)
					}
					layers[layer] = f
				}
			}
		}
	}
	if s, ok := r.Metadata()["_quantization_metadata"]; ok {
		found = true
		var qm struct {
			Layers map[string]struct {
				Format string `json:"format"`
			} `json:"layers"`
		}
		if err := json.Unmarshal([]byte(s), &qm); err != nil {
			return nil, nil, fmt.Errorf("%s: metadata _quantization_metadata: %v", file, err)
		}
		for l, c := range qm.Layers {
			if !has(l + ".weight") {
				return nil, nil, fmt.Errorf("%s: metadata _quantization_metadata names layer %q, which has no weight %q", file, l, l+".weight")
			}
			layers[l] = c.Format
		}
	}
	if !found {
		return nil, nil, nil
	}
	for _, n := range names {
		for _, suf := range []string{".weight_scale", ".weight_scale_2"} {
			if layer, ok := strings.CutSuffix(n, suf); ok && (layers[layer] == "" || layers[layer] == "scaled_fp8") {
				return nil, nil, fmt.Errorf("%s: tensor %q scales %q, but no %q tensor or _quantization_metadata entry says how", file, n, layer+".weight", layer+".comfy_quant")
			}
		}
	}
	d := &Dequant{Scheme: "ComfyUI comfy_quant"}
	if marker || slices.Contains(slices.Collect(maps.Values(layers)), "scaled_fp8") {
		d.Scheme = "ComfyUI scaled FP8"
	}
	v := newView(r, r.Metadata(), func() error { return nil })
	// An FP8 weight without its scale while the marker says the file is
	// scaled: ComfyUI would read it with scale 1, which is wrong for a
	// file written by a scaling converter.
	if marker {
		for _, n := range names {
			layer, ok := strings.CutSuffix(n, ".weight")
			info, _ := r.Info(n)
			if ok && isFP8(info.DType) && layers[layer] == "" {
				return nil, nil, fmt.Errorf("%s: tensor %q is FP8 and the file has the scaled_fp8 marker, but its scale %q is missing", file, n, layer+".scale_weight")
			}
		}
	}
	for _, n := range names {
		if consumed[n] {
			d.Consumed++
			continue
		}
		info, _ := r.Info(n)
		layer, isW := strings.CutSuffix(n, ".weight")
		format := layers[layer]
		if !isW || format == "" {
			v.add(n, &entry{info: info, src: n})
			continue
		}
		scaleName := layer + ".scale_weight"
		if format != "scaled_fp8" {
			if !slices.Contains(fp8Formats, format) {
				return nil, nil, fmt.Errorf("%s: layer %q: ComfyUI quantization format %q is not supported (svdq reads %s)", file, layer, format, strings.Join(fp8Formats, ", "))
			}
			scaleName = layer + ".weight_scale"
		}
		e, err := scaledEntry(r, file, n, scaleName, info)
		if err != nil {
			return nil, nil, err
		}
		v.add(n, e)
		d.Tensors++
	}
	v.seal()
	return v, d, nil
}

func isFP8(d safetensors.DType) bool { return d == safetensors.F8E4M3 || d == safetensors.F8E5M2 }

func isFloat(d safetensors.DType) bool {
	switch d {
	case safetensors.F64, safetensors.F32, safetensors.F16, safetensors.BF16, safetensors.F8E4M3, safetensors.F8E5M2:
		return true
	}
	return false
}

// comfyFormat reads the "format" of a .comfy_quant tensor (UTF-8 JSON in
// uint8 elements).
func comfyFormat(r safetensors.Reader, name string) (string, error) {
	info, _ := r.Info(name)
	if info.DType != safetensors.U8 || info.End-info.Begin > 1<<16 {
		return "", fmt.Errorf("dtype %s, %d bytes: not a JSON layer configuration (U8, at most 64 KiB)", info.DType, info.End-info.Begin)
	}
	b, err := r.Bytes(name)
	if err != nil {
		return "", err
	}
	var c struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return "", fmt.Errorf("layer configuration: %v", err)
	}
	if c.Format == "" {
		return "", fmt.Errorf("layer configuration has no format")
	}
	return c.Format, nil
}

// scaledEntry checks a weight and its scale and returns the entry that
// computes weight × scale in float32 (a scalar scale, or one per row).
func scaledEntry(r safetensors.Reader, file, name, scaleName string, info safetensors.Info) (*entry, error) {
	si, ok := r.Info(scaleName)
	if !ok {
		return nil, fmt.Errorf("%s: tensor %q has a scaled layout, but its scale %q is missing", file, name, scaleName)
	}
	if !isFloat(info.DType) {
		return nil, fmt.Errorf("%s: tensor %q: dtype %s is not a float type (scale %q)", file, name, info.DType, scaleName)
	}
	rows := int64(1)
	if len(info.Shape) > 0 {
		rows = info.Shape[0]
	}
	n := si.Elems()
	perRow := n != 1
	if !isFloat(si.DType) || (perRow && (n != rows || len(si.Shape) > 2 || (len(si.Shape) == 2 && si.Shape[1] != 1))) {
		return nil, fmt.Errorf("%s: tensor %q: %s %v is neither a scalar nor one scale per row of %q %v", file, scaleName, si.DType, si.Shape, name, info.Shape)
	}
	raw, err := r.Bytes(scaleName)
	if err != nil {
		return nil, err
	}
	scale := make([]float32, n)
	if err := quant.Decode(scale, string(si.DType), raw); err != nil {
		return nil, fmt.Errorf("%s: tensor %q: %v", file, scaleName, err)
	}
	for i, s := range scale {
		if math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) {
			return nil, fmt.Errorf("%s: tensor %q: non-finite scale %v at element %d", file, scaleName, s, i)
		}
	}
	elems := info.Elems()
	out := info
	out.DType = safetensors.F32
	out.Begin, out.End = 0, elems*4
	suffix := scaleName[strings.LastIndex(scaleName, ".")+1:]
	return &entry{info: out, src: name, stored: string(info.DType) + " × " + suffix, size: info.End - info.Begin, compute: func() ([]byte, error) {
		w, err := r.Bytes(name)
		if err != nil {
			return nil, err
		}
		v := make([]float32, elems)
		if err := quant.Decode(v, string(info.DType), w); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %v", file, name, err)
		}
		cols := elems
		if perRow && rows > 0 {
			cols = elems / rows
		}
		b := make([]byte, 4*elems)
		for i, x := range v {
			s := scale[0]
			if perRow {
				s = scale[int64(i)/cols]
			}
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x*s))
		}
		return b, nil
	}}, nil
}

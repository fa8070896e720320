package model

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
)

// UnpackFile is the name of the file Unpack writes in its output directory.
const UnpackFile = "unpacked.safetensors"

// UnpackFormat is the "format" metadata value of an unpacked file.
const UnpackFormat = "svdq-unpacked/1"

// UnpackOptions configure Unpack.
type UnpackOptions struct {
	Model string // quantized checkpoint
	Out   string // output directory (created if missing)
	// OnLayer, when set, is called after each layer.
	OnLayer func(name string, done, total int)
}

// UnpackedLayer describes one layer of an unpacked file (its metadata
// "layers" entry).
type UnpackedLayer struct {
	Name      string `json:"name"`
	Kind      string `json:"kind"`      // w4a4, w4a16 or w4a16g128
	Precision string `json:"precision"` // int4, nvfp4 (weight-only kinds: int4)
	N         int    `json:"n"`
	K         int    `json:"k"`
	R         int    `json:"r"`
	Group     int    `json:"group"`
	Unsigned  bool   `json:"unsigned"` // shifted, unsigned 4-bit input (INT4 MLP second linear)
	DType     string `json:"dtype"`    // dtype of smooth, lora_down, lora_up, bias
}

// UnpackResult says what Unpack wrote.
type UnpackResult struct {
	Path   string
	Layers []UnpackedLayer
	Bytes  int64
}

// Unpack writes the logical tensors of every quantized layer of opt.Model
// into one safetensors file, DIR/unpacked.safetensors, so that other tools
// can check our packing. For a W4A4 layer L (sizes from the svdq metadata,
// else the padded sizes stored):
//
//	L.codes         I8   [N, K]    INT4 codes −8..7, or NVFP4 E2M1 codes 0..15 (bit 3 the sign)
//	L.scales        F32  [N, K/G]  group scales as stored (bf16/fp16 values, or E4M3 values for NVFP4)
//	L.tensor_scale  F32  [1]       NVFP4 per-tensor scale (1 for INT4)
//	L.smooth        model dtype [K]     λ
//	L.lora_down     model dtype [R, K]  applied to the raw input
//	L.lora_up       model dtype [N, R]
//	L.bias          model dtype [N]     with the shift correction of an unsigned layer
//
// and for a weight-only layer (W4A16, group G = 64, rows in checkpoint
// order, interleave undone when the chunk count is known from the svdq
// metadata; W4A16G128, nunchaku's T5 W4Linear, G = 128, its scaled_zeros
// as zeros):
//
//	L.codes  U8 [N, K] 0..15;  L.scales, L.zeros F32 [N, K/G];  L.bias model dtype [N]
//
// with w = codes·scales + zeros (a W4Linear without bias: zeros). The metadata holds "format" =
// svdq-unpacked/1 and "layers", a JSON list of UnpackedLayer. A layer whose
// packed bytes differ from the SHA-256 its svdq entry records is an error
// (naming the layer) before anything is written.
func Unpack(opt UnpackOptions) (*UnpackResult, error) {
	f, err := openQuantized(opt.Model)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := f.verifyFile(); err != nil {
		return nil, err
	}
	layers, err := f.layers(nil)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opt.Out, 0o755); err != nil {
		return nil, err
	}
	res := &UnpackResult{Path: filepath.Join(opt.Out, UnpackFile)}
	var specs []safetensors.Spec
	for _, l := range layers {
		lm := &l.meta
		dt := safetensors.DType(lm.DType)
		if dt == "" {
			dt = safetensors.BF16
		}
		ul := UnpackedLayer{Name: lm.Name, Kind: lm.Kind, Precision: lm.Precision, N: lm.N, K: lm.K, R: lm.R,
			Group: lm.Group, Unsigned: lm.Shifted, DType: string(dt)}
		g := int64((lm.K + lm.Group - 1) / lm.Group)
		n, k, r := int64(lm.N), int64(lm.K), int64(lm.R)
		if lm.WeightOnly() {
			specs = append(specs,
				safetensors.Spec{Name: lm.Name + ".codes", DType: safetensors.U8, Shape: []int64{n, k}},
				safetensors.Spec{Name: lm.Name + ".scales", DType: safetensors.F32, Shape: []int64{n, g}},
				safetensors.Spec{Name: lm.Name + ".zeros", DType: safetensors.F32, Shape: []int64{n, g}},
				safetensors.Spec{Name: lm.Name + ".bias", DType: dt, Shape: []int64{n}})
		} else {
			specs = append(specs,
				safetensors.Spec{Name: lm.Name + ".codes", DType: safetensors.I8, Shape: []int64{n, k}},
				safetensors.Spec{Name: lm.Name + ".scales", DType: safetensors.F32, Shape: []int64{n, g}},
				safetensors.Spec{Name: lm.Name + ".tensor_scale", DType: safetensors.F32, Shape: []int64{1}},
				safetensors.Spec{Name: lm.Name + ".smooth", DType: dt, Shape: []int64{k}},
				safetensors.Spec{Name: lm.Name + ".lora_down", DType: dt, Shape: []int64{r, k}},
				safetensors.Spec{Name: lm.Name + ".lora_up", DType: dt, Shape: []int64{n, r}},
				safetensors.Spec{Name: lm.Name + ".bias", DType: dt, Shape: []int64{n}})
		}
		res.Layers = append(res.Layers, ul)
	}
	desc, err := json.Marshal(res.Layers)
	if err != nil {
		return nil, err
	}
	w, err := safetensors.Create(res.Path, specs, map[string]string{
		"format": UnpackFormat, "source": filepath.Base(opt.Model), "layers": string(desc)})
	if err != nil {
		return nil, err
	}
	defer w.Abort()
	for i := range layers {
		if err := unpackLayer(f, w, &layers[i].meta); err != nil {
			return nil, err
		}
		if opt.OnLayer != nil {
			opt.OnLayer(layers[i].meta.Name, i+1, len(layers))
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if fi, err := os.Stat(res.Path); err == nil {
		res.Bytes = fi.Size()
	}
	return res, nil
}

// unpackLayer reads one layer and writes its logical tensors.
func unpackLayer(f *qfile, w *safetensors.Writer, lm *nunchaku.LayerMeta) error {
	put := func(suffix string, data []byte) error { return w.Write(lm.Name+"."+suffix, data) }
	if lm.WeightOnly() {
		wo, err := f.unpackWeightOnly(lm)
		if err != nil {
			return err
		}
		if wo.N != lm.N || wo.K != lm.K {
			return fmt.Errorf("%s: layer %s: stored [%d %d], metadata [%d %d]", f.path, lm.Name, wo.N, wo.K, lm.N, lm.K)
		}
		return firstErr(put("codes", wo.Codes), put("scales", f32Bytes(wo.Scales)),
			put("zeros", f32Bytes(wo.Zeros)), put("bias", wo.DType.Encode(wo.Bias)))
	}
	l, err := f.unpackW4A4(lm)
	if err != nil {
		return err
	}
	if l.N != lm.N || l.K != lm.K || l.R != lm.R {
		return fmt.Errorf("%s: layer %s: stored [%d %d] r%d, metadata [%d %d] r%d", f.path, lm.Name, l.N, l.K, l.R, lm.N, lm.K, lm.R)
	}
	codes := make([]byte, len(l.Codes))
	for i, c := range l.Codes {
		codes[i] = byte(c)
	}
	return firstErr(put("codes", codes), put("scales", f32Bytes(l.Scales)),
		put("tensor_scale", f32Bytes([]float32{l.TensorScale})), put("smooth", l.DType.Encode(l.Smooth)),
		put("lora_down", l.DType.Encode(l.Down)), put("lora_up", l.DType.Encode(l.Up)), put("bias", l.DType.Encode(l.Bias)))
}

// f32Bytes encodes v as little-endian float32.
func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		u := math.Float32bits(x)
		b[4*i], b[4*i+1], b[4*i+2], b[4*i+3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
	}
	return b
}

// firstErr returns the first non-nil error.
func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

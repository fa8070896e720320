package nunchaku

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// Tensor suffixes of a quantized layer, as nunchaku's C++ loader
// (src/Linear.cpp) names them. A layer "p" stores tensor p + "." + suffix.
const (
	SuffixQWeight    = "qweight"
	SuffixWScales    = "wscales"
	SuffixWTScale    = "wtscale"  // NVFP4 per-tensor weight scale
	SuffixWCScales   = "wcscales" // NVFP4 per-channel scale (never written by Pack)
	SuffixWZeros     = "wzeros"   // W4A16 zero points
	SuffixBias       = "bias"
	SuffixSmooth     = "smooth"
	SuffixSmoothOrig = "smooth_orig"
	SuffixLoraDown   = "lora_down"
	SuffixLoraUp     = "lora_up"
	// nunchaku's T5 W4Linear (text_encoders/linear.py) names its scales and
	// zero points differently from the C++ GEMV_AWQ.
	SuffixScales      = "scales"
	SuffixScaledZeros = "scaled_zeros"
)

// aliases maps the C++ suffixes to the names nunchaku's newer Python modules
// and deepcompressor's converter write for the same tensors; Unpack and
// Layers accept either.
var aliases = map[string]string{
	SuffixSmooth:     "smooth_factor",
	SuffixSmoothOrig: "smooth_factor_orig",
	SuffixLoraDown:   "proj_down",
	SuffixLoraUp:     "proj_up",
}

// Safetensors dtype names used by the layouts.
const (
	dtI8   = "I8"
	dtI16  = "I16"
	dtI32  = "I32"
	dtF32  = "F32"
	dtBF16 = "BF16"
	dtF16  = "F16"
	dtE4M3 = "F8_E4M3"
)

// Tensor is one packed tensor of a layer: the file stores it under
// layerName + "." + Suffix. DType is a safetensors dtype name ("I8", "I32",
// "BF16", "F16", "F8_E4M3", "F32"); Data holds the little-endian bytes of the
// row-major Shape (len(Data) = product(Shape) · dtype size). The packer
// allocates Data; the caller owns it.
type Tensor struct {
	Suffix string
	DType  string
	Shape  []int64
	Data   []byte
}

// Getter returns the tensor stored under a suffix of one layer (ok false when
// absent). Unpack calls it with the C++ suffix names and retries the Python
// aliases (smooth_factor, smooth_factor_orig, proj_down, proj_up). data is
// only read.
type Getter func(suffix string) (dtype string, shape []int64, data []byte, ok bool)

// MapGetter adapts a slice of tensors (Pack's output) to a Getter.
func MapGetter(ts []Tensor) Getter {
	m := make(map[string]Tensor, len(ts))
	for _, t := range ts {
		m[t.Suffix] = t
	}
	return func(s string) (string, []int64, []byte, bool) {
		t, ok := m[s]
		return t.DType, t.Shape, t.Data, ok
	}
}

// lookup returns a tensor by C++ suffix, then by its alias.
func lookup(get Getter, suffix string) (name, dtype string, shape []int64, data []byte, ok bool) {
	if dt, sh, d, ok := get(suffix); ok {
		return suffix, dt, sh, d, true
	}
	if a, has := aliases[suffix]; has {
		if dt, sh, d, ok := get(a); ok {
			return a, dt, sh, d, true
		}
	}
	return suffix, "", nil, nil, false
}

// dtypeSize is the byte size of the dtypes this package reads.
func dtypeSize(dt string) int {
	switch dt {
	case dtI8, dtE4M3:
		return 1
	case dtBF16, dtF16, dtI16:
		return 2
	case dtI32, dtF32:
		return 4
	}
	return 0
}

// float16Of maps "BF16"/"F16" to the quant type.
func float16Of(dt string) (quant.Float16, bool) {
	switch dt {
	case dtBF16:
		return quant.BF16, true
	case dtF16:
		return quant.F16, true
	}
	return 0, false
}

func ceilTo(x, m int) int { return (x + m - 1) / m * m }

// checkRepresentable returns an error naming field and index of the first
// value of v that dt does not hold exactly (NaN included).
func checkRepresentable(v []float32, dt quant.Float16, field string) error {
	for i, f := range v {
		if dt.Round(f) != f || f != f {
			return fmt.Errorf("nunchaku: %s[%d] = %g is not a %v value", field, i, f, dt)
		}
	}
	return nil
}

// put16 / get16 encode one 16-bit float of type dt.
func put16(b []byte, f float32, dt quant.Float16) {
	var h uint16
	if dt == quant.F16 {
		h = quant.F32ToF16(f)
	} else {
		h = quant.F32ToBF16(f)
	}
	binary.LittleEndian.PutUint16(b, h)
}

func get16(b []byte, dt quant.Float16) float32 {
	h := binary.LittleEndian.Uint16(b)
	if dt == quant.F16 {
		return quant.F16ToF32(h)
	}
	return quant.BF16ToF32(h)
}

// fill16 writes f into every 16-bit slot of b.
func fill16(b []byte, f float32, dt quant.Float16) {
	for i := 0; i+1 < len(b); i += 2 {
		put16(b[i:], f, dt)
	}
}

// checkTensor verifies dtype and shape of a tensor read from a file.
func checkTensor(layer, name, dtype string, shape []int64, data []byte, wantDT string, want ...int) error {
	if dtype != wantDT {
		return fmt.Errorf("nunchaku: %s.%s: dtype %s, want %s", layer, name, dtype, wantDT)
	}
	if !sameShape(shape, want) {
		return fmt.Errorf("nunchaku: %s.%s: shape %v, want %v", layer, name, shape, want)
	}
	n := dtypeSize(dtype)
	for _, d := range want {
		if d < 0 || (d > 0 && n > math.MaxInt/d) { // hostile shapes must not wrap around
			return fmt.Errorf("nunchaku: %s.%s: shape %v is too large", layer, name, want)
		}
		n *= d
	}
	if len(data) != n {
		return fmt.Errorf("nunchaku: %s.%s: %d bytes, want %d for %s %v", layer, name, len(data), n, dtype, want)
	}
	return nil
}

func sameShape(s []int64, want []int) bool {
	if len(s) != len(want) {
		return false
	}
	for i := range s {
		if s[i] != int64(want[i]) {
			return false
		}
	}
	return true
}

func shape64(d ...int) []int64 {
	s := make([]int64, len(d))
	for i, v := range d {
		s[i] = int64(v)
	}
	return s
}

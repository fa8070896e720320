package safetensors

// DType is a safetensors dtype name as written in a header's "dtype" field.
type DType string

// The dtypes this package reads and writes. Every element is stored
// little-endian; BOOL is one byte per element (0 or 1).
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U8     DType = "U8"
	BOOL   DType = "BOOL"
)

// DTypes lists every dtype the package knows, widest first.
var DTypes = []DType{F64, I64, F32, I32, F16, BF16, I16, F8E4M3, F8E5M2, I8, U8, BOOL}

// Size returns the bytes per element, 0 for an unknown dtype.
func (d DType) Size() int {
	switch d {
	case F64, I64:
		return 8
	case F32, I32:
		return 4
	case F16, BF16, I16:
		return 2
	case F8E4M3, F8E5M2, I8, U8, BOOL:
		return 1
	}
	return 0
}

// Known reports whether d is one of DTypes.
func (d DType) Known() bool { return d.Size() != 0 }

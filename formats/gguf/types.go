package gguf

import "fmt"

// Type is a ggml tensor type (ggml/include/ggml.h enum ggml_type).
type Type uint32

// The ggml types this package knows by name. Types 4 and 5 were removed
// from ggml; 16–29 are the i-quants and integer types.
const (
	F32  Type = 0
	F16  Type = 1
	Q4_0 Type = 2
	Q4_1 Type = 3
	Q5_0 Type = 6
	Q5_1 Type = 7
	Q8_0 Type = 8
	Q8_1 Type = 9
	Q2_K Type = 10
	Q3_K Type = 11
	Q4_K Type = 12
	Q5_K Type = 13
	Q6_K Type = 14
	Q8_K Type = 15
	BF16 Type = 30
)

// QK_K is the super-block size of the K-quants (ggml-common.h).
const QK_K = 256

// typeInfo declares a type: its name, block size (elements), block bytes,
// and its dequantizer (nil: known but not read by this package).
type typeInfo struct {
	name      string
	blockSize int
	typeSize  int
	dequant   func(dst []float32, block []byte) float64
}

// types is the type table: ggml-common.h block structs, e.g. block_q8_0 =
// {ggml_half d; int8_t qs[32]} = 34 bytes for 32 weights (8.5 bits per
// weight); block_q4_K = {half d, dmin; uint8 scales[12]; uint8 qs[128]} =
// 144 bytes for 256 (4.5 bpw); block_q6_K = {uint8 ql[128], qh[64]; int8
// scales[16]; half d} = 210 bytes for 256 (6.5625 bpw).
var types = map[Type]typeInfo{
	F32:  {"F32", 1, 4, nil},
	F16:  {"F16", 1, 2, nil},
	BF16: {"BF16", 1, 2, nil},
	Q4_0: {"Q4_0", 32, 2 + 16, dequantQ4_0},
	Q4_1: {"Q4_1", 32, 2 + 2 + 16, dequantQ4_1},
	Q5_0: {"Q5_0", 32, 2 + 4 + 16, dequantQ5_0},
	Q5_1: {"Q5_1", 32, 2 + 2 + 4 + 16, dequantQ5_1},
	Q8_0: {"Q8_0", 32, 2 + 32, dequantQ8_0},
	Q8_1: {"Q8_1", 32, 2 + 2 + 32, nil},
	Q2_K: {"Q2_K", QK_K, QK_K/16 + QK_K/4 + 2 + 2, dequantQ2_K},
	Q3_K: {"Q3_K", QK_K, QK_K/8 + QK_K/4 + 12 + 2, dequantQ3_K},
	Q4_K: {"Q4_K", QK_K, 2 + 2 + 12 + QK_K/2, dequantQ4_K},
	Q5_K: {"Q5_K", QK_K, 2 + 2 + 12 + QK_K/8 + QK_K/2, dequantQ5_K},
	Q6_K: {"Q6_K", QK_K, QK_K/2 + QK_K/4 + QK_K/16 + 2, dequantQ6_K},
	Q8_K: {"Q8_K", QK_K, 4 + QK_K + QK_K/16*2, nil},
}

// String returns the ggml name ("Q4_K"), or "type(N)" for an unknown one.
func (t Type) String() string {
	if ti, ok := types[t]; ok {
		return ti.name
	}
	return fmt.Sprintf("type(%d)", uint32(t))
}

// Known reports whether the package knows the type's block layout.
func (t Type) Known() bool { _, ok := types[t]; return ok }

// Readable reports whether the package dequantizes the type.
func (t Type) Readable() bool {
	ti, ok := types[t]
	return ok && (ti.dequant != nil || ti.blockSize == 1)
}

// BlockSize returns the elements per block (1 for F32/F16/BF16), 0 if unknown.
func (t Type) BlockSize() int { return types[t].blockSize }

// TypeSize returns the bytes per block, 0 if unknown.
func (t Type) TypeSize() int { return types[t].typeSize }

// BitsPerWeight returns the stored bits per element.
func (t Type) BitsPerWeight() float64 {
	ti, ok := types[t]
	if !ok {
		return 0
	}
	return float64(ti.typeSize*8) / float64(ti.blockSize)
}

// Quantized reports whether t is a block-quantized type (not F32/F16/BF16).
func (t Type) Quantized() bool { return t.BlockSize() > 1 }

package safetensors

// This file declares the package's public API; the bodies land with the
// reader and writer. Other packages code against these signatures.

import "io"

// DType is a safetensors dtype name.
type DType string

const (
	F64     DType = "F64"
	F32     DType = "F32"
	F16     DType = "F16"
	BF16    DType = "BF16"
	F8E4M3  DType = "F8_E4M3"
	F8E5M2  DType = "F8_E5M2"
	I64     DType = "I64"
	I32     DType = "I32"
	I16     DType = "I16"
	I8      DType = "I8"
	U8      DType = "U8"
	BOOL    DType = "BOOL"
)

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

// Info describes one tensor of a file.
type Info struct {
	Name  string
	DType DType
	Shape []int64
	// Begin, End: byte offsets relative to the start of the data section,
	// as written in the header.
	Begin, End int64
	File       string // path of the file holding the tensor
}

// Elems returns the product of the shape (1 for a scalar).
func (i Info) Elems() int64 {
	n := int64(1)
	for _, d := range i.Shape {
		n *= d
	}
	return n
}

// Error is a malformed-file error naming the file, the tensor (may be empty)
// and the absolute byte offset in the file (-1 when not applicable).
type Error struct {
	File   string
	Tensor string
	Offset int64
	Msg    string
}

// Reader is the read side shared by one File and a sharded Checkpoint.
type Reader interface {
	Names() []string                 // sorted tensor names
	Info(name string) (Info, bool)   // header entry
	Bytes(name string) ([]byte, error) // raw little-endian bytes (memory-mapped; valid until Close)
	Metadata() map[string]string
	Close() error
}

// Spec declares one tensor of a file being written.
type Spec struct {
	Name  string
	DType DType
	Shape []int64
}

var _ io.Closer = Reader(nil)

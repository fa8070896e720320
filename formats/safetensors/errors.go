package safetensors

import (
	"strconv"
	"strings"
)

// Error is a malformed-file error naming the file, the tensor (may be empty)
// and the absolute byte offset in the file (-1 when not applicable).
//
// Faults of the JSON and of one tensor's entry (dtype, shape, offsets out
// of range, size mismatch) point into the header: 8 plus the position of
// the offending key or value. Faults between entries (overlap, gap, bytes
// after the last tensor) point into the data section: 8 + N + the first
// byte in question, N being the header length.
type Error struct {
	File   string
	Tensor string
	Offset int64
	Msg    string
}

// Error formats e on one line:
//
//	file.safetensors: tensor "a.weight": byte 1234: offsets [..] overlap tensor "b"
//
// The tensor and byte parts are left out when not applicable.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Tensor != "" {
		b.WriteString(": tensor ")
		b.WriteString(strconv.Quote(e.Tensor))
	}
	if e.Offset >= 0 {
		b.WriteString(": byte ")
		b.WriteString(strconv.FormatInt(e.Offset, 10))
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

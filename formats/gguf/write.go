package gguf

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

// KV is a key-value pair to write. Value is a string, uint32, int32,
// float32, bool, uint64 or []int32 (an INT32 array).
type KV struct {
	Key   string
	Value any
}

// WTensor is a tensor to write: Shape in torch order (written reversed as
// ne), Data the stored bytes of Type.
type WTensor struct {
	Name  string
	Type  Type
	Shape []int64
	Data  []byte
}

// Write writes a version-3 GGUF file with the default alignment: the
// pairs, then the tensors in order. It is a small writer for tests and
// tools (the files svdq's tests read), not a converter.
func Write(w io.Writer, kvs []KV, ts []WTensor) error {
	var b bytes.Buffer
	le := binary.LittleEndian
	u32 := func(v uint32) { binary.Write(&b, le, v) }
	u64 := func(v uint64) { binary.Write(&b, le, v) }
	str := func(s string) { u64(uint64(len(s))); b.WriteString(s) }
	b.WriteString("GGUF")
	u32(3)
	u64(uint64(len(ts)))
	u64(uint64(len(kvs)))
	for _, kv := range kvs {
		str(kv.Key)
		switch v := kv.Value.(type) {
		case string:
			u32(tString)
			str(v)
		case uint32:
			u32(tUint32)
			u32(v)
		case int32:
			u32(tInt32)
			u32(uint32(v))
		case uint64:
			u32(tUint64)
			u64(v)
		case float32:
			u32(tFloat32)
			u32(math.Float32bits(v))
		case bool:
			u32(tBool)
			if v {
				b.WriteByte(1)
			} else {
				b.WriteByte(0)
			}
		case []int32:
			u32(tArray)
			u32(tInt32)
			u64(uint64(len(v)))
			for _, x := range v {
				u32(uint32(x))
			}
		default:
			return fmt.Errorf("gguf: key %q: unsupported value type %T", kv.Key, kv.Value)
		}
	}
	off := int64(0)
	offs := make([]int64, len(ts))
	for i, t := range ts {
		str(t.Name)
		u32(uint32(len(t.Shape)))
		for j := len(t.Shape) - 1; j >= 0; j-- {
			u64(uint64(t.Shape[j]))
		}
		u32(uint32(t.Type))
		offs[i] = off
		u64(uint64(off))
		off += (int64(len(t.Data)) + DefaultAlignment - 1) / DefaultAlignment * DefaultAlignment
	}
	pad := func() {
		for b.Len()%DefaultAlignment != 0 {
			b.WriteByte(0)
		}
	}
	pad()
	if _, err := w.Write(b.Bytes()); err != nil {
		return err
	}
	for _, t := range ts {
		b.Reset()
		b.Write(t.Data)
		pad()
		if _, err := w.Write(b.Bytes()); err != nil {
			return err
		}
	}
	return nil
}

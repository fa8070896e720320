package gguf

import "testing"

// benchDequantize measures Dequantize on a 3072×3072 tensor of type t
// (bytes/s are the F32 output's).
func benchDequantize(b *testing.B, t Type, enc func([]float32) []byte) {
	const n = 3072 * 3072
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%251)/251 - 0.5
	}
	var raw []byte
	if enc != nil {
		raw = enc(x)
	} else {
		raw = make([]byte, n/t.BlockSize()*t.TypeSize())
	}
	dst := make([]float32, n)
	b.SetBytes(4 * n)
	b.ResetTimer()
	for b.Loop() {
		if _, err := Dequantize(dst, t, raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDequantizeQ8_0(b *testing.B) { benchDequantize(b, Q8_0, EncodeQ8_0) }
func BenchmarkDequantizeQ4_K(b *testing.B) { benchDequantize(b, Q4_K, EncodeQ4_K) }
func BenchmarkDequantizeQ6_K(b *testing.B) { benchDequantize(b, Q6_K, nil) }

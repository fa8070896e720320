//go:build !amd64 || purego

package quant

var haveQuantAVX512 = false

// quantizeDequantInt4Fast reports false: no vector kernel on this build.
func quantizeDequantInt4Fast(codes []int8, scales []float32, v []float32, rows, k int, dt Float16) bool {
	return false
}

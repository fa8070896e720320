//go:build !purego

package quant

import (
	"math"

	"golang.org/x/sys/cpu"
)

// AVX-512 kernels of the residual quantizer (pipeline_quant_amd64.s).

//go:noescape
func groupAbsMaxAVX512(dst *uint32, v *float32, groups int)

//go:noescape
func quantGroupsAVX512(v *float32, codes *int8, scales *float32, groups int)

var haveQuantAVX512 = cpu.X86.HasAVX512F

// quantizeDequantInt4Fast is quantizeDequantInt4 for k a multiple of 64 on
// a CPU with AVX-512 (division, clamp, round-half-even and conversion per
// 16 values, the same IEEE operations as the scalar code); it reports
// whether it ran.
func quantizeDequantInt4Fast(codes []int8, scales []float32, v []float32, rows, k int, dt Float16) bool {
	if !haveQuantAVX512 || k%Int4Group != 0 || rows*k == 0 {
		return false
	}
	groups := rows * k / Int4Group
	bits := make([]uint32, groups)
	groupAbsMaxAVX512(&bits[0], &v[0], groups)
	for i, mb := range bits {
		if mb >= 0x7f800000 { // NaN or ±Inf: the reference panics naming it
			r := i * Int4Group / k
			QuantizeInt4(codes[r*k:(r+1)*k], scales[r*(k/Int4Group):(r+1)*(k/Int4Group)], v[r*k:(r+1)*k], 1, k, dt.Round)
		}
		scales[i] = dt.Round(math.Float32frombits(mb) / 7)
	}
	quantGroupsAVX512(&v[0], &codes[0], &scales[0], groups)
	for i, s := range scales[:groups] {
		if s == 0 {
			clear(codes[i*Int4Group : (i+1)*Int4Group])
			clear(v[i*Int4Group : (i+1)*Int4Group])
		}
	}
	return true
}

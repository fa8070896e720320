package kernels

import (
	"encoding/binary"

	"github.com/svdq/svdq/quant"
)

// Logical decodes p into the logical layer through this package's index
// functions, the Go twins of the CUDA kernels' layout code (cuda/common.cuh).
// It exists so that CI, which has no GPU, can check the kernels' reading of
// the nunchaku layout against formats/nunchaku's packer. The result has R =
// p.R (the padded rank) and the logical N, K of p. It panics if p is invalid.
func (p *Packed) Logical() *quant.Layer {
	if err := p.Validate(); err != nil {
		panic(err)
	}
	n, k, r, kpad := p.N, p.K, p.R, p.KPad()
	l := &quant.Layer{Precision: p.Precision, N: n, K: k, R: r, DType: p.DType, Unsigned: p.Unsigned,
		TensorScale: p.WTScale}
	h16 := func(b []byte, i int) float32 {
		u := binary.LittleEndian.Uint16(b[2*i:])
		if p.DType == quant.F16 {
			return quant.F16ToF32(u)
		}
		return quant.BF16ToF32(u)
	}
	l.Codes = make([]int8, n*k)
	for i := 0; i < n; i++ {
		for j := 0; j < k; j++ {
			c := qweightNibble(p.QWeight, i, j, kpad)
			if p.Precision == quant.INT4 {
				l.Codes[i*k+j] = int8(c^8) - 8
			} else {
				l.Codes[i*k+j] = int8(c)
			}
		}
	}
	g := l.Groups()
	l.Scales = make([]float32, n*g)
	for i := 0; i < n; i++ {
		for j := 0; j < g; j++ {
			if p.Precision == quant.INT4 {
				l.Scales[i*g+j] = h16(p.WScales, wscaleInt4Pos(i, j, kpad))
			} else {
				l.Scales[i*g+j] = quant.E4M3ToF32(p.WScales[wscaleFP4Pos(i, j, kpad)])
			}
		}
	}
	l.Smooth = make([]float32, k)
	for j := range l.Smooth {
		l.Smooth[j] = h16(p.Smooth, vec1dPos(j))
	}
	l.Bias = make([]float32, n)
	for i := range l.Bias {
		l.Bias[i] = h16(p.Bias, vec1dPos(i))
	}
	l.Down = make([]float32, r*k)
	for q := 0; q < r; q++ {
		for j := 0; j < k; j++ {
			l.Down[q*k+j] = h16(p.Down, loraPos((j>>4)*(r>>4)+(q>>4), q&15, j&15))
		}
	}
	l.Up = make([]float32, n*r)
	for i := 0; i < n; i++ {
		for q := 0; q < r; q++ {
			l.Up[i*r+q] = h16(p.Up, loraPos((i>>4)*(r>>4)+(q>>4), i&15, q&15))
		}
	}
	return l
}

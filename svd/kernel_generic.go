package svd

import "unsafe"

// genericSet is the portable kernel: a 4×4 tile with its 16 accumulators in
// scalar registers. It runs on every architecture and is the fallback where
// no SIMD kernel exists.
var genericSet = &kernelSet{name: "generic", variants: []*microKernel{{
	name: "generic4x4",
	mr:   4, nr: 4,
	mc: 128, kc: 256, nc: 2048,
	fn: kernGeneric,
}}}

// kernGeneric implements microKernel.fn for a 4×4 tile.
func kernGeneric(k int, a *float32, ars, aps int, b, c *float32, ldc int, alpha, beta float32) {
	ap := unsafe.Slice(a, 3*ars+(k-1)*aps+1)
	bp := unsafe.Slice(b, 4*k)
	var c00, c01, c02, c03, c10, c11, c12, c13 float32
	var c20, c21, c22, c23, c30, c31, c32, c33 float32
	for p := 0; p < k; p++ {
		o := p * aps
		a0, a1, a2, a3 := ap[o], ap[o+ars], ap[o+2*ars], ap[o+3*ars]
		bv := bp[4*p : 4*p+4 : 4*p+4]
		b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
		c00 += a0 * b0
		c01 += a0 * b1
		c02 += a0 * b2
		c03 += a0 * b3
		c10 += a1 * b0
		c11 += a1 * b1
		c12 += a1 * b2
		c13 += a1 * b3
		c20 += a2 * b0
		c21 += a2 * b1
		c22 += a2 * b2
		c23 += a2 * b3
		c30 += a3 * b0
		c31 += a3 * b1
		c32 += a3 * b2
		c33 += a3 * b3
	}
	cp := unsafe.Slice(c, 3*ldc+4)
	acc := [4][4]float32{
		{c00, c01, c02, c03},
		{c10, c11, c12, c13},
		{c20, c21, c22, c23},
		{c30, c31, c32, c33},
	}
	for i := range acc {
		row := cp[i*ldc : i*ldc+4 : i*ldc+4]
		if beta == 0 {
			for j, v := range acc[i] {
				row[j] = alpha * v
			}
		} else {
			for j, v := range acc[i] {
				row[j] = alpha*v + beta*row[j]
			}
		}
	}
}

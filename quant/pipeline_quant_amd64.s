//go:build !purego

#include "textflag.h"

// func groupAbsMaxAVX512(dst *uint32, v *float32, groups int)
// dst[g] = max over the 64 values of group g of their bits with the sign
// cleared (so NaN > +Inf > finite, as absMaxBits).
TEXT ·groupAbsMaxAVX512(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ v+8(FP), SI
	MOVQ groups+16(FP), CX
	MOVL $0x7fffffff, AX
	VPBROADCASTD AX, Z28
	TESTQ CX, CX
	JLE  amaxdone

amaxloop:
	VPANDD  0(SI), Z28, Z0
	VPANDD  64(SI), Z28, Z1
	VPANDD  128(SI), Z28, Z2
	VPANDD  192(SI), Z28, Z3
	VPMAXUD Z1, Z0, Z0
	VPMAXUD Z3, Z2, Z2
	VPMAXUD Z2, Z0, Z0
	VEXTRACTI64X4 $1, Z0, Y1
	VPMAXUD Y1, Y0, Y0
	VEXTRACTI128 $1, Y0, X1
	VPMAXUD X1, X0, X0
	VPSHUFD $0x4e, X0, X1
	VPMAXUD X1, X0, X0
	VPSHUFD $0xb1, X0, X1
	VPMAXUD X1, X0, X0
	MOVL    X0, (DI)
	ADDQ    $256, SI
	ADDQ    $4, DI
	DECQ    CX
	JNZ     amaxloop

amaxdone:
	VZEROUPPER
	RET

// func quantGroupsAVX512(v *float32, codes *int8, scales *float32, groups int)
// For each group g of 64 values with scale s = scales[g]:
// code = clamp(RoundToEven(x/s), -8, 7) (IEEE division), v = code·s.
// Groups whose scale is 0 get garbage: the caller clears them.
TEXT ·quantGroupsAVX512(SB), NOSPLIT, $0-32
	MOVQ v+0(FP), SI
	MOVQ codes+8(FP), DI
	MOVQ scales+16(FP), DX
	MOVQ groups+24(FP), CX
	MOVL $0x40e00000, AX // 7.0
	VPBROADCASTD AX, Z30
	MOVL $0xc1000000, AX // -8.0
	VPBROADCASTD AX, Z29
	TESTQ CX, CX
	JLE  qdone

qloop:
	VBROADCASTSS (DX), Z31
	VMOVUPS 0(SI), Z0
	VMOVUPS 64(SI), Z1
	VMOVUPS 128(SI), Z2
	VMOVUPS 192(SI), Z3
	VDIVPS  Z31, Z0, Z0
	VDIVPS  Z31, Z1, Z1
	VDIVPS  Z31, Z2, Z2
	VDIVPS  Z31, Z3, Z3
	VMINPS  Z30, Z0, Z0
	VMINPS  Z30, Z1, Z1
	VMINPS  Z30, Z2, Z2
	VMINPS  Z30, Z3, Z3
	VMAXPS  Z29, Z0, Z0
	VMAXPS  Z29, Z1, Z1
	VMAXPS  Z29, Z2, Z2
	VMAXPS  Z29, Z3, Z3
	VRNDSCALEPS $0, Z0, Z0
	VRNDSCALEPS $0, Z1, Z1
	VRNDSCALEPS $0, Z2, Z2
	VRNDSCALEPS $0, Z3, Z3
	VCVTPS2DQ Z0, Z4
	VCVTPS2DQ Z1, Z5
	VCVTPS2DQ Z2, Z6
	VCVTPS2DQ Z3, Z7
	VPMOVDB Z4, 0(DI)
	VPMOVDB Z5, 16(DI)
	VPMOVDB Z6, 32(DI)
	VPMOVDB Z7, 48(DI)
	VMULPS  Z31, Z0, Z0
	VMULPS  Z31, Z1, Z1
	VMULPS  Z31, Z2, Z2
	VMULPS  Z31, Z3, Z3
	VMOVUPS Z0, 0(SI)
	VMOVUPS Z1, 64(SI)
	VMOVUPS Z2, 128(SI)
	VMOVUPS Z3, 192(SI)
	ADDQ    $256, SI
	ADDQ    $64, DI
	ADDQ    $4, DX
	DECQ    CX
	JNZ     qloop

qdone:
	VZEROUPPER
	RET

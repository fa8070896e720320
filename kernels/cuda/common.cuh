// Common helpers of the svdq kernels: 16-bit and 8-bit float conversions,
// the packed nunchaku layouts (index functions), the activation layout of
// this package, and the tensor-core instructions.
//
// Layouts (N, K are the padded sizes as stored: multiples of 128; R a
// multiple of 16; M_pad a multiple of 64):
//
//   qweight  int8 [N, K/2]: n = nt*128 + p*16 + a*8 + g, k = kt*64 + b*32 + c*8 + e;
//            uint32 word order nt, kt, p, g, c, a, b; nibble e at bits 4e.
//   wscales  INT4: 16-bit [K/64, N] packed: n = nt*128 + x*16 + y*8 + c*2 + d,
//            order nt, group, x, c, y, d.
//            NVFP4: E4M3 [K/16, N]: n = nt*128 + s*32 + x*8 + y, group = kt*4 + j,
//            order nt, kt, y, x, s, j.
//   bias, smooth (1-D, 16-bit): within each 128-chunk element x*16+y*8+c*2+d
//            at position ((x*4 + c)*2 + y)*2 + d.
//   lora_down 16-bit, logical [R, K], 16x16 tiles K-tile outer, R-tile inner;
//   lora_up   16-bit, logical [N, R], tiles N-tile outer, R-tile inner;
//            inside a tile row = a*8+g, col = b*8+c*2+e, order g, c, a, b, e.
//
//   act (this package's own layout of quantized activations): uint32
//            [M_pad/16][K/64][32 lanes][4 words]; lane = g*4 + c holds
//            word 0: row g,   k = 8c..8c+7;     word 1: row g+8, k = 8c..8c+7;
//            word 2: row g,   k = 32+8c..+7;    word 3: row g+8, k = 32+8c..+7;
//            nibble e (k offset e) at bits 4e. These are exactly the A
//            fragments of mma.m16n8k64 (4-bit), so a lane loads one uint4.
//   ascale   INT4: 16-bit [K/64][M_pad] in the model dtype (with act8, the
//            tokens of each row in as8_pos order); NVFP4: float [K/16][M_pad]
//            holding the E4M3 values.
//   lract    float [M_pad][R], x . proj_down in FP32.
#pragma once
#include <stdint.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#define SVDQ_DEV __device__ __forceinline__

// ---- 16-bit model dtype (BF: bfloat16, else IEEE half) ----
template <bool BF> SVDQ_DEV float h2f(uint16_t h) {
  if (BF) return __uint_as_float(uint32_t(h) << 16);
  __half_raw r; r.x = h; return __half2float(__half(r));
}
// round16 rounds f to the model dtype (nearest, ties to even) and back.
template <bool BF> SVDQ_DEV float round16(float f) {
  if (BF) return __bfloat162float(__float2bfloat16_rn(f));
  return __half2float(__float2half_rn(f));
}
template <bool BF> SVDQ_DEV uint16_t f2h(float f) {
  if (BF) { __nv_bfloat16 b = __float2bfloat16_rn(f); return *reinterpret_cast<uint16_t*>(&b); }
  __half h = __float2half_rn(f); return *reinterpret_cast<uint16_t*>(&h);
}
// pack2 rounds two floats to the dtype, lo in the low half.
template <bool BF> SVDQ_DEV uint32_t pack2(float lo, float hi) {
  return uint32_t(f2h<BF>(lo)) | (uint32_t(f2h<BF>(hi)) << 16);
}
// unpack2 widens a pair of 16-bit values.
template <bool BF> SVDQ_DEV float2 unpack2(uint32_t v) {
  return make_float2(h2f<BF>(uint16_t(v & 0xFFFF)), h2f<BF>(uint16_t(v >> 16)));
}
// Paired 16-bit arithmetic, each result rounded once to the dtype (ties to
// even): the __hmul2 / __hfma2 / __hadd2 of nunchaku's epilogues.
template <bool BF> SVDQ_DEV uint32_t hmul2(uint32_t a, uint32_t b) {
  uint32_t d;
  if (BF) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162 *>(&a), *reinterpret_cast<__nv_bfloat162 *>(&b));
    d = *reinterpret_cast<uint32_t *>(&r);
  } else {
    __half2 r = __hmul2(*reinterpret_cast<__half2 *>(&a), *reinterpret_cast<__half2 *>(&b));
    d = *reinterpret_cast<uint32_t *>(&r);
  }
  return d;
}
template <bool BF> SVDQ_DEV uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  if (BF) {
    __nv_bfloat162 r = __hfma2(*reinterpret_cast<__nv_bfloat162 *>(&a), *reinterpret_cast<__nv_bfloat162 *>(&b),
                               *reinterpret_cast<__nv_bfloat162 *>(&c));
    d = *reinterpret_cast<uint32_t *>(&r);
  } else {
    __half2 r = __hfma2(*reinterpret_cast<__half2 *>(&a), *reinterpret_cast<__half2 *>(&b),
                        *reinterpret_cast<__half2 *>(&c));
    d = *reinterpret_cast<uint32_t *>(&r);
  }
  return d;
}
template <bool BF> SVDQ_DEV uint32_t hadd2(uint32_t a, uint32_t b) {
  uint32_t d;
  if (BF) {
    __nv_bfloat162 r = __hadd2(*reinterpret_cast<__nv_bfloat162 *>(&a), *reinterpret_cast<__nv_bfloat162 *>(&b));
    d = *reinterpret_cast<uint32_t *>(&r);
  } else {
    __half2 r = __hadd2(*reinterpret_cast<__half2 *>(&a), *reinterpret_cast<__half2 *>(&b));
    d = *reinterpret_cast<uint32_t *>(&r);
  }
  return d;
}
// Scalar forms for the reference kernel.
template <bool BF> SVDQ_DEV float hfma1(float a, float b, float c) {
  if (BF) return __bfloat162float(__hfma(__float2bfloat16_rn(a), __float2bfloat16_rn(b), __float2bfloat16_rn(c)));
  return __half2float(__hfma(__float2half_rn(a), __float2half_rn(b), __float2half_rn(c)));
}
template <bool BF> SVDQ_DEV float hadd1(float a, float b) {
  if (BF) return __bfloat162float(__hadd(__float2bfloat16_rn(a), __float2bfloat16_rn(b)));
  return __half2float(__hadd(__float2half_rn(a), __float2half_rn(b)));
}
// out16 rounds a layer output to the dtype; FP16 clamps to +-65504 first
// (nunchaku's EpilogueDefault).
template <bool BF> SVDQ_DEV float out16(float f) {
  if (!BF) f = fmaxf(-65504.f, fminf(65504.f, f));
  return round16<BF>(f);
}
// kernel_rcp is nunchaku's reciprocal (cuda_frcp, gemm_utils.cuh):
// rcp.approx.ftz.f32, subnormal inputs giving an infinite reciprocal and
// results below 2^-126 flushed to zero. quant/kernel_rcp.go emulates it from
// a table measured on an H100 (scripts/hw-probe.cu).
SVDQ_DEV float kernel_rcp(float s) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(s));
  return r;
}

// kernel_div is nunchaku's h2div division (__fdividef): x times
// rcp.approx(λ), rounded once (the same results as __fdividef on an H100,
// scripts/hw-probe.cu; written out so that the compiler cannot choose
// another sequence).
SVDQ_DEV float kernel_div(float x, float l) { return __fmul_rn(x, kernel_rcp(l)); }

// E4M3 (fp8 e4m3fn) with saturation, and back.
SVDQ_DEV float e4m3_round_sat(float f) {
  __nv_fp8_storage_t s = __nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3);
  __half_raw h = __nv_cvt_fp8_to_halfraw(s, __NV_E4M3);
  return __half2float(__half(h));
}
SVDQ_DEV float e4m3_to_f(uint8_t b) {
  __half_raw h = __nv_cvt_fp8_to_halfraw(b, __NV_E4M3);
  return __half2float(__half(h));
}
// E2M1: code bit 3 the sign, magnitudes 0, .5, 1, 1.5, 2, 3, 4, 6.
SVDQ_DEV float e2m1_to_f(uint32_t code) {
  uint32_t m = code & 7;
  // m >= 2: exponent (m>>1)-1, mantissa bit m&1; m < 2: subnormal m*0.5.
  float v = m < 2 ? 0.5f * float(m) : __uint_as_float((((m >> 1) + 126u) << 23) | ((m & 1u) << 22));
  return (code & 8) ? -v : v;
}
// e2m1_encode returns the nearest E2M1 code of v, ties to the even code.
SVDQ_DEV uint32_t e2m1_encode(float v) {
  float a = fabsf(v);
  uint32_t m;
  if (a <= 0.25f) m = 0;
  else if (a < 0.75f) m = 1;
  else if (a <= 1.25f) m = 2;
  else if (a < 1.75f) m = 3;
  else if (a <= 2.5f) m = 4;
  else if (a < 3.5f) m = 5;
  else if (a <= 5.f) m = 6;
  else m = 7;
  return m | (signbit(v) ? 8u : 0u);
}

// ---- packed layout index functions (element indices) ----
// vec1d_pos is the position of element i of a packed 1-D vector.
SVDQ_DEV int vec1d_pos(int i) {
  int r = i & 127, x = r >> 4, y = (r >> 3) & 1, c = (r >> 1) & 3, d = r & 1;
  return (i & ~127) + (((x * 4 + c) * 2 + y) * 2 + d);
}
// qweight_nibble returns the 4-bit code of W[n, k].
SVDQ_DEV uint32_t qweight_nibble(const uint8_t *qw, int n, int k, int K) {
  int nt = n >> 7, r = n & 127, p = r >> 4, a = (r >> 3) & 1, g = r & 7;
  int kt = k >> 6, s = k & 63, b = s >> 5, c = (s >> 3) & 3, e = s & 7;
  size_t word = ((((((size_t)nt * (K >> 6) + kt) * 8 + p) * 8 + g) * 4 + c) * 2 + a) * 2 + b;
  uint8_t byte = qw[word * 4 + (e >> 1)];
  return (e & 1) ? (byte >> 4) : (byte & 15);
}
// wscale_int4_pos is the position of the scale of (n, group) in wscales.
SVDQ_DEV size_t wscale_int4_pos(int n, int grp, int K) {
  int nt = n >> 7, r = n & 127;
  return ((size_t)nt * (K >> 6) + grp) * 128 + (vec1d_pos(r));
}
// wscale_fp4_pos is the position of the E4M3 scale of (n, group of 16).
SVDQ_DEV size_t wscale_fp4_pos(int n, int grp, int K) {
  int nt = n >> 7, r = n & 127, s = r >> 5, x = (r >> 3) & 3, y = r & 7;
  int kt = grp >> 2, j = grp & 3;
  return (((((size_t)nt * (K >> 6) + kt) * 8 + y) * 4 + x) * 4 + s) * 4 + j;
}
// lora_pos is the position of logical element (row, col) of a low-rank
// matrix whose tiles are ordered (row-tile, col-tile) with ncoltiles per row
// for up ([N, R]: row = n, col = r) and (col-tile, row-tile) for down
// ([R, K]: row = r, col = k): pass outer/inner tile indices explicitly.
SVDQ_DEV size_t lora_pos(int tile, int row, int col) {
  int a = (row >> 3) & 1, g = row & 7, b = (col >> 3) & 1, c = (col >> 1) & 3, e = col & 1;
  return (size_t)tile * 256 + ((((g * 4 + c) * 2 + a) * 2 + b) * 2 + e);
}
// act_nibble returns the activation code of (m, k) in this package's layout.
SVDQ_DEV uint32_t act_nibble(const uint32_t *act, int m, int k, int K) {
  int mt = m >> 4, r = m & 15, g = r & 7, hi = r >> 3;
  int kt = k >> 6, s = k & 63, h = s >> 5, c = (s >> 3) & 3, e = s & 7;
  size_t pos = (((size_t)mt * (K >> 6) + kt) * 32 + g * 4 + c) * 4 + h * 2 + hi;
  return (act[pos] >> (4 * e)) & 15;
}

// act8_pos is the byte of (token m, logical byte L of group kt) in act8,
// the byte-per-code activation layout of the Hopper GEMM (E4M3 codes for
// BF16 models, INT8 for FP16; gemm_w4a4_sm90.cuh).
SVDQ_DEV size_t act8_pos(int m, int kt, int L, int Mpad) {
  return (((size_t)kt * (Mpad >> 3) + (m >> 3)) * 4 + (L >> 4)) * 128 + (m & 7) * 16 + (L & 15);
}
// as8_pos is the place of token m's scale in its group's row of ascale
// when the activation pass writes act8: within each 64 tokens, token
// 8j + 2c + e at 16c + 2j + e, so that the GEMM lane with c = lane % 4 reads
// its 16 scales (tokens 8j + 2c, +1, j < 8) as two 16-byte loads.
SVDQ_DEV int as8_pos(int m) { return (m & ~63) | (((m >> 1) & 3) << 4) | (((m >> 3) & 7) << 1) | (m & 1); }

// ---- tensor-core instructions ----
// MAGIC: an int32 accumulator started at MAGIC_I holds float bits of
// 12582912 + acc while |acc| < 2^22, so int -> float is one FADD.
#define MAGIC_I 0x4B400000
#define MAGIC_F 12582912.0f

SVDQ_DEV void mma_s4(int (&d)[4], uint4 a, uint32_t b0, uint32_t b1, int c) {
  asm("mma.sync.aligned.m16n8k64.row.col.s32.s4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "r"(c));
}
SVDQ_DEV void mma_u4(int (&d)[4], uint4 a, uint32_t b0, uint32_t b1, int c) {
  asm("mma.sync.aligned.m16n8k64.row.col.s32.u4.s4.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "r"(c));
}
// 8-bit: d = a.b + c (c a 4-register accumulator).
SVDQ_DEV void mma_s8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                     const int (&c)[4]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}
SVDQ_DEV void mma_u8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1,
                     const int (&c)[4]) {
  asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(c[0]), "r"(c[1]), "r"(c[2]), "r"(c[3]));
}
// 16-bit float mma, FP32 accumulate in place: d += a.b.
template <bool BF> SVDQ_DEV void mma_f16(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  if (BF) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}
// FP16 mma with FP32 accumulators started at zero: d = a.b.
SVDQ_DEV void mma_f16_zero(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                           uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "f"(0.f));
}
// nib_lo / nib_hi spread the even / odd nibbles of a word into the top half
// of each byte: as int8 (or uint8) each byte is 16 x the 4-bit value.
SVDQ_DEV uint32_t nib_lo(uint32_t w) { return (w << 4) & 0xF0F0F0F0u; }
SVDQ_DEV uint32_t nib_hi(uint32_t w) { return w & 0xF0F0F0F0u; }

// The NVFP4 W4A4 GEMM on the 16-bit tensor cores (sm_80 and newer; no card
// here has FP4 tensor cores, Hopper included), reading the packed qweight /
// wscales directly, with the bias and the low-rank up projection in the
// epilogue of gemm_w4a4.cuh. Arithmetic, bit for bit that of
// quant.Layer.Forward and of the reference kernel (gemm_ref.cuh):
//
//   per 16-group g, in order:  acc = fmaf(P_g, as*ws, acc)   (FP32; P_g = sum e2m1*e2m1, exact)
//   acc *= wtscale when it is not 1; acc16 = round16(acc); then bias and low-rank as for INT4.
//
// Each group is one mma.m16n8k16 (FP16 operands, FP32 accumulators started
// at zero) per m16 x n8 tile:
//   A = a * 2^-14: the E2M1 magnitude bits placed at FP16 bits 9-11 and the
//       sign at bit 15 (0.5 becomes the subnormal 2^-15), exact;
//   B = (w * 2^-14) * ws by __hmul2: w*ws has at most 6 significant bits and
//       is a multiple of 2^-10, so the product is exact in FP16 (subnormal
//       or not);
//   D = 2^-28 * ws * P_g: the 16 products are exact and all multiples of one
//       quantum with a sum below 2^16 quanta, so the FP32 sum is exact;
//   acc = fmaf(D, as * 2^28, acc): D * as * 2^28 = P_g * as * ws exactly, so
//       this is the emulation's fmaf(P_g, as*ws, acc), rounded once alike.
// The packed fragments hold each 16-group in two lanes of a quad (lane c:
// k = 8c..8c+7 of a 32-k half), while the k16 mma wants four k of the group
// in every lane: lane c takes k = 4c..4c+3 of the group (mma slots 2c, 2c+1,
// 2c+8, 2c+9) from lane 2h + c/2 with one shuffle per word, the same
// permutation for activations and weights.
#pragma once
#include "common.cuh"
#include "gemm_w4a4.cuh"

template <int MT, int PT> struct Fp4Frag {
  uint4 a[MT];        // activation fragments (the act layout of common.cuh)
  uint4 b[PT];        // weight fragments of the warp's p-tiles
  float as[MT][4][2]; // act scales * 2^28 [m16 tile][group j][row g, g+8]
  uint32_t ws[PT][2]; // E4M3 weight scales of the lane's column in n8 half a, group j in byte j
};

template <int MT, int PT>
SVDQ_DEV void fp4_load(Fp4Frag<MT, PT> &f, const uint4 *__restrict__ act, const float *__restrict__ ascale,
                       const uint4 *__restrict__ qw, const uint8_t *__restrict__ wscales, int mtile0, int nt, int p0,
                       int kt, int KT, int Mpad, int lane) {
  const int g = lane >> 2;
#pragma unroll
  for (int i = 0; i < MT; i++) {
    f.a[i] = act[((size_t)(mtile0 + i) * KT + kt) * 32 + lane];
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const float *as = ascale + (size_t)(kt * 4 + j) * Mpad + (mtile0 + i) * 16 + g;
      f.as[i][j][0] = as[0] * 0x1p28f;
      f.as[i][j][1] = as[8] * 0x1p28f;
    }
  }
  const size_t tile = (size_t)nt * KT + kt;
#pragma unroll
  for (int j = 0; j < PT; j++) {
    f.b[j] = qw[(tile * 8 + p0 + j) * 32 + lane];
#pragma unroll
    for (int a = 0; a < 2; a++) // the 4 groups of a column are 4 consecutive bytes
      f.ws[j][a] = *reinterpret_cast<const uint32_t *>(
          wscales + wscale_fp4_pos(nt * 128 + (p0 + j) * 16 + a * 8 + g, kt * 4, KT * 64));
  }
}

// fp4_take returns this lane's 4 codes (bits 0-15, k = 4c..4c+3 of the
// group) of group h of a word pair of quad lanes (2h, 2h+1 hold it).
SVDQ_DEV uint32_t fp4_take(uint32_t word, int lane, int h) {
  const uint32_t v = __shfl_sync(0xffffffffu, word, (lane & ~3) | (2 * h + ((lane & 3) >> 1)));
  return (lane & 1) ? (v >> 16) : (v & 0xFFFFu);
}

// e2m1x4_raw turns 4 E2M1 codes (code i at bits 4i) into two FP16 pairs
// (codes 0, 1 / 2, 3) of code * 2^-14.
SVDQ_DEV uint2 e2m1x4_raw(uint32_t v) {
  const uint32_t ev = v & 0x0F0Fu, od = (v >> 4) & 0x0F0Fu; // codes 0, 2 / 1, 3 in bytes 0, 1
  // byte 6 of the pair (od's byte 2) is zero
  const uint32_t lo = __byte_perm(ev, od, 0x6460), hi = __byte_perm(ev, od, 0x6561);
  return make_uint2(((lo << 9) & 0x0E000E00u) | ((lo << 12) & 0x80008000u),
                    ((hi << 9) & 0x0E000E00u) | ((hi << 12) & 0x80008000u));
}

// e4m3_pair duplicates E4M3 byte j of w into an FP16 pair.
SVDQ_DEV uint32_t e4m3_pair(uint32_t w, int j) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(w >> (8 * j)), __NV_E4M3);
  return uint32_t(h.x) * 0x10001u;
}

// fp4_group accumulates the four 16-groups of one 64-k step.
template <int MT, int PT>
SVDQ_DEV void fp4_group(const Fp4Frag<MT, PT> &f, float (&acc)[MT][PT][2][4], int lane) {
#pragma unroll
  for (int J = 0; J < 4; J++) {
    const int b = J >> 1, h = J & 1;
    uint32_t A[MT][4];
#pragma unroll
    for (int i = 0; i < MT; i++) {
      const uint2 r0 = e2m1x4_raw(fp4_take(b ? f.a[i].z : f.a[i].x, lane, h)); // row g
      const uint2 r1 = e2m1x4_raw(fp4_take(b ? f.a[i].w : f.a[i].y, lane, h)); // row g + 8
      A[i][0] = r0.x; A[i][1] = r1.x; A[i][2] = r0.y; A[i][3] = r1.y;
    }
#pragma unroll
    for (int j = 0; j < PT; j++) {
      const uint32_t bw[4] = {f.b[j].x, f.b[j].y, f.b[j].z, f.b[j].w}; // (a, b) = 00, 01, 10, 11
#pragma unroll
      for (int a = 0; a < 2; a++) {
        const uint2 w = e2m1x4_raw(fp4_take(bw[2 * a + b], lane, h));
        const uint32_t s = e4m3_pair(f.ws[j][a], J);
        const uint32_t b0 = hmul2<false>(w.x, s), b1 = hmul2<false>(w.y, s);
#pragma unroll
        for (int i = 0; i < MT; i++) {
          float d[4];
          mma_f16_zero(d, A[i][0], A[i][1], A[i][2], A[i][3], b0, b1);
#pragma unroll
          for (int q = 0; q < 4; q++) acc[i][j][a][q] = fmaf(d[q], f.as[i][J][q >> 1], acc[i][j][a][q]);
        }
      }
    }
  }
}

template <bool BF, int MODE, int MT, int PT, int NB>
SVDQ_DEV void gemm_nvfp4_body(const uint4 *__restrict__ act, const float *__restrict__ ascale,
                              const uint4 *__restrict__ qw, const uint8_t *__restrict__ wscales,
                              const float *__restrict__ lract, const uint4 *__restrict__ up,
                              const uint16_t *__restrict__ bias, uint16_t *__restrict__ y, int M, int Mpad, int N,
                              int K, int R, float wtscale) {
  const MmaWarp w = mma_warp<MT, PT>();
  const int lane = w.lane, mtile0 = w.mtile0, nt = w.nt, p0 = w.p0;
  const int KT = K >> 6;

  // acc[i][j][a][q]: the mma accumulator order (q 0, 1: row g; 2, 3: row g + 8).
  float acc[MT][PT][2][4] = {};
  Fp4Frag<MT, PT> f[NB];
  mma_groups(
      f, KT,
      [&](Fp4Frag<MT, PT> &b, int kt) { fp4_load(b, act, ascale, qw, wscales, mtile0, nt, p0, kt, KT, Mpad, lane); },
      [&](const Fp4Frag<MT, PT> &b) { fp4_group<MT, PT>(b, acc, lane); });

  uint32_t acc16[MT][PT][2][2];
  each_pair<MT, PT>([&](int i, int j, int a, int h) {
    float v0 = acc[i][j][a][2 * h], v1 = acc[i][j][a][2 * h + 1];
    if (wtscale != 1.f) {
      v0 *= wtscale;
      v1 *= wtscale;
    }
    acc16[i][j][a][h] = pack2<BF>(v0, v1);
  });
  gemm_epilogue<BF, MODE, MT, PT>(acc16, lract, up, bias, y, M, N, R, mtile0, nt, p0, lane);
}

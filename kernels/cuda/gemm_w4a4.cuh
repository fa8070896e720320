// The W4A4 GEMM on the tensor cores, reading the packed qweight / wscales
// directly, with the bias and the low-rank up projection in the epilogue.
// Arithmetic (that of nunchaku's kernel as quant.Layer.Forward mirrors it):
//
//   per 64-group g, in order:  P = sum a_code * w_code          (exact int32)
//                              acc = round16(round16(P) * round16(as*ws) + acc)
//                              (a 16-bit accumulator: __hmul2 / __hfma2)
//   acc = round16(acc + bias)                                   (__hadd2)
//   y   = round16(float(acc) + sum_r round16(lract[r]) * up[n, r])  (FP32 sum)
//
// Block: 4 warps (2 x 2); warp (wm, wn) computes MT m16 tiles x PT p-tiles
// of 16 columns: the block tile is (32 MT) x (32 PT); NB groups of
// fragments are in flight (deeper for the small tiles, whose warps have
// little work per group and wait on the loads). The host picks
// 64x128 (MT 2, PT 4) for large M and smaller tiles when that gives too few
// blocks to fill the GPU (the 16-bit accumulator runs the groups of one
// output in order, so K is never split).
// Operands come straight from global memory (L1/L2) in fragment order: one
// 16-byte load per lane per 16x64 activation tile or 16x64 weight tile; the
// next group's fragments are loaded before the current group computes.
//
//   sm_90 (Hopper, no 4-bit tensor cores): each nibble is moved into the top
//   half of a byte (the byte is 16 x the value, signed or unsigned) and two
//   mma.m16n8k32 s8 (u8 x s8 for unsigned activations) give 256 P, scaled
//   back exactly. The same even/odd nibble split is applied to activations
//   and weights, so every k meets its own k.
//   sm_80..89: one mma.m16n8k64 s4 (u4 x s4) per n8 tile.
// The int32 accumulator starts at MAGIC_I so that int -> float is one FFMA.
//
// MODE: 0 main + bias + low-rank; 1 main + bias; 2 y += low-rank (reads y:
// the second pass of the unfused variant; the same numbers as mode 0).
#pragma once
#include "common.cuh"

#define GEMM_MODE_FUSED 0
#define GEMM_MODE_NOLORA 1
#define GEMM_MODE_UPADD 2

template <int MT, int PT> struct GemmFrag {
  uint4 a[MT];        // activation fragments of the warp's m16 tiles
  uint4 b[PT];        // weight fragments of the warp's p-tiles
  uint32_t as[MT][2]; // act scales, duplicated into 16-bit pairs [m16 tile][row g, g+8]
  uint2 ws[PT];       // 4 packed 16-bit weight scales per p-tile: pairs for n8 half 0, 1
};

template <int MT, int PT>
SVDQ_DEV void gemm_load(GemmFrag<MT, PT> &f, const uint4 *__restrict__ act, const uint16_t *__restrict__ ascale,
                        const uint4 *__restrict__ qw, const uint16_t *__restrict__ wscales, int mtile0, int nt, int p0,
                        int kt, int KT, int Mpad, int lane) {
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int i = 0; i < MT; i++) {
    f.a[i] = act[((size_t)(mtile0 + i) * KT + kt) * 32 + lane];
    const uint16_t *as = ascale + (size_t)kt * Mpad + (mtile0 + i) * 16 + g;
    f.as[i][0] = uint32_t(as[0]) * 0x10001u;
    f.as[i][1] = uint32_t(as[8]) * 0x10001u;
  }
  const size_t tile = (size_t)nt * KT + kt;
#pragma unroll
  for (int j = 0; j < PT; j++) {
    f.b[j] = qw[(tile * 8 + p0 + j) * 32 + lane];
    f.ws[j] = *reinterpret_cast<const uint2 *>(wscales + tile * 128 + ((p0 + j) * 4 + c) * 4);
  }
}

// gemm_group accumulates one 64-group: acc16 = hfma(round16(P), as*ws, acc16).
template <bool UNS, bool BF, bool SM90, int MT, int PT>
SVDQ_DEV void gemm_group(const GemmFrag<MT, PT> &f, uint32_t (&acc16)[MT][PT][2][2]) {
  // float(P) = int_as_float(d) * PS - MAGIC_F * PS, exact (one FFMA).
  constexpr float PS = SM90 ? 1.f / 256.f : 1.f;
  uint32_t alo[MT][4], ahi[MT][4];
  if (SM90) {
#pragma unroll
    for (int i = 0; i < MT; i++) {
      alo[i][0] = nib_lo(f.a[i].x); alo[i][1] = nib_lo(f.a[i].y);
      alo[i][2] = nib_lo(f.a[i].z); alo[i][3] = nib_lo(f.a[i].w);
      ahi[i][0] = nib_hi(f.a[i].x); ahi[i][1] = nib_hi(f.a[i].y);
      ahi[i][2] = nib_hi(f.a[i].z); ahi[i][3] = nib_hi(f.a[i].w);
    }
  }
#pragma unroll
  for (int j = 0; j < PT; j++) {
    const uint32_t bw[4] = {f.b[j].x, f.b[j].y, f.b[j].z, f.b[j].w};
    const uint32_t wsp[2] = {f.ws[j].x, f.ws[j].y};
#pragma unroll
    for (int a = 0; a < 2; a++) {
      const uint32_t w0 = bw[2 * a], w1 = bw[2 * a + 1];
      const uint32_t b0l = nib_lo(w0), b0h = nib_hi(w0), b1l = nib_lo(w1), b1h = nib_hi(w1);
#pragma unroll
      for (int i = 0; i < MT; i++) {
        int d[4];
        if (SM90) {
          const int m4[4] = {MAGIC_I, MAGIC_I, MAGIC_I, MAGIC_I};
          int t[4];
          if (UNS) {
            mma_u8(t, alo[i][0], alo[i][1], ahi[i][0], ahi[i][1], b0l, b0h, m4);
            mma_u8(d, alo[i][2], alo[i][3], ahi[i][2], ahi[i][3], b1l, b1h, t);
          } else {
            mma_s8(t, alo[i][0], alo[i][1], ahi[i][0], ahi[i][1], b0l, b0h, m4);
            mma_s8(d, alo[i][2], alo[i][3], ahi[i][2], ahi[i][3], b1l, b1h, t);
          }
        } else {
          if (UNS) mma_u4(d, f.a[i], w0, w1, MAGIC_I);
          else mma_s4(d, f.a[i], w0, w1, MAGIC_I);
        }
        float p[4];
#pragma unroll
        for (int q = 0; q < 4; q++) p[q] = fmaf(__int_as_float(d[q]), PS, -MAGIC_F * PS);
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const uint32_t p16 = pack2<BF>(p[2 * h], p[2 * h + 1]);
          const uint32_t s16 = hmul2<BF>(f.as[i][h], wsp[a]);
          acc16[i][j][a][h] = hfma2<BF>(p16, s16, acc16[i][j][a][h]);
        }
      }
    }
  }
}

// MmaWarp is a warp's place in the 2 x 2-warp block of the mma kernels
// (this file's and gemm_nvfp4.cuh's): its first m16 tile, and its first
// p-tile (16 columns) as the 128-column chunk nt and index p0 there.
struct MmaWarp {
  int lane, mtile0, nt, p0;
};
template <int MT, int PT> SVDQ_DEV MmaWarp mma_warp() {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int pglob = blockIdx.y * 2 * PT + (warp >> 1) * PT; // first global p-tile
  return MmaWarp{lane, int(blockIdx.x) * 2 * MT + (warp & 1) * MT, pglob >> 3, pglob & 7};
}
// each_pair calls f(i, j, a, h) for every 16-bit pair acc16[i][j][a][h]
// of a warp's MT x PT tiles (columns 2c, 2c + 1 of n8 half a, row g + 8h).
template <int MT, int PT, typename F> SVDQ_DEV void each_pair(F f) {
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int j = 0; j < PT; j++)
#pragma unroll
      for (int a = 0; a < 2; a++)
#pragma unroll
        for (int h = 0; h < 2; h++) f(i, j, a, h);
}
// each_y_pair calls f(i, j, a, h, p) for the pairs whose row is below M,
// p pointing at the pair's 32 bits in y (p-tile p0 + j of chunk nt).
template <int MT, int PT, typename F>
SVDQ_DEV void each_y_pair(uint16_t *y, int M, int N, int mtile0, int nt, int p0, int lane, F f) {
  const int g = lane >> 2, c = lane & 3;
#pragma unroll
  for (int i = 0; i < MT; i++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const int row = (mtile0 + i) * 16 + g + 8 * h;
      if (row < M) {
#pragma unroll
        for (int j = 0; j < PT; j++)
#pragma unroll
          for (int a = 0; a < 2; a++)
            f(i, j, a, h, reinterpret_cast<uint32_t *>(y + (size_t)row * N + nt * 128 + (p0 + j) * 16 + a * 8 + 2 * c));
      }
    }
}
// mma_groups runs the K loop of the mma kernels: NB fragment buffers used
// in turn (no register copies between groups), so that the loads of group
// kt + NB - 1 are in flight while group kt computes; load(f, kt) fills a
// buffer, group(f) consumes one.
template <int NB, typename F, typename L, typename G> SVDQ_DEV void mma_groups(F (&f)[NB], int KT, L load, G group) {
#pragma unroll
  for (int s = 0; s < NB - 1; s++)
    if (s < KT) load(f[s], s);
  for (int kt = 0; kt < KT; kt += NB) {
#pragma unroll
    for (int s = 0; s < NB; s++) {
      if (kt + s < KT) {
        if (kt + s + NB - 1 < KT) load(f[(s + NB - 1) % NB], kt + s + NB - 1);
        group(f[s]);
      }
    }
  }
}

// gemm_epilogue finishes the block's outputs from the 16-bit accumulators
// acc16[i][j][a][h] (the pair of columns 2c, 2c+1 of row g + 8h): the bias
// (not in the upadd pass), the low-rank up projection (fused and upadd),
// the FP16 clamp, the stores. Shared by the INT4 and NVFP4 mma kernels.
template <bool BF, int MODE, int MT, int PT>
SVDQ_DEV void gemm_epilogue(uint32_t (&acc16)[MT][PT][2][2], const float *__restrict__ lract,
                            const uint4 *__restrict__ up, const uint16_t *__restrict__ bias, uint16_t *__restrict__ y,
                            int M, int N, int R, int mtile0, int nt, int p0, int lane) {
  const int g = lane >> 2, c = lane & 3;
  // Bias (16-bit add), before the low-rank branch (the upadd pass read y, which has it).
  if (MODE != GEMM_MODE_UPADD) {
#pragma unroll
    for (int j = 0; j < PT; j++) {
      const uint2 bb = *reinterpret_cast<const uint2 *>(bias + nt * 128 + ((p0 + j) * 4 + c) * 4);
#pragma unroll
      for (int i = 0; i < MT; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
          acc16[i][j][0][h] = hadd2<BF>(acc16[i][j][0][h], bb.x);
          acc16[i][j][1][h] = hadd2<BF>(acc16[i][j][1][h], bb.y);
        }
    }
  }

  // Low-rank epilogue, one (m16 tile, p-tile) at a time so that only 8
  // FP32 accumulators are live: y = round16(float(acc16) + round16(lract)·up).
  const int RT = R >> 4;
  if ((MODE == GEMM_MODE_FUSED || MODE == GEMM_MODE_UPADD) && RT > 0) {
#pragma unroll
    for (int i = 0; i < MT; i++) {
      const float *l0 = lract + (size_t)((mtile0 + i) * 16 + g) * R + 2 * c;
      const float *l1 = l0 + 8 * (size_t)R;
#pragma unroll
      for (int j = 0; j < PT; j++) {
        float acc[2][4];
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
          for (int h = 0; h < 2; h++) {
            const float2 v = unpack2<BF>(acc16[i][j][a][h]);
            acc[a][2 * h] = v.x;
            acc[a][2 * h + 1] = v.y;
          }
        const uint4 *upj = up + (size_t)(nt * 8 + p0 + j) * RT * 32 + lane;
        for (int rt = 0; rt < RT; rt++) {
          const float2 f00 = *reinterpret_cast<const float2 *>(l0 + rt * 16);
          const float2 f10 = *reinterpret_cast<const float2 *>(l1 + rt * 16);
          const float2 f01 = *reinterpret_cast<const float2 *>(l0 + rt * 16 + 8);
          const float2 f11 = *reinterpret_cast<const float2 *>(l1 + rt * 16 + 8);
          const uint32_t la0 = pack2<BF>(f00.x, f00.y), la1 = pack2<BF>(f10.x, f10.y);
          const uint32_t la2 = pack2<BF>(f01.x, f01.y), la3 = pack2<BF>(f11.x, f11.y);
          const uint4 u = upj[rt * 32];
          mma_f16<BF>(acc[0], la0, la1, la2, la3, u.x, u.y);
          mma_f16<BF>(acc[1], la0, la1, la2, la3, u.z, u.w);
        }
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
          for (int h = 0; h < 2; h++)
            acc16[i][j][a][h] = pack2<BF>(out16<BF>(acc[a][2 * h]), out16<BF>(acc[a][2 * h + 1]));
      }
    }
  } else if (!BF) { // FP16 outputs are clamped to +-65504 on every path
    each_pair<MT, PT>([&](int i, int j, int a, int h) {
      const float2 v = unpack2<BF>(acc16[i][j][a][h]);
      acc16[i][j][a][h] = pack2<BF>(out16<BF>(v.x), out16<BF>(v.y));
    });
  }
  each_y_pair<MT, PT>(y, M, N, mtile0, nt, p0, lane,
                      [&](int i, int j, int a, int h, uint32_t *p) { *p = acc16[i][j][a][h]; });
}

template <bool UNS, bool BF, int MODE, int MT, int PT, int NB>
SVDQ_DEV void gemm_w4a4_body(const uint4 *__restrict__ act, const uint16_t *__restrict__ ascale,
                             const uint4 *__restrict__ qw, const uint16_t *__restrict__ wscales,
                             const float *__restrict__ lract, const uint4 *__restrict__ up,
                             const uint16_t *__restrict__ bias, uint16_t *__restrict__ y, int M, int Mpad, int N,
                             int K, int R) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool SM90 = true;
#else
  constexpr bool SM90 = false;
#endif
  const MmaWarp w = mma_warp<MT, PT>();
  const int lane = w.lane, mtile0 = w.mtile0, nt = w.nt, p0 = w.p0;
  const int KT = K >> 6;

  // acc16[i][j][a][h]: 16-bit pair (cols 2c, 2c+1) of row g + 8h.
  uint32_t acc16[MT][PT][2][2] = {};
  if (MODE == GEMM_MODE_UPADD) {
    each_y_pair<MT, PT>(y, M, N, mtile0, nt, p0, lane,
                        [&](int i, int j, int a, int h, const uint32_t *p) { acc16[i][j][a][h] = *p; });
  } else {
    GemmFrag<MT, PT> f[NB];
    mma_groups(
        f, KT,
        [&](GemmFrag<MT, PT> &b, int kt) { gemm_load(b, act, ascale, qw, wscales, mtile0, nt, p0, kt, KT, Mpad, lane); },
        [&](const GemmFrag<MT, PT> &b) { gemm_group<UNS, BF, SM90, MT, PT>(b, acc16); });
  }
  gemm_epilogue<BF, MODE, MT, PT>(acc16, lract, up, bias, y, M, N, R, mtile0, nt, p0, lane);
}

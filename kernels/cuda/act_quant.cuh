// Activation quantization with the fused low-rank down projection, in the
// arithmetic of nunchaku's quantize kernel as quant/emulate_act.go mirrors
// it (quant.Layer.Forward is the reference this must match):
//
//   x16 = x (the 16-bit input)
//   t   = x16, or round16(x16 + 0.171875) for the shifted (unsigned) input
//   v   = round16(t * rcp(smooth))            (__fdividef: FP32 product, then rounded)
//   INT4:  s = absmax(v)*(1/7) (unsigned: *(1/15)); stored round16(s);
//          code = sat(rint(v * rcp(s)))  (-8..7, or 0..15), NaN -> 0;
//          rcp = rcp.approx.ftz.f32, as nunchaku (kernel_rcp)
//   NVFP4: s = min(absmax(v)*(1/6), 448) per 16; stored E4M3(s);
//          code = nearest E2M1(v * rcp(s)), 0 when s = 0
//   DOWN:  lract[m, r] = sum_k x16[m,k] * down[k, r] in FP32 (raw input)
//
// Grid (M_pad/16, splits): block (mt, s) of 4 warps handles rows
// mt*16 .. +15 and the 64-groups [s*ktpb, (s+1)*ktpb); warp w takes groups
// s*ktpb + w, +4, ... The down projection runs on the 16-bit tensor cores
// (products exact, FP32 sums) reading the packed lora_down tiles; the four
// warps' partial sums are added in a fixed order, and with several splits
// the blocks add theirs atomically into lract (zeroed by the host), so the
// order of those additions is not fixed.
// One launch covers the rank tiles rt0 .. rt0+RTN-1; larger ranks take
// more launches of the down-only kernel.
#pragma once
#include "common.cuh"

#define PREC_INT4 1
#define PREC_NVFP4 2

// RTN: rank tiles of 16 one launch covers (8: up to 128 columns; 2: a
// lighter kernel for ranks up to 32, the common case).
// I8 (INT4 only): the codes are written as bytes in the act8 layout of
// common.cuh (the Hopper GEMM's operand) instead of the packed fragments,
// and the scales in as8_pos order: E4M3 bytes for BF16 models (the FP8
// wgmma), INT8 for FP16 ones.
template <int PREC, bool UNS, bool BF, bool QUANT, bool DOWN, int RTN, bool I8 = false>
SVDQ_DEV void act_quant_body(const uint16_t *__restrict__ x, const uint16_t *__restrict__ smooth,
                             const uint16_t *__restrict__ down, uint4 *__restrict__ act, float *__restrict__ ascale,
                             float *__restrict__ lract, int Mpad, int K, int R, int rt0, int ktpb) {
  constexpr int RC = RTN * 16; // rank columns covered
  __shared__ float red[DOWN ? 4 * 16 * RC : 1];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int mt = blockIdx.x;
  const int row0 = mt * 16 + g, row1 = row0 + 8;
  const int KT = K >> 6, RT = R >> 4;

  float acc[RTN][2][4];
#pragma unroll
  for (int i = 0; i < RTN; i++)
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
      for (int j = 0; j < 4; j++) acc[i][h][j] = 0.f;

  const int ktEnd = min(KT, (blockIdx.y + 1) * ktpb);
  for (int kt = blockIdx.y * ktpb + warp; kt < ktEnd; kt += 4) {
    if (QUANT) {
      // v[r][j]: row (g, g+8), j < 8: k = kt*64 + 8c + j; j >= 8: k + 32.
      float v[2][16];
#pragma unroll
      for (int r = 0; r < 2; r++) {
        const uint16_t *xr = x + (size_t)(r ? row1 : row0) * K + kt * 64 + 8 * c;
#pragma unroll
        for (int h = 0; h < 2; h++) {
          uint4 q = *reinterpret_cast<const uint4 *>(xr + 32 * h);
          uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
          for (int j = 0; j < 4; j++) {
            float2 f = unpack2<BF>(w[j]);
            v[r][h * 8 + 2 * j] = UNS ? round16<BF>(__fadd_rn(f.x, 0.171875f)) : f.x;
            v[r][h * 8 + 2 * j + 1] = UNS ? round16<BF>(__fadd_rn(f.y, 0.171875f)) : f.y;
          }
        }
      }
#pragma unroll
      for (int h = 0; h < 2; h++) {
        // 8 consecutive k (aligned to 8) sit at 4 pairs 4 apart in the packed vector.
        const int p0 = vec1d_pos(kt * 64 + 32 * h + 8 * c);
#pragma unroll
        for (int j = 0; j < 4; j++) {
          float2 sm = unpack2<BF>(*reinterpret_cast<const uint32_t *>(smooth + p0 + 4 * j));
#pragma unroll
          for (int r = 0; r < 2; r++) {
            v[r][h * 8 + 2 * j] = round16<BF>(kernel_div(v[r][h * 8 + 2 * j], sm.x));
            v[r][h * 8 + 2 * j + 1] = round16<BF>(kernel_div(v[r][h * 8 + 2 * j + 1], sm.y));
          }
        }
      }
      uint32_t words[2][2] = {{0, 0}, {0, 0}}; // [row][h]
      uint32_t w8[2][2][2] = {};                // I8: [row][h][odd k]: bytes of k = 8c + 2j (+1)
      if (PREC == PREC_INT4) {
#pragma unroll
        for (int r = 0; r < 2; r++) {
          float amax = 0.f;
#pragma unroll
          for (int j = 0; j < 16; j++) amax = fmaxf(amax, fabsf(v[r][j]));
          amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
          amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
          const float sc = __fmul_rn(amax, UNS ? (1.f / 15.f) : (1.f / 7.f));
          if (c == 0) {
            const int row = r ? row1 : row0;
            reinterpret_cast<uint16_t *>(ascale)[(size_t)kt * Mpad + (I8 ? as8_pos(row) : row)] = f2h<BF>(sc);
          }
          const float rc = kernel_rcp(sc);
#pragma unroll
          for (int j = 0; j < 16; j++) {
            const float p = __fmul_rn(v[r][j], rc);
            int q = p != p ? 0 : __float2int_rn(p);
            q = UNS ? min(max(q, 0), 15) : min(max(q, -8), 7);
            words[r][j >> 3] |= (uint32_t(q) & 15u) << (4 * (j & 7));
            if (I8) { // BF16: the code as E4M3 (exact: -8..15); FP16: as INT8
              const uint32_t b = BF ? uint32_t(__nv_cvt_float_to_fp8(float(q), __NV_SATFINITE, __NV_E4M3)) : uint32_t(q) & 0xFFu;
              w8[r][j >> 3][j & 1] |= b << (8 * ((j & 7) >> 1));
            }
          }
        }
      } else { // NVFP4: group 16; lanes c and c^1 share a group.
#pragma unroll
        for (int r = 0; r < 2; r++) {
#pragma unroll
          for (int h = 0; h < 2; h++) {
            float amax = 0.f;
#pragma unroll
            for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[r][h * 8 + j]));
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
            const float sc = fminf(__fmul_rn(amax, 1.f / 6.f), 448.f);
            const int grp = kt * 4 + 2 * h + (c >> 1);
            if ((c & 1) == 0) ascale[(size_t)grp * Mpad + (r ? row1 : row0)] = e4m3_round_sat(sc);
            const float rc = kernel_rcp(sc);
#pragma unroll
            for (int j = 0; j < 8; j++) {
              const float p = __fmul_rn(v[r][h * 8 + j], rc);
              const uint32_t q = (sc == 0.f || p != p) ? 0u : e2m1_encode(p);
              words[r][h] |= q << (4 * j);
            }
          }
        }
      }
      if (I8 && PREC == PREC_INT4) {
        uint8_t *a8 = reinterpret_cast<uint8_t *>(act);
#pragma unroll
        for (int r = 0; r < 2; r++)
#pragma unroll
          for (int h = 0; h < 2; h++)
#pragma unroll
            for (int o = 0; o < 2; o++)
              *reinterpret_cast<uint32_t *>(a8 + act8_pos(r ? row1 : row0, kt, 32 * h + 16 * o + 4 * c, Mpad)) =
                  w8[r][h][o];
      } else {
        act[((size_t)mt * KT + kt) * 32 + lane] = make_uint4(words[0][0], words[1][0], words[0][1], words[1][1]);
      }
    }
    if (DOWN) {
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const int kk = kt * 64 + 16 * j + 2 * c;
        const uint32_t a0 = *reinterpret_cast<const uint32_t *>(x + (size_t)row0 * K + kk);
        const uint32_t a1 = *reinterpret_cast<const uint32_t *>(x + (size_t)row1 * K + kk);
        const uint32_t a2 = *reinterpret_cast<const uint32_t *>(x + (size_t)row0 * K + kk + 8);
        const uint32_t a3 = *reinterpret_cast<const uint32_t *>(x + (size_t)row1 * K + kk + 8);
        const uint4 *dt = reinterpret_cast<const uint4 *>(down) + ((size_t)(kt * 4 + j) * RT) * 32 + lane;
#pragma unroll
        for (int rt = 0; rt < RTN; rt++) {
          if (rt0 + rt < RT) {
            uint4 b = dt[(rt0 + rt) * 32];
            mma_f16<BF>(acc[rt][0], a0, a1, a2, a3, b.x, b.y);
            mma_f16<BF>(acc[rt][1], a0, a1, a2, a3, b.z, b.w);
          }
        }
      }
    }
  }
  if (DOWN) {
    // red[warp][row 0..15][r]
#pragma unroll
    for (int rt = 0; rt < RTN; rt++) {
      if (rt0 + rt < RT) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
          const int col = rt * 16 + h * 8 + 2 * c;
          float *base = red + warp * 16 * RC;
          base[g * RC + col] = acc[rt][h][0];
          base[g * RC + col + 1] = acc[rt][h][1];
          base[(g + 8) * RC + col] = acc[rt][h][2];
          base[(g + 8) * RC + col + 1] = acc[rt][h][3];
        }
      }
    }
    __syncthreads();
    const int ncol = min(R - rt0 * 16, RC);
    for (int i = threadIdx.x; i < 16 * ncol; i += blockDim.x) {
      const int row = i / ncol, col = i % ncol;
      float s = red[row * RC + col];
      s += red[16 * RC + row * RC + col];
      s += red[2 * 16 * RC + row * RC + col];
      s += red[3 * 16 * RC + row * RC + col];
      float *dst = lract + (size_t)(mt * 16 + row) * R + rt0 * 16 + col;
      if (gridDim.y > 1) atomicAdd(dst, s);
      else *dst = s;
    }
  }
}

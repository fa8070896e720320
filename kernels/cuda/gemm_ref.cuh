// The plain reference GEMM: one thread per output y[m, n], scalar loops in
// the order of quant.Layer.Forward, decoding every packed value through the
// index functions of common.cuh. Slow; it checks the fast kernel on the GPU
// and runs NVFP4 layers (which have no tensor-core path here yet).
//
//   INT4:  for g in order: acc = hfma(round16(P_g), round16(as*ws), acc)   (16-bit)
//   NVFP4: acc32 = sum_g P_g * (as*ws) in FP32 (P_g = sum e2m1*e2m1, exact),
//          acc32 *= wtscale when it is not 1, acc = round16(acc32)
//   acc = round16(acc + bias)
//   y   = round16(float(acc) + sum_r round16(lract[m][r]) * up[n][r])   (FP32, r in order)
#pragma once
#include "common.cuh"
#include "act_quant.cuh"

template <int PREC, bool UNS, bool BF>
SVDQ_DEV void gemm_ref_body(const uint32_t *__restrict__ act, const void *__restrict__ ascale,
                            const uint8_t *__restrict__ qw, const uint8_t *__restrict__ wscales, float wtscale,
                            const float *__restrict__ lract, const uint16_t *__restrict__ up,
                            const uint16_t *__restrict__ bias, uint16_t *__restrict__ y, int M, int Mpad, int N, int K,
                            int R) {
  const size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (size_t)M * N) return;
  const int m = int(idx / N), n = int(idx % N);
  float acc = 0.f;
  if (PREC == PREC_INT4) {
    const uint16_t *ws = reinterpret_cast<const uint16_t *>(wscales);
    const uint16_t *as = reinterpret_cast<const uint16_t *>(ascale);
    for (int grp = 0; grp < K / 64; grp++) {
      int p = 0;
      for (int k = grp * 64; k < grp * 64 + 64; k++) {
        int a = int(act_nibble(act, m, k, K));
        if (!UNS) a = (a ^ 8) - 8;
        int w = int(qweight_nibble(qw, n, k, K));
        w = (w ^ 8) - 8;
        p += a * w;
      }
      const float s = round16<BF>(h2f<BF>(as[(size_t)grp * Mpad + m]) * h2f<BF>(ws[wscale_int4_pos(n, grp, K)]));
      acc = hfma1<BF>(round16<BF>(float(p)), s, acc);
    }
  } else {
    const float *as = reinterpret_cast<const float *>(ascale);
    float acc32 = 0.f;
    for (int grp = 0; grp < K / 16; grp++) {
      float p = 0.f;
      for (int k = grp * 16; k < grp * 16 + 16; k++)
        p += e2m1_to_f(act_nibble(act, m, k, K)) * e2m1_to_f(qweight_nibble(qw, n, k, K));
      acc32 = fmaf(p, as[(size_t)grp * Mpad + m] * e4m3_to_f(wscales[wscale_fp4_pos(n, grp, K)]), acc32);
    }
    if (wtscale != 1.f) acc32 *= wtscale;
    acc = round16<BF>(acc32);
  }
  acc = hadd1<BF>(acc, h2f<BF>(bias[vec1d_pos(n)]));
  float out = acc;
  for (int r = 0; r < R; r++)
    out = fmaf(round16<BF>(lract[(size_t)m * R + r]),
               h2f<BF>(up[lora_pos((n >> 4) * (R >> 4) + (r >> 4), n & 15, r & 15)]), out);
  y[(size_t)m * N + n] = f2h<BF>(out16<BF>(out));
}

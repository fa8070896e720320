// svdq GPU kernels: the one translation unit compiled to PTX by
// scripts/build-ptx.sh. Every kernel is extern "C" with the name the Go host
// (kernels/layer.go) looks up; parameters are listed beside each family.
#include "common.cuh"
#include "act_quant.cuh"
#include "gemm_w4a4.cuh"
#include "gemm_w4a4_sm90.cuh"
#include "gemm_nvfp4.cuh"
#include "gemm_ref.cuh"

// svdq_act_<prec><u?>_<dtype>_<mode>(x, smooth, down, act, ascale, lract, Mpad, K, R, rt0, ktpb)
//   grid (Mpad/16, ceil(K/64/ktpb)), block 128. mode: qd (quantize + down), q (quantize),
//   d (down only); the down projection covers rank columns rt0*16 .. rt0*16+127 and,
//   with more than one split, adds into lract atomically (zero it first).
// svdq_act8_int4<u?>_<dtype>_<mode>: the same, the codes written one byte each
//   (E4M3 for bf16, INT8 for f16) in the act8 layout (common.cuh) for the Hopper
//   GEMM (svdq_wg_*), the scales in as8_pos order.
#define ACT_KERNEL(NAME, PREC, UNS, BF, Q, D, RTN, I8)                                                          \
  extern "C" __global__ void __launch_bounds__(128)                                                           \
      NAME(const uint16_t *x, const uint16_t *smooth, const uint16_t *down, uint4 *act, float *ascale,          \
           float *lract, int Mpad, int K, int R, int rt0, int ktpb) {                                          \
    act_quant_body<PREC, UNS, BF, Q, D, RTN, I8>(x, smooth, down, act, ascale, lract, Mpad, K, R, rt0, ktpb); \
  }
// ACT_MODES: the three INT4 modes of one signedness; _qd covers 128 rank
// columns per launch, _qd32 32 (fewer registers), _q none.
#define ACT_MODES(PFX, PREC, UNS, BF, I8)                                                                      \
  ACT_KERNEL(PFX##_qd, PREC, UNS, BF, true, true, 8, I8)                                                     \
  ACT_KERNEL(PFX##_qd32, PREC, UNS, BF, true, true, 2, I8)                                                   \
  ACT_KERNEL(PFX##_q, PREC, UNS, BF, true, false, 1, I8)
#define ACT_DTYPE(SUF, BF)                                                                                     \
  ACT_MODES(svdq_act_int4_##SUF, PREC_INT4, false, BF, false)                                                 \
  ACT_MODES(svdq_act_int4u_##SUF, PREC_INT4, true, BF, false)                                                 \
  ACT_MODES(svdq_act_nvfp4_##SUF, PREC_NVFP4, false, BF, false)                                               \
  ACT_KERNEL(svdq_act_##SUF##_d, PREC_INT4, false, BF, false, true, 8, false)                                \
  ACT_KERNEL(svdq_act_##SUF##_d32, PREC_INT4, false, BF, false, true, 2, false)                              \
  ACT_MODES(svdq_act8_int4_##SUF, PREC_INT4, false, BF, true)                                                 \
  ACT_MODES(svdq_act8_int4u_##SUF, PREC_INT4, true, BF, true)
ACT_DTYPE(bf16, true)
ACT_DTYPE(f16, false)

// svdq_gemm_int4<u?>_<dtype>_<mode>_<tile>(act, ascale, qweight, wscales, lract, up, bias, y, M, Mpad, N, K, R)
//   block 128; tile t64x128 (grid Mpad/64, N/128), t32x128 (Mpad/32, N/128) or
//   t32x64 (Mpad/32, N/64); y [M, N] in the model dtype.
//   mode: fused (+bias +low-rank), nolora (+bias), upadd (y += low-rank).
#define GEMM_KERNEL(NAME, UNS, BF, MODE, MT, PT, NB)                                                               \
  extern "C" __global__ void __launch_bounds__(128)                                                           \
      NAME(const uint4 *act, const uint16_t *ascale, const uint4 *qw, const uint16_t *wscales,                 \
           const float *lract, const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N,      \
           int K, int R) {                                                                                     \
    gemm_w4a4_body<UNS, BF, MODE, MT, PT, NB>(act, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R); \
  }
// MMA_TILES instantiates KERNEL for the three mma.sync tiles (MT, PT, NB of
// gemm_w4a4.cuh); GEMM_TILES and FP4_TILES (below) are its INT4 and NVFP4 forms.
#define MMA_TILES(KERNEL, PFX, UNS, BF, MODE)                                                                  \
  KERNEL(PFX##_t64x128, UNS, BF, MODE, 2, 4, 2)                                                                \
  KERNEL(PFX##_t32x128, UNS, BF, MODE, 1, 4, 3)                                                                \
  KERNEL(PFX##_t32x64, UNS, BF, MODE, 1, 2, 4)
#define GEMM_TILES(PFX, UNS, BF, MODE) MMA_TILES(GEMM_KERNEL, PFX, UNS, BF, MODE)
// DTYPE_MODES instantiates a tile family (TILES: GEMM_TILES, FP4_TILES or WG_TILES) for
// both dtypes, fused and nolora.
#define DTYPE_MODES(TILES, PFX, UNS)                                                                           \
  TILES(PFX##_bf16_fused, UNS, true, GEMM_MODE_FUSED)                                                         \
  TILES(PFX##_bf16_nolora, UNS, true, GEMM_MODE_NOLORA)                                                       \
  TILES(PFX##_f16_fused, UNS, false, GEMM_MODE_FUSED)                                                         \
  TILES(PFX##_f16_nolora, UNS, false, GEMM_MODE_NOLORA)
#define GEMM_SIGN(PFX, UNS) DTYPE_MODES(GEMM_TILES, PFX, UNS)
GEMM_SIGN(svdq_gemm_int4, false)
GEMM_SIGN(svdq_gemm_int4u, true)
// The second pass of the unfused variant does not depend on the signedness.
GEMM_TILES(svdq_gemm_bf16_upadd, false, true, GEMM_MODE_UPADD)
GEMM_TILES(svdq_gemm_f16_upadd, false, false, GEMM_MODE_UPADD)

// svdq_gemm_nvfp4_<dtype>_<mode>_<tile>(act, ascale, qweight, wscales, lract, up, bias, y, M, Mpad, N, K, R, wtscale)
//   NVFP4 on the FP16 tensor cores (gemm_nvfp4.cuh); tiles, grid and block as svdq_gemm_int4.
#define FP4_KERNEL(NAME, UNS, BF, MODE, MT, PT, NB)                                                              \
  extern "C" __global__ void __launch_bounds__(128)                                                           \
      NAME(const uint4 *act, const float *ascale, const uint4 *qw, const uint8_t *wscales, const float *lract,  \
           const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N, int K, int R,            \
           float wtscale) {                                                                                    \
    gemm_nvfp4_body<BF, MODE, MT, PT, NB>(act, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R,     \
                                          wtscale);                                                            \
  }
#define FP4_TILES(PFX, UNS, BF, MODE) MMA_TILES(FP4_KERNEL, PFX, UNS, BF, MODE)
DTYPE_MODES(FP4_TILES, svdq_gemm_nvfp4, false)

// svdq_wg_int4<u?>_<dtype>_<mode>_<tile>(act8, ascale, qweight, wscales, lract, up, bias, y, M, Mpad, N, K, R, lzero)
//   Hopper only (sm_90a; elsewhere the body traps): block WG_THREADS (160), tile n128
//   (grid Mpad/128, N/64) or n64 (grid Mpad/64, N/64); Mpad a multiple of the tile's
//   tokens, K a multiple of 128, N of the tile's channels. mode: fused (+bias +low-rank), nolora (+bias).
//   lzero (fused; may be null): a [Mpad, R] float buffer the kernel zeroes (the next
//   call's low-rank sums, so that no memset precedes its activation pass).
#define WG_KERNEL(NAME, UNS, BF, MODE, TN, MINB)                                                                  \
  extern "C" __global__ void __launch_bounds__(WG_THREADS, MINB)                                              \
      NAME(const int8_t *act8, const uint16_t *ascale, const uint4 *qw, const uint16_t *wscales,               \
           const float *lract, const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N,      \
           int K, int R, float *lzero) {                                                                       \
    gemm_wg_body<UNS, BF, MODE, TN>(act8, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R, lzero);  \
  }
// _n256x2: the multi-warpgroup kernel (gemm_wg2_body, two consumer warpgroups),
//   block WG2_THREADS(2) (384), grid (Mpad/256, N/128), WG2_SMEM(256, 2) (86016)
//   bytes of dynamic shared memory.
#define WG2_KERNEL(NAME, UNS, BF, MODE, TN, NW)                                                                   \
  extern "C" __global__ void __launch_bounds__(WG2_THREADS(NW), 1)                                            \
      NAME(const int8_t *act8, const uint16_t *ascale, const uint4 *qw, const uint16_t *wscales,               \
           const float *lract, const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N,      \
           int K, int R, float *lzero) {                                                                       \
    gemm_wg2_body<UNS, BF, MODE, TN, NW>(act8, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R,     \
                                         lzero);                                                               \
  }
#define WG_TILES(PFX, UNS, BF, MODE)                                                                           \
  WG_KERNEL(PFX##_n128, UNS, BF, MODE, 128, 3)                                                                \
  WG_KERNEL(PFX##_n64, UNS, BF, MODE, 64, 3)                                                                  \
  WG2_KERNEL(PFX##_n256x2, UNS, BF, MODE, 256, 2)
#define WG_SIGN(PFX, UNS) DTYPE_MODES(WG_TILES, PFX, UNS)
WG_SIGN(svdq_wg_int4, false)
WG_SIGN(svdq_wg_int4u, true)

// svdq_ref_<prec><u?>_<dtype>(act, ascale, qweight, wscales, wtscale, lract, up, bias, y, M, Mpad, N, K, R)
//   grid ceil(M*N/256), block 256; y [M, N] in the model dtype.
#define REF_KERNEL(NAME, PREC, UNS, BF)                                                                        \
  extern "C" __global__ void __launch_bounds__(256)                                                           \
      NAME(const uint32_t *act, const void *ascale, const uint8_t *qw, const uint8_t *wscales, float wtscale,   \
           const float *lract, const uint16_t *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N,   \
           int K, int R) {                                                                                     \
    gemm_ref_body<PREC, UNS, BF>(act, ascale, qw, wscales, wtscale, lract, up, bias, y, M, Mpad, N, K, R);    \
  }
REF_KERNEL(svdq_ref_int4_bf16, PREC_INT4, false, true)
REF_KERNEL(svdq_ref_int4u_bf16, PREC_INT4, true, true)
REF_KERNEL(svdq_ref_nvfp4_bf16, PREC_NVFP4, false, true)
REF_KERNEL(svdq_ref_int4_f16, PREC_INT4, false, false)
REF_KERNEL(svdq_ref_int4u_f16, PREC_INT4, true, false)
REF_KERNEL(svdq_ref_nvfp4_f16, PREC_NVFP4, false, false)

// svdq_fill_random(p, n32, seed): n32 uint32 words of a counter-based hash,
// to fill benchmark buffers on the device. grid ceil(n32/256), block 256.
extern "C" __global__ void svdq_fill_random(uint32_t *p, size_t n32, uint32_t seed) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n32) return;
  uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed;
  h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
  p[i] = h;
}
// svdq_fill_h(p, n, lo, hi, seed, bf): n 16-bit floats uniform in [lo, hi).
extern "C" __global__ void svdq_fill_h(uint16_t *p, size_t n, float lo, float hi, uint32_t seed, int bf) {
  size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  uint32_t h = uint32_t(i) * 0x9E3779B1u ^ seed;
  h ^= h >> 16; h *= 0x85EBCA6Bu; h ^= h >> 13; h *= 0xC2B2AE35u; h ^= h >> 16;
  float u = lo + (hi - lo) * float(h >> 8) * (1.f / 16777216.f);
  p[i] = bf ? f2h<true>(u) : f2h<false>(u);
}

// svdq_spin(cycles): one thread busy for about cycles clocks, so that the
// kernels a benchmark enqueues behind it start back to back (the host's
// launch overhead stays out of the timed region). grid 1, block 1.
extern "C" __global__ void svdq_spin(long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
}

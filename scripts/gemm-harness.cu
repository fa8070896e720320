// gemm-harness.cu: development harness of the Hopper GEMM (kernels/cuda/
// gemm_w4a4_sm90.cuh), outside Go. On the GPU machine, from the repo root:
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Ikernels/cuda \
//        scripts/gemm-harness.cu -lcublas -o /tmp/h
//   /tmp/h      bit-for-bit checks against the mma.sync kernel (signed and
//               unsigned activations, fused and nolora, both tiles), then
//               timings of both GEMMs, the activation passes and cuBLAS BF16
//               at FLUX.1's shapes (no L2 flush: indicative only; the
//               numbers to report come from svdq bench-gpu)
//   /tmp/h x    the timings only
//   /tmp/h l    the low-rank branch's cost split into its parts
//   /tmp/h s    the fused GEMM alone, n64 against n128 tile, M 256 to 4096
//   /tmp/h p    one fused GEMM (9216x3072, M 4096; pM: M tokens), for ncu;
//               q / r: the same with the multi-warpgroup kernel n256x2 / n128x3
//   /tmp/h c    the bit-for-bit checks only (they include the multi-warpgroup
//               kernels, gemm_wg2_body, n256x2 and n128x3)
//   /tmp/h z    the signed fused n64 check 200 times (a race shows as a
//               nonzero count); w: the same with n128; y: the multi-
//               warpgroup kernels 100 times
#include "common.cuh"
#include "act_quant.cuh"
#include "gemm_w4a4.cuh"
#include "gemm_w4a4_sm90.cuh"
#include <cublas_v2.h>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cstring>
#include <algorithm>
#include <cuda_bf16.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); exit(1);} } while(0)

template <bool UNS, bool I8> __global__ void __launch_bounds__(128)
k_act(const uint16_t *x, const uint16_t *smooth, const uint16_t *down, uint4 *act, float *ascale, float *lract, int Mpad, int K, int R, int rt0, int ktpb) {
  act_quant_body<PREC_INT4, UNS, true, true, true, 2, I8>(x, smooth, down, act, ascale, lract, Mpad, K, R, rt0, ktpb);
}
template <bool UNS, bool I8> __global__ void __launch_bounds__(128)
k_actq(const uint16_t *x, const uint16_t *smooth, const uint16_t *down, uint4 *act, float *ascale, float *lract, int Mpad, int K, int R, int rt0, int ktpb) {
  act_quant_body<PREC_INT4, UNS, true, true, false, 1, I8>(x, smooth, down, act, ascale, lract, Mpad, K, R, rt0, ktpb);
}
template <bool UNS, int MODE> __global__ void __launch_bounds__(128)
k_old(const uint4 *act, const uint16_t *ascale, const uint4 *qw, const uint16_t *wscales, const float *lract, const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N, int K, int R) {
  gemm_w4a4_body<UNS, true, MODE, 2, 4, 2>(act, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R);
}
template <bool UNS, int MODE, int TN, int MINB> __global__ void __launch_bounds__(WG_THREADS, MINB)
k_new(const int8_t *act, const uint16_t *ascale, const uint4 *qw, const uint16_t *wscales, const float *lract, const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N, int K, int R) {
  gemm_wg_body<UNS, true, MODE, TN>(act, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R, nullptr);
}

#ifdef WG2_THREADS
template <bool UNS, int MODE, int TN, int NW> __global__ void __launch_bounds__(WG2_THREADS(NW), 1)
k_new2(const int8_t *act, const uint16_t *ascale, const uint4 *qw, const uint16_t *wscales, const float *lract, const uint4 *up, const uint16_t *bias, uint16_t *y, int M, int Mpad, int N, int K, int R) {
  gemm_wg2_body<UNS, true, MODE, TN, NW>(act, ascale, qw, wscales, lract, up, bias, y, M, Mpad, N, K, R, nullptr);
}

#endif
static uint32_t rng = 12345;
static uint32_t nxt() { rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5; return rng; }
static float uni(float lo, float hi) { return lo + (hi - lo) * (nxt() >> 8) * (1.f / 16777216.f); }
static uint16_t bf(float f) { __nv_bfloat16 b = __float2bfloat16_rn(f); uint16_t u; memcpy(&u, &b, 2); return u; }
template <class T> T *up_(const std::vector<T> &v) { T *p; CK(cudaMalloc(&p, v.size() * sizeof(T) + 256)); CK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice)); return p; }

struct Prob {
  int M, Mpad, N, K, R;
  uint16_t *x, *smooth, *down, *upm, *bias, *ws; uint8_t *qw;
  uint4 *act; int8_t *act8; float *as1, *as2, *lr1, *lr2; uint16_t *y1, *y2;
};
Prob make(int M, int N, int K, int R, int mpadTo) {
  Prob p; p.M = M; p.N = N; p.K = K; p.R = R; p.Mpad = (M + mpadTo - 1) / mpadTo * mpadTo;
  std::vector<uint16_t> x((size_t)p.Mpad * K, 0), sm(K), dn((size_t)R * K), upv((size_t)N * R), bi(N), ws((size_t)K / 64 * N);
  std::vector<uint8_t> qw((size_t)N * K / 2);
  for (size_t i = 0; i < (size_t)M * K; i++) x[i] = bf(uni(-2, 2) * (nxt() % 50 == 0 ? 8.f : 1.f));
  for (auto &v : sm) v = bf(uni(0.5f, 2.f));
  for (auto &v : dn) v = bf(uni(-0.05f, 0.05f));
  for (auto &v : upv) v = bf(uni(-0.05f, 0.05f));
  for (auto &v : bi) v = bf(uni(-1, 1));
  for (auto &v : ws) v = bf(uni(0.001f, 0.01f));
  for (auto &v : qw) v = nxt() & 255;
  p.x = up_(x); p.smooth = up_(sm); p.down = up_(dn); p.upm = up_(upv); p.bias = up_(bi); p.ws = up_(ws); p.qw = up_(qw);
  CK(cudaMalloc(&p.act, (size_t)p.Mpad * K / 2)); CK(cudaMalloc(&p.act8, (size_t)p.Mpad * K));
  CK(cudaMalloc(&p.as1, (size_t)K / 64 * p.Mpad * 2)); CK(cudaMalloc(&p.as2, (size_t)K / 64 * p.Mpad * 2));
  CK(cudaMalloc(&p.lr1, (size_t)p.Mpad * R * 4)); CK(cudaMalloc(&p.lr2, (size_t)p.Mpad * R * 4));
  CK(cudaMalloc(&p.y1, (size_t)M * N * 2)); CK(cudaMalloc(&p.y2, (size_t)M * N * 2));
  return p;
}
template <bool UNS> void run_act(Prob &p, bool i8) {
  int KT = p.K / 64, ktpb = (KT + 3) / 4 * 4;
  dim3 grid(p.Mpad / 16, 1);
  if (i8) k_act<UNS, true><<<grid, 128>>>(p.x, p.smooth, p.down, (uint4 *)p.act8, p.as2, p.lr2, p.Mpad, p.K, p.R, 0, ktpb);
  else k_act<UNS, false><<<grid, 128>>>(p.x, p.smooth, p.down, p.act, p.as1, p.lr1, p.Mpad, p.K, p.R, 0, ktpb);
}
template <bool UNS, int MODE> void run_old(Prob &p) {
  k_old<UNS, MODE><<<dim3(p.Mpad / 64, p.N / 128), 128>>>(p.act, (uint16_t *)p.as1, (uint4 *)p.qw, p.ws, p.lr1, (uint4 *)p.upm, p.bias, p.y1, p.M, p.Mpad, p.N, p.K, p.R);
}
#ifndef MINB64
#define MINB64 3 // the n64 kernels' blocks per SM (svdq.cu's WG_TILES)
#endif
#ifndef MINB128
#define MINB128 3 // the n128 kernels' blocks per SM
#endif
template <bool UNS, int MODE, int TN, int MINB = (TN == 128 ? MINB128 : MINB64)> void run_new(Prob &p) {
  k_new<UNS, MODE, TN, MINB><<<dim3(p.Mpad / TN, p.N / 64), WG_THREADS>>>(p.act8, (uint16_t *)p.as2, (uint4 *)p.qw, p.ws, p.lr2, (uint4 *)p.upm, p.bias, p.y2, p.M, p.Mpad, p.N, p.K, p.R);
}
#ifdef WG2_THREADS
template <bool UNS, int MODE, int TN, int NW> void run_new2(Prob &p) {
  static bool set = false;
  if (!set) { CK(cudaFuncSetAttribute(k_new2<UNS, MODE, TN, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize, WG2_SMEM(TN, NW))); set = true; }
  k_new2<UNS, MODE, TN, NW><<<dim3(p.Mpad / TN, p.N / (64 * NW)), WG2_THREADS(NW), WG2_SMEM(TN, NW)>>>(p.act8, (uint16_t *)p.as2, (uint4 *)p.qw, p.ws, p.lr2, (uint4 *)p.upm, p.bias, p.y2, p.M, p.Mpad, p.N, p.K, p.R);
  CK(cudaGetLastError());
}
#endif
int cmp(Prob &p, const char *what) {
  std::vector<uint16_t> a((size_t)p.M * p.N), b((size_t)p.M * p.N);
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(a.data(), p.y1, a.size() * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(b.data(), p.y2, b.size() * 2, cudaMemcpyDeviceToHost));
  size_t diff = 0, ulp1 = 0; int first = -1;
  for (size_t i = 0; i < a.size(); i++) if (a[i] != b[i]) { diff++; if (abs((int)a[i] - (int)b[i]) <= 1) ulp1++; if (first < 0) first = i; }
  printf("%-40s M=%d N=%d K=%d: %zu/%zu differ (%zu by 1 ulp)", what, p.M, p.N, p.K, diff, a.size(), ulp1);
  if (first >= 0) { float fa, fb; uint32_t ua = uint32_t(a[first]) << 16, ub = uint32_t(b[first]) << 16; memcpy(&fa, &ua, 4); memcpy(&fb, &ub, 4); printf("  first at tok %d ch %d: %g vs %g", first / p.N, first % p.N, fa, fb); }
  printf("\n");
  return diff != 0;
}
template <bool UNS> void check(int M, int N, int K) {
  Prob p = make(M, N, K, 32, 256);
  run_act<UNS>(p, false); run_act<UNS>(p, true);
  CK(cudaDeviceSynchronize());
  {
    std::vector<uint16_t> a((size_t)K / 64 * p.Mpad), b(a.size());
    CK(cudaMemcpy(a.data(), p.as1, a.size() * 2, cudaMemcpyDeviceToHost)); CK(cudaMemcpy(b.data(), p.as2, b.size() * 2, cudaMemcpyDeviceToHost));
    bool eq = true; // the act8 pass writes each row in as8_pos order
    for (size_t i = 0; i < a.size(); i++) eq = eq && a[i] == b[i / p.Mpad * p.Mpad + (i % p.Mpad & ~(size_t)63) + (((i % p.Mpad) >> 1 & 3) << 4) + (((i % p.Mpad) >> 3 & 7) << 1) + (i & 1)];
    printf("ascale equal: %d\n", (int)eq);
  }
  const char *u = UNS ? "uns" : "sgn";
  char buf[128];
  run_old<UNS, GEMM_MODE_NOLORA>(p); run_new<UNS, GEMM_MODE_NOLORA, 128>(p); snprintf(buf, 128, "%s nolora TN128", u); cmp(p, buf);
  CK(cudaMemset(p.y2, 0, (size_t)M * N * 2));
  run_new<UNS, GEMM_MODE_NOLORA, 64>(p); snprintf(buf, 128, "%s nolora TN64", u); cmp(p, buf);
  run_old<UNS, GEMM_MODE_FUSED>(p); run_new<UNS, GEMM_MODE_FUSED, 128>(p); snprintf(buf, 128, "%s fused TN128", u); cmp(p, buf);
  CK(cudaMemset(p.y2, 0, (size_t)M * N * 2));
  run_new<UNS, GEMM_MODE_FUSED, 64>(p); snprintf(buf, 128, "%s fused TN64", u); cmp(p, buf);
#ifdef WG2_THREADS
  for (int mode = 0; mode < 2; mode++) for (int tn = 128; tn <= 256; tn *= 2) {
    if (tn == 128 && N % 192) continue;
    if (mode == 0) run_old<UNS, GEMM_MODE_FUSED>(p); else run_old<UNS, GEMM_MODE_NOLORA>(p);
    CK(cudaMemset(p.y2, 0, (size_t)M * N * 2));
    if (mode == 0 && tn == 128) run_new2<UNS, GEMM_MODE_FUSED, 128, 3>(p);
    if (mode == 0 && tn == 256) run_new2<UNS, GEMM_MODE_FUSED, 256, 2>(p);
    if (mode == 1 && tn == 128) run_new2<UNS, GEMM_MODE_NOLORA, 128, 3>(p);
    if (mode == 1 && tn == 256) run_new2<UNS, GEMM_MODE_NOLORA, 256, 2>(p);
    snprintf(buf, 128, "%s %s WG2 TN%d", u, mode ? "nolora" : "fused", tn); cmp(p, buf);
  }
#endif


}

template <class F> float timeit(F f, int reps = 20) {
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  for (int i = 0; i < 3; i++) f();
  cudaEventRecord(a);
  for (int i = 0; i < reps; i++) f();
  cudaEventRecord(b); CK(cudaEventSynchronize(b));
  float ms; cudaEventElapsedTime(&ms, a, b); return ms * 1000.f / reps;
}
void lrbreak() {
  int shapes[3][2] = {{9216, 3072}, {3072, 3072}, {3072, 15360}};
  int Ms[2] = {256, 1024};
  printf("%-12s %5s %8s %8s %8s %8s %8s %8s\n", "NxK", "M", "act_q", "act_qd", "memset", "g_nolora", "g_fused", "cost%");
  // cost%: the fused branch over W4A4 alone, counting the memset (the host avoids it: lowRankBufs)
  for (auto &sh : shapes) for (int M : Ms) {
    Prob p = make(M, sh[0], sh[1], 32, 128);
    int KT = p.K / 64, tiles = p.Mpad / 16;
    int splits = std::min(std::max((4 * 132 + tiles - 1) / tiles, 1), (KT + 3) / 4);
    int ktpb = ((KT + splits - 1) / splits + 3) / 4 * 4; splits = (KT + ktpb - 1) / ktpb;
    dim3 grid(p.Mpad / 16, splits);
    float tq = timeit([&] { k_actq<false, true><<<grid, 128>>>(p.x, p.smooth, p.down, (uint4 *)p.act8, p.as2, p.lr2, p.Mpad, p.K, p.R, 0, ktpb); });
    float tqd = timeit([&] { cudaMemsetAsync(p.lr2, 0, (size_t)p.Mpad * p.R * 4); k_act<false, true><<<grid, 128>>>(p.x, p.smooth, p.down, (uint4 *)p.act8, p.as2, p.lr2, p.Mpad, p.K, p.R, 0, ktpb); });
    float tm = timeit([&] { cudaMemsetAsync(p.lr2, 0, (size_t)p.Mpad * p.R * 4); });
    bool n64 = (p.Mpad / 128) * (p.N / 64) < 132;
    float tn = n64 ? timeit([&] { run_new<false, GEMM_MODE_NOLORA, 64>(p); }) : timeit([&] { run_new<false, GEMM_MODE_NOLORA, 128>(p); });
    float tf = n64 ? timeit([&] { run_new<false, GEMM_MODE_FUSED, 64>(p); }) : timeit([&] { run_new<false, GEMM_MODE_FUSED, 128>(p); });
    printf("%5dx%-6d %5d %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f  splits %d\n", sh[0], sh[1], M, tq, tqd, tm, tn, tf, 100.0 * ((tqd + tf) / (tq + tn) - 1), splits);
  }
}
void smallm() { // the fused GEMM alone, n64 and n128 tiles
  int shapes[5][2] = {{9216, 3072}, {3072, 3072}, {12288, 3072}, {3072, 12288}, {3072, 15360}};
  int Ms[4] = {256, 512, 1024, 4096};
  printf("%-12s %5s %9s %9s\n", "NxK", "M", "wg64_us", "wg128_us");
  for (auto &sh : shapes) for (int M : Ms) {
    Prob p = make(M, sh[0], sh[1], 32, 128);
    run_act<false>(p, true);
    float t64 = timeit([&] { run_new<false, GEMM_MODE_FUSED, 64>(p); }, 50);
    float t128 = timeit([&] { run_new<false, GEMM_MODE_FUSED, 128>(p); }, 50);
    printf("%5dx%-6d %5d %9.1f %9.1f\n", sh[0], sh[1], M, t64, t128);
  }
}
int main(int argc, char **argv) {
  if (argc > 1 && argv[1][0] == 's') { smallm(); return 0; }
  if (argc > 1 && argv[1][0] == 'l') { lrbreak(); return 0; }
  if (argc > 1 && argv[1][0] == 'p') { // one fused GEMM at 9216x3072, M 4096 (p256: M 256), for a profiler
    Prob p = make(argv[1][1] ? atoi(argv[1] + 1) : 4096, 9216, 3072, 32, 128);
    run_act<false>(p, true);
    run_new<false, GEMM_MODE_FUSED, 128>(p);
    CK(cudaDeviceSynchronize());
    return 0;
  }
  if (argc > 1 && (argv[1][0] == 'z' || argv[1][0] == 'w')) { // repeat the signed fused n64 (z) / n128 (w) check (M 1000, 3072 x 3072)
    Prob p = make(1000, 3072, 3072, 32, 256);
    run_act<false>(p, false); run_act<false>(p, true);
    run_old<false, GEMM_MODE_FUSED>(p);
    const bool n128 = argv[1][0] == 'w';
    const char *tn = n128 ? "TN128" : "TN64";
    char what[64];
    snprintf(what, sizeof what, "sgn fused %s (repeat)", tn);
    int bad = 0;
    for (int i = 0; i < 200; i++) {
      CK(cudaMemset(p.y2, 0, (size_t)p.M * p.N * 2));
      if (n128) run_new<false, GEMM_MODE_FUSED, 128>(p);
      else run_new<false, GEMM_MODE_FUSED, 64>(p);
      bad += cmp(p, what);
    }
    printf("%s fused: %d of 200 runs differ\n", tn, bad);
    return 0;
  }
#ifdef WG2_THREADS
  if (argc > 1 && argv[1][0] == 'y') { // the same for the multi-warpgroup kernels (M 1000, 3072 x 3072)
    Prob p = make(1000, 3072, 3072, 32, 256);
    run_act<false>(p, false); run_act<false>(p, true);
    run_old<false, GEMM_MODE_FUSED>(p);
    int bad2 = 0, bad3 = 0;
    for (int i = 0; i < 100; i++) {
      CK(cudaMemset(p.y2, 0, (size_t)p.M * p.N * 2));
      run_new2<false, GEMM_MODE_FUSED, 256, 2>(p);
      bad2 += cmp(p, "sgn fused n256x2 (repeat)");
      CK(cudaMemset(p.y2, 0, (size_t)p.M * p.N * 2));
      run_new2<false, GEMM_MODE_FUSED, 128, 3>(p);
      bad3 += cmp(p, "sgn fused n128x3 (repeat)");
    }
    printf("fused n256x2: %d, n128x3: %d of 100 runs differ\n", bad2, bad3);
    return 0;
  }
#endif
#ifdef WG2_THREADS
  if (argc > 1 && (argv[1][0] == 'q' || argv[1][0] == 'r')) { // the same with the multi-warpgroup kernel: q n256 x 2, r n128 x 3
    Prob p = make(argv[1][1] ? atoi(argv[1] + 1) : 4096, 9216, 3072, 32, 256);
    run_act<false>(p, true);
    if (argv[1][0] == 'q') run_new2<false, GEMM_MODE_FUSED, 256, 2>(p); else run_new2<false, GEMM_MODE_FUSED, 128, 3>(p);
    CK(cudaDeviceSynchronize());
    return 0;
  }
#endif
  if (argc < 2 || argv[1][0] == 'c') {
  check<false>(200, 256, 512);
  check<true>(200, 256, 512);
  check<false>(1000, 3072, 3072);
  check<true>(333, 1024, 1024);
  check<false>(77, 384, 640);
  check<true>(500, 1536, 1024);
  if (argc > 1) return 0;
  }
  cublasHandle_t h; cublasCreate(&h);
  int shapes[5][2] = {{9216, 3072}, {3072, 3072}, {12288, 3072}, {3072, 12288}, {3072, 15360}};
  int Ms[3] = {256, 1024, 4096};
  printf("%-12s %5s %9s %9s %9s %9s %9s %9s %9s %9s %8s %8s\n", "NxK", "M", "old_us", "wg128_us", "wg64_us", "w3_128", "w2_256", "act_us", "act8_us", "bf16_us", "wg/bf16", "TOPS");
  for (auto &s : shapes) for (int M : Ms) {
    Prob p = make(M, s[0], s[1], 32, 256);
    uint16_t *wb, *xb, *yb; CK(cudaMalloc(&wb, (size_t)s[0] * s[1] * 2)); CK(cudaMalloc(&xb, (size_t)M * s[1] * 2)); CK(cudaMalloc(&yb, (size_t)M * s[0] * 2));
    CK(cudaMemset(wb, 0, (size_t)s[0] * s[1] * 2)); CK(cudaMemset(xb, 0, (size_t)M * s[1] * 2));
    run_act<false>(p, false); run_act<false>(p, true);
    float told = timeit([&] { run_old<false, GEMM_MODE_FUSED>(p); });
    float t128 = timeit([&] { run_new<false, GEMM_MODE_FUSED, 128>(p); });
    float t64 = timeit([&] { run_new<false, GEMM_MODE_FUSED, 64>(p); });
#ifdef WG2_THREADS
    float t2a = timeit([&] { run_new2<false, GEMM_MODE_FUSED, 128, 3>(p); });
    float t2b = timeit([&] { run_new2<false, GEMM_MODE_FUSED, 256, 2>(p); });
#else
    float t2a = 1e9, t2b = 1e9;
#endif

    float ta = timeit([&] { run_act<false>(p, false); });
    float ta8 = timeit([&] { run_act<false>(p, true); });
    float alpha = 1, beta = 0;
    float tb = timeit([&] { cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s[0], M, s[1], &alpha, wb, CUDA_R_16BF, s[1], xb, CUDA_R_16BF, s[1], &beta, yb, CUDA_R_16BF, s[0], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT); });
    float best = std::min(std::min(t128, t64), std::min(t2a, t2b));
    printf("%5dx%-6d %5d %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %9.1f %8.2f %8.0f\n", s[0], s[1], M, told, t128, t64, t2a, t2b, ta, ta8, tb, tb / (best + ta8), 2.0 * M * s[0] * s[1] / (best * 1e-6) / 1e12);
    cudaFree(wb); cudaFree(xb); cudaFree(yb);
  }
  CK(cudaDeviceSynchronize());
  return 0;
}

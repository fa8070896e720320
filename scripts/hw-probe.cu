// hw-probe.cu: measures the two pieces of GPU arithmetic that nunchaku's
// W4A4 kernels use and that no document defines exactly, so that svdq's
// emulation (quant/) can reproduce them (issue 20):
//
//   1. rcp.approx.ftz.f32 (cuda_frcp in nunchaku's gemm_utils.cuh, the
//      activation scale's reciprocal) and div.approx.f32 (__fdividef in its
//      h2div, the division by the smoothing factor).
//   2. mma.sync m16n8k16 with FP16/BF16 operands and FP32 accumulators (the
//      low-rank up and down projections): how the 16 products and the
//      accumulator are added.
//
// On the GPU machine, from the repo root:
//
//   nvcc -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a scripts/hw-probe.cu -o /tmp/p
//   /tmp/p DIR
//
// writes DIR/rcp.bin: for every float32 x in [1, 2) (mantissa m = 0 ..
// 2^23-1) one byte, rcp.approx.ftz(x)'s bits minus the correctly rounded
// 1/x's bits (as int8); DIR/mma_f16.bin and DIR/mma_bf16.bin: NT tiles of
// {A 16x16 row-major 16-bit, B 16x8 (k, n) 16-bit, C 16x8 float32, D 16x8
// float32}, D = mma(A, B, C); and prints, on stdout, the checks that the
// reciprocal depends only on the mantissa (for every exponent) and that
// __fdividef(a, b) is a·rcp(b) rounded once. `go run ./cmd/rcptable` turns
// rcp.bin into quant's table (see quant/kernel_rcp.go).
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("CUDA %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); exit(1);} } while(0)

__device__ __forceinline__ float rcp_approx(float x) {
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
}

__global__ void k_rcp(int8_t *out) {
  uint32_t m = blockIdx.x * blockDim.x + threadIdx.x;
  if (m >= (1u << 23)) return;
  float x = __uint_as_float(0x3f800000u | m);
  int32_t a = (int32_t)__float_as_uint(rcp_approx(x));
  int32_t b = (int32_t)__float_as_uint(__frcp_rn(x));
  int d = a - b;
  out[m] = (int8_t)(d < -127 ? -128 : d > 127 ? 127 : d);
}

// Exponent independence: rcp(m·2^e) must be rcp(m)·2^-e whenever both are
// normal. cnt[0] = checked, cnt[1] = mismatches; cnt[2] = subnormal inputs
// not giving ±inf, cnt[3] = results below 2^-126 not flushed to 0.
__global__ void k_rcp_exp(unsigned long long *cnt) {
  uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; // mantissa sample
  uint32_t m = (i * 2654435761u) & 0x7fffffu;
  float base = rcp_approx(__uint_as_float(0x3f800000u | m));
  uint32_t bb = __float_as_uint(base);
  for (int e = -126; e <= 127; e++) {
    float x = __uint_as_float(((uint32_t)(e + 127) << 23) | m);
    float r = rcp_approx(x);
    int re = (int)((bb >> 23) & 0xff) - e;
    if (re >= 1 && re <= 254) {
      uint32_t want = (bb & 0x807fffffu) | ((uint32_t)re << 23);
      atomicAdd(&cnt[0], 1ull);
      if (__float_as_uint(r) != want) atomicAdd(&cnt[1], 1ull);
    } else if (re < 1) {
      if (r != 0.f) atomicAdd(&cnt[3], 1ull);
    }
    if (__float_as_uint(rcp_approx(-x)) != (__float_as_uint(r) ^ 0x80000000u)) atomicAdd(&cnt[1], 1ull);
  }
  // subnormal inputs
  float sub = __uint_as_float(m | 1u);
  if (!isinf(rcp_approx(sub))) atomicAdd(&cnt[2], 1ull);
}

__device__ __forceinline__ uint32_t hash32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
  return x;
}
__device__ __forceinline__ float urand(uint32_t &s) { s = hash32(s + 0x9e3779b9u); return (s >> 8) * (1.0f / 16777216.0f); }

// __fdividef(a, b) against a·rcp(b) rounded once, for 16-bit a and b (the
// h2div case: x̂ / λ) and for arbitrary normal float32 a, b.
// cnt[4] = checked, cnt[5] = mismatches (16-bit operands), cnt[6] =
// mismatches (float32 operands).
__global__ void k_div(unsigned long long *cnt) {
  uint32_t s = blockIdx.x * blockDim.x + threadIdx.x;
  for (int it = 0; it < 64; it++) {
    float a = (urand(s) * 2 - 1) * exp2f(floorf(urand(s) * 40) - 20);
    float b = (urand(s) + 0.01f) * exp2f(floorf(urand(s) * 30) - 15);
    float ah = __half2float(__float2half_rn(a)), bh = __half2float(__float2half_rn(b));
    float ab = __bfloat162float(__float2bfloat16_rn(a)), bbf = __bfloat162float(__float2bfloat16_rn(b));
    atomicAdd(&cnt[4], 3ull);
    if (__float_as_uint(__fdividef(ah, bh)) != __float_as_uint(__fmul_rn(ah, rcp_approx(bh)))) atomicAdd(&cnt[5], 1ull);
    if (__float_as_uint(__fdividef(ab, bbf)) != __float_as_uint(__fmul_rn(ab, rcp_approx(bbf)))) atomicAdd(&cnt[5], 1ull);
    if (__float_as_uint(__fdividef(a, b)) != __float_as_uint(__fmul_rn(a, rcp_approx(b)))) atomicAdd(&cnt[6], 1ull);
  }
}

// MMA probe: one warp per tile. Modes (tile % 4): 0 uniform [-1,1], C = 0;
// 1 exponents spread over [-8, 8], C spread; 2 wide spread (BF16 [-30, 30],
// FP16 [-12, 12]) and C from the same range; 3 cancellation: C close to
// -A·B (computed in float), products of mixed sign.
struct Tile16 { uint16_t a[256]; uint16_t b[128]; float c[128]; float d[128]; };

template <bool BF> __device__ __forceinline__ uint16_t to16(float f) {
  if (BF) { __nv_bfloat16 h = __float2bfloat16_rn(f); return *reinterpret_cast<uint16_t *>(&h); }
  __half h = __float2half_rn(f);
  return *reinterpret_cast<uint16_t *>(&h);
}
template <bool BF> __device__ __forceinline__ float from16(uint16_t u) {
  if (BF) { return __uint_as_float((uint32_t)u << 16); }
  __half h = *reinterpret_cast<__half *>(&u);
  return __half2float(h);
}

template <bool BF> __global__ void k_mma(Tile16 *tiles, int nt) {
  int t = blockIdx.x;
  if (t >= nt) return;
  int lane = threadIdx.x;
  Tile16 &T = tiles[t];
  uint32_t s = hash32(t * 7919u + (BF ? 1u : 0u));
  int mode = t % 4;
  float lo = -1, hi = 1;
  if (mode == 1) { lo = -8; hi = 8; }
  if (mode == 2) { lo = BF ? -30.f : -12.f; hi = BF ? 30.f : 12.f; }
  if (lane == 0) {
    for (int i = 0; i < 256; i++) {
      float v = urand(s) * 2 - 1;
      if (mode == 1 || mode == 2) v = (urand(s) < 0.5f ? -1 : 1) * (1 + urand(s)) * exp2f(floorf(lo + urand(s) * (hi - lo)));
      if (mode == 3) v = (urand(s) * 2 - 1) * exp2f(floorf(urand(s) * 6 - 3));
      T.a[i] = to16<BF>(v);
    }
    for (int i = 0; i < 128; i++) {
      float v = urand(s) * 2 - 1;
      if (mode == 1 || mode == 2) v = (urand(s) < 0.5f ? -1 : 1) * (1 + urand(s)) * exp2f(floorf(lo + urand(s) * (hi - lo)));
      if (mode == 3) v = (urand(s) * 2 - 1) * exp2f(floorf(urand(s) * 6 - 3));
      T.b[i] = to16<BF>(v);
    }
    for (int i = 0; i < 16; i++)
      for (int j = 0; j < 8; j++) {
        float c = 0;
        if (mode == 1 || mode == 2) c = (urand(s) < 0.5f ? -1 : 1) * (1 + urand(s)) * exp2f(floorf(lo * 2 + urand(s) * (hi - lo) * 2));
        if (mode == 3) {
          float acc = 0;
          for (int k = 0; k < 16; k++) acc += from16<BF>(T.a[i * 16 + k]) * from16<BF>(T.b[k * 8 + j]);
          c = -acc * (1 + (urand(s) - 0.5f) * 1e-3f);
          if (urand(s) < 0.3f) c = __uint_as_float(__float_as_uint(-acc) ^ (hash32(s) & 0xffu));
        }
        T.c[i * 8 + j] = c;
      }
  }
  __syncwarp();
  int g = lane >> 2, q = lane & 3;
  auto pk = [](uint16_t lo16, uint16_t hi16) { return (uint32_t)lo16 | ((uint32_t)hi16 << 16); };
  uint32_t a0 = pk(T.a[g * 16 + 2 * q], T.a[g * 16 + 2 * q + 1]);
  uint32_t a1 = pk(T.a[(g + 8) * 16 + 2 * q], T.a[(g + 8) * 16 + 2 * q + 1]);
  uint32_t a2 = pk(T.a[g * 16 + 2 * q + 8], T.a[g * 16 + 2 * q + 9]);
  uint32_t a3 = pk(T.a[(g + 8) * 16 + 2 * q + 8], T.a[(g + 8) * 16 + 2 * q + 9]);
  uint32_t b0 = pk(T.b[(2 * q) * 8 + g], T.b[(2 * q + 1) * 8 + g]);
  uint32_t b1 = pk(T.b[(2 * q + 8) * 8 + g], T.b[(2 * q + 9) * 8 + g]);
  float d[4] = {T.c[g * 8 + 2 * q], T.c[g * 8 + 2 * q + 1], T.c[(g + 8) * 8 + 2 * q], T.c[(g + 8) * 8 + 2 * q + 1]};
  if (BF)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  T.d[g * 8 + 2 * q] = d[0];
  T.d[g * 8 + 2 * q + 1] = d[1];
  T.d[(g + 8) * 8 + 2 * q] = d[2];
  T.d[(g + 8) * 8 + 2 * q + 1] = d[3];
}

static void write(const char *dir, const char *name, const void *p, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n) { printf("write %s failed\n", path); exit(1); }
  fclose(f);
}

template <bool BF> static void mma(const char *dir, int nt) {
  Tile16 *d;
  CK(cudaMalloc(&d, sizeof(Tile16) * nt));
  k_mma<BF><<<nt, 32>>>(d, nt);
  CK(cudaDeviceSynchronize());
  std::vector<Tile16> h(nt);
  CK(cudaMemcpy(h.data(), d, sizeof(Tile16) * nt, cudaMemcpyDeviceToHost));
  write(dir, BF ? "mma_bf16.bin" : "mma_f16.bin", h.data(), sizeof(Tile16) * nt);
  cudaFree(d);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : ".";
  int8_t *d;
  const int n = 1 << 23;
  CK(cudaMalloc(&d, n));
  k_rcp<<<n / 256, 256>>>(d);
  CK(cudaDeviceSynchronize());
  std::vector<int8_t> h(n);
  CK(cudaMemcpy(h.data(), d, n, cudaMemcpyDeviceToHost));
  write(dir, "rcp.bin", h.data(), n);
  long hist[5] = {0};
  for (int i = 0; i < n; i++) hist[h[i] < -1 ? 0 : h[i] > 1 ? 4 : h[i] + 2]++;
  printf("rcp.approx.ftz - rn on [1,2): <-1: %ld  -1: %ld  0: %ld  +1: %ld  >+1: %ld\n", hist[0], hist[1], hist[2], hist[3], hist[4]);
  unsigned long long *c;
  CK(cudaMalloc(&c, 8 * sizeof(unsigned long long)));
  CK(cudaMemset(c, 0, 8 * sizeof(unsigned long long)));
  k_rcp_exp<<<64, 256>>>(c);
  k_div<<<256, 256>>>(c);
  CK(cudaDeviceSynchronize());
  unsigned long long hc[8];
  CK(cudaMemcpy(hc, c, sizeof hc, cudaMemcpyDeviceToHost));
  printf("rcp exponent independence: %llu checked, %llu mismatches; subnormal inputs not inf: %llu; tiny results not flushed: %llu\n",
         hc[0], hc[1], hc[2], hc[3]);
  printf("__fdividef(a,b) == a*rcp.approx(b): %llu checked, %llu mismatches (16-bit operands), %llu (float32 operands)\n",
         hc[4], hc[5], hc[6]);
  mma<false>(dir, 4096);
  mma<true>(dir, 4096);
  printf("mma tiles written: 4096 f16, 4096 bf16 (%zu bytes each)\n", sizeof(Tile16));
  return 0;
}

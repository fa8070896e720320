// Hardware check of quant's kernel emulation: performs, with the CUDA
// intrinsics nunchaku's kernels use, the operations that
// quant/emulate_hw_test.go emulates, on the inputs that test writes, and
// writes the results next to them. Build for sm_89 or later (E4M3 cvt):
//
//	nvcc -O2 -arch=sm_90 quant/testdata/hwcheck.cu -o hwcheck && ./hwcheck DIR
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <string>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

static const int CHAINS = 2048, G = 48, GROUPS = 2048, FP4 = 4096, PAIRS = 1 << 16;

template <typename T> std::vector<T> readv(const std::string &p, size_t n) {
    std::vector<T> v(n);
    FILE *f = fopen(p.c_str(), "rb");
    if (!f || fread(v.data(), sizeof(T), n, f) != n) { fprintf(stderr, "read %s\n", p.c_str()); exit(1); }
    fclose(f);
    return v;
}
template <typename T> void writev(const std::string &p, const std::vector<T> &v) {
    FILE *f = fopen(p.c_str(), "wb");
    if (!f || fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) { fprintf(stderr, "write %s\n", p.c_str()); exit(1); }
    fclose(f);
}
template <typename T> T *dev(const std::vector<T> &v) {
    T *d;
    CK(cudaMalloc(&d, v.size() * sizeof(T)));
    CK(cudaMemcpy(d, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}
template <typename T> std::vector<T> host(const T *d, size_t n) {
    std::vector<T> v(n);
    CK(cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
    return v;
}

template <typename H> __device__ H f2h(float x);
template <> __device__ __nv_bfloat16 f2h<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __half f2h<__half>(float x) { return __float2half_rn(x); }

__device__ float rcp_approx_ftz(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// A: acc = __hfma(half(p), __hmul(as, ws), acc) over G groups, then + bias.
template <typename H> __global__ void chains(const int *p, const H *as, const H *ws, const H *bias, H *out) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= CHAINS) return;
    H acc = f2h<H>(0.f);
    for (int g = 0; g < G; g++) {
        int j = c * G + g;
        H ph = f2h<H>(__int2float_rn(p[j]));
        acc = __hfma(ph, __hmul(as[j], ws[j]), acc);
    }
    out[c] = __hadd(acc, bias[c]);
}

// B: the INT4 activation quantizer of quantize_w4a4_from_fpsum_warp for
// one group of 64; even groups signed, odd unsigned.
template <typename H> __global__ void actq(const H *x, H *scale, int8_t *codes) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= GROUPS) return;
    bool uns = g % 2 == 1;
    H m = f2h<H>(0.f);
    for (int i = 0; i < 64; i++) m = __hmax(m, __habs(x[g * 64 + i]));
    float s = float(m) * (uns ? 1 / 15.0f : 1 / 7.0f);
    scale[g] = f2h<H>(s);
    float r = rcp_approx_ftz(s);
    for (int i = 0; i < 64; i += 2) {
        float a = float(x[g * 64 + i]) * r, b = float(x[g * 64 + i + 1]) * r;
        int v1, v2;
        uint32_t q;
        asm volatile("cvt.rni.s32.f32 %0, %1;" : "=r"(v1) : "f"(a));
        asm volatile("cvt.rni.s32.f32 %0, %1;" : "=r"(v2) : "f"(b));
        if (uns)
            asm volatile("cvt.pack.sat.u4.s32.b32 %0, %1, %2, 0;" : "=r"(q) : "r"(v2), "r"(v1));
        else
            asm volatile("cvt.pack.sat.s4.s32.b32 %0, %1, %2, 0;" : "=r"(q) : "r"(v2), "r"(v1));
        int lo = q & 0xF, hi = (q >> 4) & 0xF;
        if (!uns) { lo = lo >= 8 ? lo - 16 : lo; hi = hi >= 8 ? hi - 16 : hi; }
        codes[g * 64 + i] = lo;
        codes[g * 64 + i + 1] = hi;
    }
}

// C: NVFP4 activation scale of one group of 16 bf16 values.
__global__ void fp4scale(const __nv_bfloat16 *x, uint8_t *out) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= FP4) return;
    __nv_bfloat16 m = __float2bfloat16_rn(0.f);
    for (int i = 0; i < 16; i++) m = __hmax(m, __habs(x[g * 16 + i]));
    float s = fminf(float(m) * (1 / 6.0f), 448.0f);
    uint16_t v;
    asm volatile("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(v) : "f"(0.f), "f"(s));
    out[g] = v & 0xFF;
}

// D: h2div; E: shift.
template <typename H> __global__ void divshift(const H *x, const H *l, const H *e, H *dout, H *eout) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= PAIRS) return;
    dout[i] = f2h<H>(__fdividef(float(x[i]), float(l[i])));
    eout[i] = __hadd(e[i], f2h<H>(0.171875f));
}

template <typename H> void run(const std::string &dir, const std::string &n, const int *dp) {
    auto as = dev(readv<H>(dir + "/a_as_" + n + ".bin", CHAINS * G));
    auto ws = dev(readv<H>(dir + "/a_ws_" + n + ".bin", CHAINS * G));
    auto bias = dev(readv<H>(dir + "/a_bias_" + n + ".bin", CHAINS));
    H *out;
    CK(cudaMalloc(&out, CHAINS * sizeof(H)));
    chains<H><<<(CHAINS + 127) / 128, 128>>>(dp, as, ws, bias, out);
    CK(cudaGetLastError());
    writev(dir + "/a_out_" + n + ".bin", host(out, CHAINS));

    auto xb = dev(readv<H>(dir + "/b_x_" + n + ".bin", GROUPS * 64));
    H *sc;
    int8_t *codes;
    CK(cudaMalloc(&sc, GROUPS * sizeof(H)));
    CK(cudaMalloc(&codes, GROUPS * 64));
    actq<H><<<(GROUPS + 127) / 128, 128>>>(xb, sc, codes);
    CK(cudaGetLastError());
    writev(dir + "/b_scale_" + n + ".bin", host(sc, GROUPS));
    writev(dir + "/b_codes_" + n + ".bin", host(codes, GROUPS * 64));

    auto xd = dev(readv<H>(dir + "/d_x_" + n + ".bin", PAIRS));
    auto ld = dev(readv<H>(dir + "/d_l_" + n + ".bin", PAIRS));
    auto xe = dev(readv<H>(dir + "/e_x_" + n + ".bin", PAIRS));
    H *dout, *eout;
    CK(cudaMalloc(&dout, PAIRS * sizeof(H)));
    CK(cudaMalloc(&eout, PAIRS * sizeof(H)));
    divshift<H><<<PAIRS / 256, 256>>>(xd, ld, xe, dout, eout);
    CK(cudaGetLastError());
    writev(dir + "/d_out_" + n + ".bin", host(dout, PAIRS));
    writev(dir + "/e_out_" + n + ".bin", host(eout, PAIRS));
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: hwcheck DIR\n"); return 2; }
    std::string dir = argv[1];
    auto dp = dev(readv<int>(dir + "/a_p.bin", CHAINS * G));
    run<__nv_bfloat16>(dir, "bf16", dp);
    run<__half>(dir, "f16", dp);
    auto xc = dev(readv<__nv_bfloat16>(dir + "/c_x.bin", FP4 * 16));
    uint8_t *o;
    CK(cudaMalloc(&o, FP4));
    fp4scale<<<FP4 / 128, 128>>>(xc, o);
    CK(cudaGetLastError());
    writev(dir + "/c_out.bin", host(o, FP4));
    CK(cudaDeviceSynchronize());
    printf("hwcheck: wrote results to %s\n", dir.c_str());
    return 0;
}

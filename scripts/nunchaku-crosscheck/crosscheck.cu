// crosscheck.cu runs nunchaku's own INT4 W4A4 kernels (activation
// quantization with the fused low-rank down projection, then the GEMM with
// bias and low-rank up projection in its epilogue) on layers exported by
// `svdq crosscheck export`, so that `svdq crosscheck compare` can hold svdq's
// emulation against them bit for bit. It is compiled against a nunchaku
// source tree that the user supplies (run.sh); nothing of nunchaku's is part
// of svdq. The kernels are instantiated from nunchaku's headers exactly as
// its launcher (gemm_w4a4_launch_impl.cuh: quantize_w4a4_act_fuse_lora and
// gemm_w4a4 with out, bias and lora_up) combines them; the unsigned
// activation (MLP fc2 after GELU) uses the quantize epilogue that nunchaku's
// fc1 GEMM applies to its output (EpilogueQuantize<false, true, false>,
// shift 0.171875), here on the exported post-GELU rows.
//
// Usage: crosscheck DIR. DIR/layers.txt has one line per layer:
//   IDX NAME BF16 UNSIGNED ROWS NPAD KPAD RANK
// and DIR/IDX/ holds x.bin (ROWS x KPAD, 16-bit), qweight.bin, wscales.bin,
// smooth.bin, down.bin, up.bin, bias.bin (the file's tensors as stored).
// Writes DIR/IDX/y_nk.bin (ROWS x NPAD, 16-bit) and DIR/IDX/lora_nk.bin
// (ROWS x RANK float32, row-major: nunchaku's lora_act unpacked).
#include "gemm_w4a4.cuh"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

using namespace nunchaku::kernels;

#define CK(x) checkCUDA(x)

// QuantAct: the body of nunchaku's quantize_w4a4_fuse_lora_kernel (load the
// 16-bit input tile, EpilogueLoraDown, EpilogueQuantize), with the signed or
// unsigned quantize epilogue.
template<class Config, bool UNS>
struct QuantAct {
    using GEMM  = GEMM_W4A4<Config>;
    using LoraT = Lora<Config>;
    using Load  = typename GEMM::template load_act_to_fpsum<false>;
    using EQ    = typename GEMM::template EpilogueQuantize<false, UNS, false>;
    using DownE = typename LoraT::EpilogueLoraDown;

    static constexpr size_t SHMEM_PER_WARP = ceilDiv<size_t>(Load::SHMEM_SIZE, 128) * 128;
    static constexpr size_t SHMEM_SIZE     = SHMEM_PER_WARP * GEMM::NUM_WARPS;

    struct Arguments {
        const typename GEMM::half_t *input;
        const typename GEMM::packed_wscale_t *smooth;
        typename GEMM::packed_act_t *output;
        typename GEMM::packed_ascale_t *oscales;
        const typename GEMM::packed_fpsum_t *down;
        float *lora_act;
        int rank;
        int M, N, actualM, actualN;
    };

    __device__ void operator()(Arguments a) {
        const typename GEMM::BlockInfo binfo = {
            .bm = (int)blockIdx.x, .bn = (int)blockIdx.y, .numBlocksM = (int)gridDim.x, .numBlocksN = (int)gridDim.y};
        const int warpId   = threadIdx.x / GEMM::WARP_SIZE;
        const int m_offset = binfo.bm * GEMM::BLOCK_M + warpId * GEMM::WARP_M;
        const int n_offset = binfo.bn * GEMM::BLOCK_N;
        extern __shared__ uint8_t shmem[];
        typename GEMM::fpsum_warp fpsum;
        Load()(a.input + m_offset * a.actualN + n_offset,
               a.actualN,
               a.actualM - m_offset,
               a.actualN - n_offset,
               fpsum,
               shmem + warpId * SHMEM_PER_WARP);
        DownE()(binfo,
                fpsum,
                a.M,
                a.N,
                0,
                typename DownE::Arguments{
                    .lora_wgt_down = a.down, .lora_act = a.lora_act, .rank = a.rank, .alwaysfalse = false});
        EQ()(binfo,
             fpsum,
             a.M,
             a.N,
             0,
             typename EQ::Arguments{.qout          = a.output,
                                    .oscales       = a.oscales,
                                    .shift_value   = typename GEMM::half_t(UNS ? 0.171875f : 0.0f),
                                    .smooth_factor = a.smooth});
    }
};

template<class K>
__global__ void __launch_bounds__(256) run_quant(typename K::Arguments a) {
    K()(a);
}

static std::vector<char> readAll(const std::string &path, size_t want) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> b((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (b.size() != want) {
        fprintf(stderr, "%s: %zu bytes, want %zu\n", path.c_str(), b.size(), want);
        exit(2);
    }
    return b;
}

static void writeAll(const std::string &path, const void *p, size_t n) {
    std::ofstream f(path, std::ios::binary);
    f.write(reinterpret_cast<const char *>(p), n);
    if (!f) {
        fprintf(stderr, "%s: write failed\n", path.c_str());
        exit(2);
    }
}

template<class T = void>
static T *upload(const std::vector<char> &b) {
    void *d;
    CK(cudaMalloc(&d, b.size() ? b.size() : 1));
    CK(cudaMemcpy(d, b.data(), b.size(), cudaMemcpyHostToDevice));
    return reinterpret_cast<T *>(d);
}

template<class Config, bool UNS>
static void runLayer(const std::string &dir, int m, int N, int K, int R) {
    using GEMM   = GEMM_W4A4<Config>;
    using LoraT  = Lora<Config>;
    using half_t = typename GEMM::half_t;
    using Q      = QuantAct<Config, UNS>;
    const int M  = ceilDiv(m, GEMM::BLOCK_M) * GEMM::BLOCK_M;

    auto x  = upload<half_t>(readAll(dir + "/x.bin", size_t(m) * K * 2));
    auto qw = upload<typename GEMM::packed_wgt_t>(readAll(dir + "/qweight.bin", size_t(N) * K / 2));
    auto ws = upload<typename GEMM::packed_wscale_t>(readAll(dir + "/wscales.bin", size_t(K) / 64 * N * 2));
    auto sm = upload<typename GEMM::packed_wscale_t>(readAll(dir + "/smooth.bin", size_t(K) * 2));
    auto dn = upload<typename GEMM::packed_fpsum_t>(readAll(dir + "/down.bin", size_t(K) * R * 2));
    auto up = upload<typename GEMM::packed_fpsum_t>(readAll(dir + "/up.bin", size_t(N) * R * 2));
    auto bi = upload<typename GEMM::packed_wscale_t>(readAll(dir + "/bias.bin", size_t(N) * 2));

    typename GEMM::packed_act_t *act;
    typename GEMM::packed_ascale_t *asc;
    float *lact;
    half_t *y;
    CK(cudaMalloc(&act, size_t(M) * K / 2));
    CK(cudaMalloc(&asc, size_t(M) * K / 64 * 2));
    CK(cudaMalloc(&lact, size_t(M) * R * 4));
    CK(cudaMalloc(&y, size_t(m) * N * 2));
    CK(cudaMemset(lact, 0, size_t(M) * R * 4));

    CK(cudaFuncSetAttribute(run_quant<Q>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)Q::SHMEM_SIZE));
    run_quant<Q><<<dim3(M / GEMM::BLOCK_M, K / GEMM::BLOCK_N), GEMM::WARP_SIZE * GEMM::NUM_WARPS, Q::SHMEM_SIZE>>>(
        typename Q::Arguments{.input    = x,
                              .smooth   = sm,
                              .output   = act,
                              .oscales  = asc,
                              .down     = dn,
                              .lora_act = lact,
                              .rank     = R,
                              .M        = M,
                              .N        = K,
                              .actualM  = m,
                              .actualN  = K});
    CK(cudaGetLastError());

    // gemm_w4a4 with out, bias and lora_up (no next-layer outputs):
    // EpilogueCombination<EpilogueBias, EpilogueCombination<LoraUp, Nop, Default, Nop>, Nop>.
    using Nop   = typename GEMM::EpilogueNop;
    using UpE   = typename LoraT::EpilogueLoraUp;
    using Inner = typename GEMM::template EpilogueCombination<UpE, Nop, typename GEMM::EpilogueDefault, Nop>;
    using BiasE = typename GEMM::template EpilogueBias<true, false>;
    using Epi   = typename GEMM::template EpilogueCombination<BiasE, Inner, Nop>;
    typename LoraT::scale_t scales;
    for (auto &s : scales)
        s = 1.0f;
    typename Epi::Arguments args{
        typename BiasE::Arguments{.bias = bi, .scale = nullptr},
        typename Inner::Arguments{
            typename UpE::Arguments{.lora_act = lact, .lora_wgt_up = up, .rank = R, .scales = scales, .alwaysfalse = false},
            typename Nop::Arguments{},
            typename GEMM::EpilogueDefault::Arguments{.out = y, .actualM = m, .actualN = N},
            typename Nop::Arguments{}},
        typename Nop::Arguments{}};
    dim3 grid(M / GEMM::BLOCK_M, N / GEMM::BLOCK_N);
    const bool swap = M > N * 2;
    if (swap)
        std::swap(grid.x, grid.y);
    auto func = invoke_kernel<typename GEMM::template gemm_w4a4_kernel<Epi, UNS>,
                              const typename GEMM::packed_act_t *,
                              const typename GEMM::packed_wgt_t *,
                              const typename GEMM::packed_ascale_t *,
                              const typename GEMM::packed_wscale_t *,
                              int,
                              int,
                              int,
                              typename Epi::Arguments,
                              bool,
                              bool>;
    func<<<grid, GEMM::WARP_SIZE * GEMM::NUM_WARPS, 0>>>(act, qw, asc, ws, M, N, K, args, swap, false);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());

    std::vector<uint16_t> hy(size_t(m) * N);
    CK(cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost));
    writeAll(dir + "/y_nk.bin", hy.data(), hy.size() * 2);

    // lora_act is stored in nunchaku's packed order (reduce_lora_act, and
    // the m16n8k16 accumulator fragments: per 16x16 tile, lane 4g+t holds
    // rows g, g+8 and columns 2t, 2t+1 of each 8-column half).
    std::vector<float> packed(size_t(M) * R), rows(size_t(m) * R);
    CK(cudaMemcpy(packed.data(), lact, packed.size() * 4, cudaMemcpyDeviceToHost));
    const int W = GEMM::NUM_WARPS, MT = GEMM::WARP_M / 16;
    for (int row = 0; row < m; row++)
        for (int r = 0; r < R; r++) {
            const int bm = row / GEMM::BLOCK_M, w = row % GEMM::BLOCK_M / GEMM::WARP_M;
            const int mt = row % GEMM::WARP_M / 16, rr = row % 16, g = rr % 8, hi = rr / 8;
            const int rt = r / 16, rc = r % 16, half8 = rc / 8, t = rc % 8 / 2, odd = rc % 2;
            const size_t off = size_t(bm) * (R / 16) * (W * MT * 8 * 32) + size_t(rt * W + w) * (MT * 8 * 32) +
                               (4 * g + t) + mt * 8 * 32 + (half8 * 4 + hi * 2 + odd) * 32;
            rows[size_t(row) * R + r] = packed[off];
        }
    writeAll(dir + "/lora_nk.bin", rows.data(), rows.size() * 4);

    for (void *p : {(void *)x, (void *)qw, (void *)ws, (void *)sm, (void *)dn, (void *)up, (void *)bi, (void *)act,
                    (void *)asc, (void *)lact, (void *)y})
        cudaFree(p);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: crosscheck DIR\n");
        return 2;
    }
    std::string dir = argv[1];
    std::ifstream list(dir + "/layers.txt");
    std::string line;
    int n = 0;
    while (std::getline(list, line)) {
        std::istringstream s(line);
        std::string idx, name;
        int bf, uns, m, N, K, R;
        if (!(s >> idx >> name >> bf >> uns >> m >> N >> K >> R)) {
            fprintf(stderr, "%s/layers.txt: bad line [%s]\n", dir.c_str(), line.c_str());
            return 2;
        }
        const std::string d = dir + "/" + idx;
        if (bf) {
            if (uns)
                runLayer<GEMMConfig_W4A4_BF16, true>(d, m, N, K, R);
            else
                runLayer<GEMMConfig_W4A4_BF16, false>(d, m, N, K, R);
        } else {
            if (uns)
                runLayer<GEMMConfig_W4A4_FP16, true>(d, m, N, K, R);
            else
                runLayer<GEMMConfig_W4A4_FP16, false>(d, m, N, K, R);
        }
        printf("nunchaku kernels: %s (%d rows, N %d, K %d, rank %d%s)\n", name.c_str(), m, N, K, R, uns ? ", unsigned" : "");
        n++;
    }
    if (n == 0) {
        fprintf(stderr, "%s/layers.txt: no layers\n", dir.c_str());
        return 2;
    }
    return 0;
}

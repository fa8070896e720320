// The W4A4 GEMM for Hopper (sm_90a) on the warpgroup tensor-core
// instructions (wgmma), with the arithmetic of gemm_w4a4.cuh (that of
// nunchaku's kernel, mirrored by quant.Layer.Forward):
//
//   per 64-group g, in order:  P = sum a_code * w_code          (exact integer)
//                              acc = round16(round16(P) * round16(as*ws) + acc)
//   acc = round16(acc + bias)
//   y   = round16(float(acc) + sum_r round16(lract[r]) * up[n, r])  (FP32 sum)
//
// The product is computed transposed, y^T = W . x^T, so that the 4-bit
// weights are wgmma's A operand (registers: each warp's 16 output channels
// are exactly one packed p-tile, one 16-byte shared-memory load per lane
// and group) and the activations its B operand in shared memory, as bytes
// from the activation pass (act_quant.cuh with I8: the layout "act8" below;
// its scales in the as8_pos order of common.cuh).
//   BF16 models: E4M3 wgmma with FP32 accumulators. Every code is exact in
// E4M3 (the weights as n / 512, e8lo/e8hi; the activations as themselves)
// and so is the sum: d = P / 512 exactly (checked bit for bit, extremes
// included, |P| up to 7680), so no int -> float conversion is needed.
//   FP16 models: INT8 wgmma, the weights entering as 16 times their codes
// (nib_hi/nib_lo of common.cuh), d = 16 P in INT32.
// Per 64-group, the activation codes and scales of the tile and the packed
// weights and scales of its channels are copied into shared memory by the
// bulk-copy engine (cp.async.bulk), S stages ahead: a producer warp waits
// for a stage to be released ("empty" mbarrier, one arrival per consumer
// warp) and refills it ("full" mbarrier with the byte count).
//
//   act8 (E4M3 or INT8 bytes): for token m, group kt, logical byte
//        L = 32s + L' of the group (s the k32 step): byte
//        ((kt*(Mpad/8) + m/8)*4 + L/16)*128 + (m%8)*16 + L%16, where
//        L' = 4c + j holds k = 32s + 8c + 2j and L' = 16 + 4c + j holds
//        k = 32s + 8c + 2j + 1 (the order in which the weight nibbles are
//        unpacked: low nibbles first). Each (8 tokens x 16 bytes) is one
//        "core matrix" of the wgmma K-major no-swizzle layout: LBO (next
//        16 k bytes) 128, SBO (next 8 tokens) 512.
//
// Block: one consumer warpgroup and one producer warp (WG_THREADS); tile
// 64 channels x TN tokens (TN 128 or 64); grid (Mpad/TN, N/64). Per group:
// wait for the stage, two wgmma m64nTNk32 (the first with scale-d 0: the
// accumulator restarts at the group's product), wait, release the stage,
// then the 16-bit epilogue of the group (F2FP, HMUL2, HFMA2 per pair; see
// wg_finish), while other blocks on the multiprocessor use the tensor
// cores. Low-rank up projection (mma.sync m16n8k16, up as A, the rounded
// lract as B) and bias in the final epilogue, as in gemm_w4a4.cuh. Exact:
// the harness and gpu-check compare it bit for bit with the mma.sync
// kernel / emulation.
//   The second body, gemm_wg2_body (tile n256x2: 128 channels x 256 tokens),
// runs two consumer warpgroups on one activation stage with a producer
// warpgroup that hands them its registers (setmaxnreg), each consumer
// unpacking the next group's weights while its wgmma run; same arithmetic.
#pragma once
#include "common.cuh"
#include "gemm_w4a4.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SVDQ_WGMMA 1
#endif

#ifdef SVDQ_WGMMA
SVDQ_DEV uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
SVDQ_DEV void mbar_init(uint64_t *bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
// The barrier and copy helpers take shared-memory addresses (smem_u32).
SVDQ_DEV void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
SVDQ_DEV bool mbar_try(uint32_t bar, uint32_t parity) {
  uint32_t ok;
  asm volatile("{\n.reg .pred P1;\nmbarrier.try_wait.parity.shared::cta.b64 P1, [%1], %2;\nselp.u32 %0, 1, 0, P1;\n}\n"
               : "=r"(ok)
               : "r"(bar), "r"(parity)
               : "memory");
  return ok != 0;
}
SVDQ_DEV void mbar_wait(uint32_t bar, uint32_t parity) {
  while (!mbar_try(bar, parity)) {
  }
}
// bulk_g2s copies bytes (a multiple of 16, both addresses 16-aligned) from
// global to shared memory, completing on bar's transaction count.
SVDQ_DEV void bulk_g2s(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
// bulk_prefetch_l2 starts copying bytes (a multiple of 16, 16-aligned)
// from global memory into L2.
SVDQ_DEV void bulk_prefetch_l2(const void *src, uint32_t bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}
// elect_one is true in one lane of the (converged) warp.
SVDQ_DEV bool elect_one() {
  uint32_t p;
  asm volatile("{\n.reg .b32 r;\n.reg .pred P;\nelect.sync r|P, 0xffffffff;\nselp.u32 %0, 1, 0, P;\n}\n" : "=r"(p));
  return p != 0;
}
SVDQ_DEV void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
SVDQ_DEV void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> SVDQ_DEV void wg_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory"); }
SVDQ_DEV void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
// wg_desc is the shared-memory matrix descriptor of a K-major operand
// without swizzling: start address, LBO (bytes between core matrices along
// K) and SBO (between core matrices along M/N), each >> 4.
SVDQ_DEV uint64_t wg_desc(const void *p, uint32_t lbo, uint32_t sbo) {
  return (uint64_t)((smem_u32(p) & 0x3FFFF) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32);
}
// wgmma_s8: d (TN/2 int32 per thread) = a . B (+ d when SCALED; without,
// d is only written), A the 64x32 s8 weights in registers, B the 32xTN
// activations (s8, or u8 for UNS) described by desc. One asm template
// (WG_ASM); the register lists and operand lists are spelled out once.
#define WG_D64 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31}"
#define WG_D128 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
#define WG_OUT32(C) C(d[0]), C(d[1]), C(d[2]), C(d[3]), C(d[4]), C(d[5]), C(d[6]), C(d[7]), C(d[8]), C(d[9]), C(d[10]), C(d[11]), C(d[12]), C(d[13]), C(d[14]), C(d[15])
#define WG_OUT64(C) WG_OUT32(C), C(d[16]), C(d[17]), C(d[18]), C(d[19]), C(d[20]), C(d[21]), C(d[22]), C(d[23]), C(d[24]), C(d[25]), C(d[26]), C(d[27]), C(d[28]), C(d[29]), C(d[30]), C(d[31])
#define WG_OUT128(C) WG_OUT64(C), C(d[32]), C(d[33]), C(d[34]), C(d[35]), C(d[36]), C(d[37]), C(d[38]), C(d[39]), C(d[40]), C(d[41]), C(d[42]), C(d[43]), C(d[44]), C(d[45]), C(d[46]), C(d[47]), C(d[48]), C(d[49]), C(d[50]), C(d[51]), C(d[52]), C(d[53]), C(d[54]), C(d[55]), C(d[56]), C(d[57]), C(d[58]), C(d[59]), C(d[60]), C(d[61]), C(d[62]), C(d[63])
#define WG_D256 "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63,%64,%65,%66,%67,%68,%69,%70,%71,%72,%73,%74,%75,%76,%77,%78,%79,%80,%81,%82,%83,%84,%85,%86,%87,%88,%89,%90,%91,%92,%93,%94,%95,%96,%97,%98,%99,%100,%101,%102,%103,%104,%105,%106,%107,%108,%109,%110,%111,%112,%113,%114,%115,%116,%117,%118,%119,%120,%121,%122,%123,%124,%125,%126,%127}"
#define WG_OUT256(C) WG_OUT128(C), C(d[64]), C(d[65]), C(d[66]), C(d[67]), C(d[68]), C(d[69]), C(d[70]), C(d[71]), C(d[72]), C(d[73]), C(d[74]), C(d[75]), C(d[76]), C(d[77]), C(d[78]), C(d[79]), C(d[80]), C(d[81]), C(d[82]), C(d[83]), C(d[84]), C(d[85]), C(d[86]), C(d[87]), C(d[88]), C(d[89]), C(d[90]), C(d[91]), C(d[92]), C(d[93]), C(d[94]), C(d[95]), C(d[96]), C(d[97]), C(d[98]), C(d[99]), C(d[100]), C(d[101]), C(d[102]), C(d[103]), C(d[104]), C(d[105]), C(d[106]), C(d[107]), C(d[108]), C(d[109]), C(d[110]), C(d[111]), C(d[112]), C(d[113]), C(d[114]), C(d[115]), C(d[116]), C(d[117]), C(d[118]), C(d[119]), C(d[120]), C(d[121]), C(d[122]), C(d[123]), C(d[124]), C(d[125]), C(d[126]), C(d[127])
#define WG_W(x) "=r"(x)
#define WG_RW(x) "+r"(x)
#define WG_WF(x) "=f"(x)
#define WG_RWF(x) "+f"(x)
#define WG_ASM(SHAPE, TYPES, DLIST, AREGS, SCALE, TAIL, OUTS)                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " #SCALE ", 0;\n"                                               \
               "wgmma.mma_async.sync.aligned." SHAPE "." TYPES " " DLIST ", " AREGS ", p" TAIL ";\n}\n"         \
               : OUTS                                                                                            \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc))
// WG_SHAPE_<TN>: an m64nTNk32 wgmma's shape, accumulator list, A and
// descriptor operands, and output-constraint list; WG_CALL expands one
// into WG_ASM with the given types, scale-d (0 or 1) and constraint.
#define WG_SHAPE_256 "m64n256k32", WG_D256, "{%128,%129,%130,%131}, %132", WG_OUT256
#define WG_SHAPE_128 "m64n128k32", WG_D128, "{%64,%65,%66,%67}, %68", WG_OUT128
#define WG_SHAPE_64 "m64n64k32", WG_D64, "{%32,%33,%34,%35}, %36", WG_OUT64
#define WG_CALL(...) WG_CALL_(__VA_ARGS__) // SH expands into its four parts first
#define WG_CALL_(SHAPE, DLIST, AREGS, OUT, TYPES, SCALE, TAIL, C) WG_ASM(SHAPE, TYPES, DLIST, AREGS, SCALE, TAIL, OUT(C))
// The first wgmma of a group (SCALED 0) only writes d; the second adds.
#define WG_S8(N, SH)                                                                                           \
  if constexpr (TN == N && SCALED == 0 && !UNS) WG_CALL(SH, "s32.s8.s8", 0, "", WG_W);                         \
  if constexpr (TN == N && SCALED == 0 && UNS) WG_CALL(SH, "s32.s8.u8", 0, "", WG_W);                          \
  if constexpr (TN == N && SCALED == 1 && !UNS) WG_CALL(SH, "s32.s8.s8", 1, "", WG_RW);                        \
  if constexpr (TN == N && SCALED == 1 && UNS) WG_CALL(SH, "s32.s8.u8", 1, "", WG_RW)
#define WG_E4M3(N, SH)                                                                                         \
  if constexpr (TN == N && SCALED == 0) WG_CALL(SH, "f32.e4m3.e4m3", 0, ", 1, 1", WG_WF);                      \
  if constexpr (TN == N && SCALED == 1) WG_CALL(SH, "f32.e4m3.e4m3", 1, ", 1, 1", WG_RWF)
template <bool UNS, int TN, int SCALED> SVDQ_DEV void wgmma_s8(int (&d)[TN / 2], const uint32_t (&a)[4], uint64_t desc) {
  WG_S8(256, WG_SHAPE_256);
  WG_S8(128, WG_SHAPE_128);
  WG_S8(64, WG_SHAPE_64);
}
// wgmma_e4m3: the same with E4M3 operands and FP32 accumulators (d =
// a . B / 512 for the codes below: exact, checked bit for bit).
template <int TN, int SCALED> SVDQ_DEV void wgmma_e4m3(float (&d)[TN / 2], const uint32_t (&a)[4], uint64_t desc) {
  WG_E4M3(256, WG_SHAPE_256);
  WG_E4M3(128, WG_SHAPE_128);
  WG_E4M3(64, WG_SHAPE_64);
}
// fence_regs pins an accumulator or fragment array (int, uint32_t or
// float) in its registers at this point of the program (CUTLASS's
// warpgroup_fence_operand).
template <typename T> constexpr bool wg_is_f32 = false;
template <> constexpr bool wg_is_f32<float> = true;
template <typename T, int N> SVDQ_DEV void fence_regs(T (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; i++) {
    if constexpr (wg_is_f32<T>) asm volatile("" : "+f"(d[i])::"memory");
    else asm volatile("" : "+r"(d[i])::"memory");
  }
}
// The accumulators: FP32 for the E4M3 wgmma (BF16 models), INT32 for the
// INT8 one (FP16 models).
template <bool BF> struct WgAcc { using T = int; };
template <> struct WgAcc<true> { using T = float; };
// e8lo / e8hi: the even / odd nibbles n of a word as E4M3 bytes holding
// exactly n / 512: sign and magnitude, the magnitudes 0..8 being the
// subnormals m / 512 and, for 8, the first normal number. Negative
// nibbles t = n + 16: (t ^ 0x8F) + 1 = 0x80 | (16 - t).
SVDQ_DEV uint32_t e8lo(uint32_t w) {
  const uint32_t x = w & 0x0F0F0F0Fu, s1 = (w >> 3) & 0x01010101u;
  return (x ^ (s1 * 0x8Fu)) + s1;
}
SVDQ_DEV uint32_t e8hi(uint32_t w) { return e8lo(w >> 4); }
// wg_prep waits for a stage (full: its barrier) and unpacks its group's
// weight fragments from w into a0 / a1 (the two k32 halves): BF16 (E4M3)
// the weights as n / 512 (e8lo/e8hi); FP16 (INT8) as 16x codes
// (nib_hi/nib_lo of common.cuh).
template <bool BF>
SVDQ_DEV void wg_prep(const uint4 *w, uint32_t full, uint32_t parity, int warp, int lane, uint32_t (&a0)[4],
                      uint32_t (&a1)[4]) {
  mbar_wait(full, parity);
  const uint4 wf = w[warp * 32 + lane];
  const auto lo = [](uint32_t v) { if constexpr (BF) return e8lo(v); else return nib_lo(v); };
  const auto hi = [](uint32_t v) { if constexpr (BF) return e8hi(v); else return nib_hi(v); };
  a0[0] = lo(wf.x), a0[1] = lo(wf.z), a0[2] = hi(wf.x), a0[3] = hi(wf.z);
  a1[0] = lo(wf.y), a1[1] = lo(wf.w), a1[2] = hi(wf.y), a1[3] = hi(wf.w);
}
// wg_mma starts a group's two wgmma into d (BF16: d = P / 512; FP16:
// d = 16 P); desc describes the stage's activation codes. The first uses
// scale-d 0 (d restarts at the group's product). The A fragments are
// written before the fence (the PTX rule: a fence between a register's
// write and the wgmma that reads it) and must stay unchanged until the
// wgmma completed (wg_wait).
template <bool UNS, bool BF, int TN>
SVDQ_DEV void wg_mma(uint64_t desc, uint32_t (&a0)[4], uint32_t (&a1)[4], typename WgAcc<BF>::T (&d)[TN / 2]) {
  fence_regs(a0);
  fence_regs(a1);
  fence_regs(d);
  wg_fence();
  if constexpr (BF) {
    wgmma_e4m3<TN, 0>(d, a0, desc);
    wgmma_e4m3<TN, 1>(d, a1, desc + (256 >> 4));
  } else {
    wgmma_s8<UNS, TN, 0>(d, a0, desc);
    wgmma_s8<UNS, TN, 1>(d, a1, desc + (256 >> 4));
  }
  wg_commit();
}
// wg_release hands a stage back to the producer (its "empty" barrier, one
// arrival per warp) once the warp has read what it needs of it. The reads
// are generic-proxy loads and the producer's next write into the stage is
// a bulk copy (async proxy): each thread orders the two with a proxy fence
// first, as the PTX memory model asks. Without it, ptxas issued the arrive
// right behind the last scale load without waiting for it, and in a few
// repeated runs the copy overwrote those scales first (tile rows 96-127 of
// n128, 32-63 of n64: TestGPURepeatable, harness c; NOTES, session 7).
SVDQ_DEV void wg_release(uint32_t empty, int lane) {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncwarp();
  if (lane == 0) mbar_arrive(empty);
}
// wg_finish reads a group's scales, releases its stage and runs the 16-bit
// epilogue of the group on d (complete):
//   acc16 = hfma2(round16(P), round16(as*ws), acc16).
// BF16: d = P / 512, whose rounding is exactly round16(P) / 512, and the
// factor 512 moves into ws: exact while ws*512 and as*ws*512 are finite and
// as*ws is a normal bfloat16 number (or zero), i.e. for every scale short
// of 2^-126 or 2^118 (there gpu-check would report the difference).
// FP16 (d = 16 P; its scales are often subnormal, and 16 P may overflow
// half): P itself, d moved to the magic number (common.cuh) and scaled back
// by 1/16 in one FFMA, as gemm_w4a4.cuh does for its 256 P.
// The act scales (as8_pos order) are four 16-byte loads per n128 tile.
template <bool BF, int TN, bool LATE = false>
SVDQ_DEV void wg_finish(const uint16_t *as, const uint16_t *ws, uint32_t empty, int wpos, uint32_t wsel, int lane,
                        const typename WgAcc<BF>::T (&d)[TN / 2], uint32_t (&acc16)[TN / 8][2]) {
  const int c = lane & 3;
  // The lane's channels ch and ch + 8 sit at wpos + (g & 1) and + 2 of the
  // packed vector (vec1d_pos): one 8-byte load, each scale replicated into
  // both halves by wsel.
  const uint2 wv = *reinterpret_cast<const uint2 *>(ws + wpos);
  uint32_t wsd0 = __byte_perm(wv.x, 0, wsel), wsd1 = __byte_perm(wv.y, 0, wsel);
  if (BF) {
    wsd0 = hmul2<BF>(wsd0, 0x44004400u); // x 2^9
    wsd1 = hmul2<BF>(wsd1, 0x44004400u);
  }
  // asp[j]: the scale pair of tokens 8j + 2c, +1; four per 16-byte load.
  // LATE (n256): each load just before its tokens, the stage released after
  // the epilogue (all 32 pairs would not fit beside the accumulators).
  uint32_t asp[TN / 8];
  auto load_as = [&](int q) {
    const uint4 v = *reinterpret_cast<const uint4 *>(as + 64 * (q >> 1) + 16 * c + 8 * (q & 1));
    asp[4 * q] = v.x, asp[4 * q + 1] = v.y, asp[4 * q + 2] = v.z, asp[4 * q + 3] = v.w;
  };
  if constexpr (!LATE) {
#pragma unroll
    for (int q = 0; q < TN / 32; q++) load_as(q);
    wg_release(empty, lane);
  }
#pragma unroll
  for (int q = 0; q < TN / 32; q++) {
    if constexpr (LATE) load_as(q);
#pragma unroll
    for (int j = 4 * q; j < 4 * q + 4; j++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float f[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
          if constexpr (BF) f[e] = d[4 * j + 2 * h + e];
          else f[e] = fmaf(__int_as_float(d[4 * j + 2 * h + e] + MAGIC_I), 1.f / 16, -MAGIC_F / 16); // P, exact
        }
        const uint32_t p16 = pack2<BF>(f[0], f[1]);
        const uint32_t s16 = hmul2<BF>(asp[j], h ? wsd1 : wsd0);
        acc16[j][h] = hfma2<BF>(p16, s16, acc16[j][h]);
      }
  }
  if constexpr (LATE) wg_release(empty, lane);
}
#endif

#ifdef SVDQ_WGMMA
// Pieces shared by the two wgmma GEMM bodies below.
// wg_slr_fill_by (fused, rank <= 32): the tile's lract rows rounded to 16
// bits, in the B-fragment order of the up projection (one conflict-free
// 8-byte load per lane and tile), filled by NT threads (h: this one's
// index) that have nothing else to do, an 8-byte entry (two float2 loads)
// at a time, consecutive threads on consecutive entries of a row.
template <bool BF, int TN, int NT>
SVDQ_DEV void wg_slr_fill_by(uint2 *slr, const float *__restrict__ lract, int tok0, int R, int h) {
  const int RC = (R >> 4) * 4; // entries per token row
#pragma unroll 4
  for (int i = h; i < TN * RC; i += NT) {
    const int t = i / RC, rc = i - t * RC, rt = rc >> 2, cc = rc & 3;
    const float *row = lract + (size_t)(tok0 + t) * R + rt * 16 + 2 * cc;
    const float2 a = *reinterpret_cast<const float2 *>(row), b = *reinterpret_cast<const float2 *>(row + 8);
    slr[((t >> 3) * 2 + rt) * 32 + (t & 7) * 4 + cc] = make_uint2(pack2<BF>(a.x, a.y), pack2<BF>(b.x, b.y));
  }
}
// wg_lzero: the blocks of a token tile zero its rows of the other low-rank
// buffer, the next call's (lzero, when the host asks), a slice each.
template <int TN, int NC> SVDQ_DEV void wg_lzero(float *lzero, int tok0, int R, int t) {
  const int n4 = TN * R / 4, per = (n4 + gridDim.y - 1) / gridDim.y;
  float4 *z = reinterpret_cast<float4 *>(lzero + (size_t)tok0 * R);
  for (int i = blockIdx.y * per + t; i < min(n4, (int)(blockIdx.y + 1) * per); i += NC)
    z[i] = make_float4(0.f, 0.f, 0.f, 0.f);
}
// wg_final: bias (16-bit add, before the low-rank branch), the low-rank up
// projection (fused; from slr when lrs, else from lract in global memory),
// the FP16 clamp, and the stores of the warp's 16 channels (p-tile p of
// the 128-channel chunk nt) x TN tokens. biasc: the chunk's packed bias;
// upp: the warp's up fragments (rank tile rt at upp[32 rt], lane added).
// NB: the threads that meet at barrier 1 before slr is read (the
// consumers, and the fillers if others).
template <bool BF, int MODE, int TN, int NB>
SVDQ_DEV void wg_final(uint32_t (&acc16)[TN / 8][2], const uint16_t *biasc, const uint4 *upp,
                       const float *__restrict__ lract, const uint2 *slr, bool lrs, uint16_t *__restrict__ y, int M,
                       int N, int R, int tok0, int nt, int p, int lane) {
  constexpr int NJ = TN / 8;
  constexpr bool FUSED = MODE == GEMM_MODE_FUSED;
  const int g = lane >> 2, c = lane & 3, RT = R >> 4;
  const int ch0 = nt * 128 + p * 16 + g; // channels ch0 (h = 0) and ch0 + 8
  {
    const uint32_t b0 = uint32_t(biasc[vec1d_pos(p * 16 + g)]) * 0x10001u;
    const uint32_t b1 = uint32_t(biasc[vec1d_pos(p * 16 + g + 8)]) * 0x10001u;
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      acc16[j][0] = hadd2<BF>(acc16[j][0], b0);
      acc16[j][1] = hadd2<BF>(acc16[j][1], b1);
    }
  }
  if (FUSED && RT > 0) {
    // Rank tiles outer, token tiles inner: one up fragment per rank tile,
    // the token tiles' lract loads in flight together.
    float acc[NJ][4];
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      const float2 v0 = unpack2<BF>(acc16[j][0]), v1 = unpack2<BF>(acc16[j][1]);
      acc[j][0] = v0.x, acc[j][1] = v0.y, acc[j][2] = v1.x, acc[j][3] = v1.y;
    }
    if (lrs) {
      asm volatile("bar.sync 1, %0;\n" ::"n"(NB) : "memory"); // slr complete (NB threads: fillers and readers)
      for (int rt = 0; rt < RT; rt++) {
        const uint4 u = upp[rt * 32];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
          const uint2 b = slr[(j * 2 + rt) * 32 + lane];
          mma_f16<BF>(acc[j], u.x, u.z, u.y, u.w, b.x, b.y);
        }
      }
    } else {
      const float *l = lract + (size_t)(tok0 + g) * R + 2 * c;
      for (int rt = 0; rt < RT; rt++) {
        const uint4 u = upp[rt * 32];
#pragma unroll
        for (int j = 0; j < NJ; j++) {
          const float2 f0 = *reinterpret_cast<const float2 *>(l + (size_t)8 * j * R + rt * 16);
          const float2 f1 = *reinterpret_cast<const float2 *>(l + (size_t)8 * j * R + rt * 16 + 8);
          mma_f16<BF>(acc[j], u.x, u.z, u.y, u.w, pack2<BF>(f0.x, f0.y), pack2<BF>(f1.x, f1.y));
        }
      }
    }
#pragma unroll
    for (int j = 0; j < NJ; j++) {
      acc16[j][0] = pack2<BF>(out16<BF>(acc[j][0]), out16<BF>(acc[j][1]));
      acc16[j][1] = pack2<BF>(out16<BF>(acc[j][2]), out16<BF>(acc[j][3]));
    }
  } else if (!BF) { // FP16 outputs are clamped to +-65504 on every path
#pragma unroll
    for (int j = 0; j < NJ; j++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const float2 v = unpack2<BF>(acc16[j][h]);
        acc16[j][h] = pack2<BF>(out16<BF>(v.x), out16<BF>(v.y));
      }
  }
#pragma unroll
  for (int j = 0; j < NJ; j++)
#pragma unroll
    for (int e = 0; e < 2; e++) {
      const int tok = tok0 + 8 * j + 2 * c + e;
      if (tok < M) {
        y[(size_t)tok * N + ch0] = uint16_t(acc16[j][0] >> (16 * e));
        y[(size_t)tok * N + ch0 + 8] = uint16_t(acc16[j][1] >> (16 * e));
      }
    }
}
// wg_produce: the producer loop, S groups ahead. The whole warp runs it, so
// that the addresses stay warp-uniform (uniform registers: no per-copy
// loop around the bulk copies); one elected lane issues the copies. A
// stage holds, per group: the activation codes of the TN tokens, NW times
// the 2048 bytes of one consumer warpgroup's packed weights (64 channels),
// the TN activation scales, and NW times the 256 bytes of weight scales of
// that warpgroup's 128-channel chunk. pw0[w] / pq0[w] point at warpgroup w's
// first group.
template <int S, int TN, int NW>
SVDQ_DEV void wg_produce(uint32_t st0, uint32_t stage_bytes, uint32_t full0, uint32_t empty0, const uint8_t *pa,
                         const uint8_t *const (&pw0)[NW], const uint8_t *ps, const uint8_t *const (&pq0)[NW], size_t da,
                         size_t ds, int KT) {
  constexpr uint32_t OFF_W = TN * 64, OFF_AS = OFF_W + NW * 2048, OFF_WS = OFF_AS + TN * 2;
  const uint8_t *pw[NW], *pq[NW]; // advanced each group (no multiplies in the loop)
#pragma unroll
  for (int w = 0; w < NW; w++) pw[w] = pw0[w], pq[w] = pq0[w];
  for (int kt = 0; kt < KT; kt++) {
    const uint32_t s = unsigned(kt) % S;
    if (kt >= S) mbar_wait(empty0 + 8 * s, ((unsigned(kt) / S) - 1) & 1);
    if (elect_one()) {
      const uint32_t st = st0 + s * stage_bytes, fb = full0 + 8 * s;
      mbar_expect_tx(fb, OFF_WS + NW * 256);
      bulk_g2s(st, pa, TN * 64, fb);
#pragma unroll
      for (int w = 0; w < NW; w++) bulk_g2s(st + OFF_W + w * 2048, pw[w], 2048, fb);
      bulk_g2s(st + OFF_AS, ps, TN * 2, fb);
#pragma unroll
      for (int w = 0; w < NW; w++) bulk_g2s(st + OFF_WS + w * 256, pq[w], 256, fb);
    }
    __syncwarp();
    pa += da, ps += ds;
#pragma unroll
    for (int w = 0; w < NW; w++) pw[w] += 4096, pq[w] += 256;
  }
}
// wg_init_bars (one thread, before a block-wide barrier): S "full"
// barriers (one arrival, the producer's expect_tx, plus the copies' bytes)
// and S "empty" ones (one arrival per consumer warp).
SVDQ_DEV void wg_init_bars(uint64_t *full, uint64_t *empty, int S, uint32_t consumers) {
  for (int s = 0; s < S; s++) {
    mbar_init(&full[s], 1);
    mbar_init(&empty[s], consumers);
  }
  asm volatile("fence.mbarrier_init.release.cluster;\nfence.proxy.async.shared::cta;\n" ::: "memory");
}
#endif

// WG_THREADS: one consumer warpgroup and one producer warp.
#define WG_THREADS 160

template <bool UNS, bool BF, int MODE, int TN>
SVDQ_DEV void gemm_wg_body(const int8_t *__restrict__ act8, const uint16_t *__restrict__ ascale,
                           const uint4 *__restrict__ qw, const uint16_t *__restrict__ wscales,
                           const float *__restrict__ lract, const uint4 *__restrict__ up,
                           const uint16_t *__restrict__ bias, uint16_t *__restrict__ y, int M, int Mpad, int N, int K,
                           int R, float *__restrict__ lzero) {
#ifdef SVDQ_WGMMA
  // n64 (PIPE), the tile of small M, where a multiprocessor runs one to
  // three blocks: two accumulator and fragment sets, so that group k+1's
  // wgmma runs while group k's epilogue does (wait<1>). A stage is then
  // released only after the next one was waited for, so n64 has 5 stages
  // (4: 0.92-0.97x at M = 128, one block per multiprocessor, presumably
  // waiting for its loads, not profiled; 6: less gain at M = 256).
  // bench-gpu, H100: 1.04-1.09x the one-set loop at M = 128 and 256
  // (NOTES, session 9). n128 keeps one set: other blocks'
  // groups fill the tensor cores there, and two sets spill at its 3 blocks
  // per multiprocessor (at 2, ptxas 13.0 serialises the wgmma for lack of
  // registers, C7512: 1.4-2.4x slower).
  constexpr bool PIPE = TN <= 64;
  constexpr int S = PIPE ? 5 : 4; // stages (n128: 2, 3 and 4 measured as fast)
  constexpr int ABYTES = TN * 64; // activation codes of one group
  constexpr int NJ = TN / 8;      // n8 token tiles
  constexpr int ND = TN / 2;      // accumulators per thread
  struct Stage {
    uint8_t act[ABYTES]; // act8 block of the group (core-matrix order)
    uint4 w[128];        // the block's 4 packed p-tiles (64 channels) of the group
    uint16_t as[TN];     // activation scales of the group
    uint16_t ws[128];    // weight scales of the 128-channel chunk
  };
  __shared__ __align__(1024) Stage stg[S];
  __shared__ __align__(8) uint64_t full[S], empty[S];
  constexpr bool FUSED = MODE == GEMM_MODE_FUSED;
  __shared__ __align__(16) uint2 slr[FUSED ? NJ * 2 * 32 : 1];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2;
  const int tok0 = blockIdx.x * TN;
  const int nt = blockIdx.y >> 1, half = blockIdx.y & 1;
  const int KT = K >> 6;

  if (tid == 0) wg_init_bars(full, empty, S, 4);
  __syncthreads();
  const uint32_t st0 = smem_u32(&stg[0]), full0 = smem_u32(&full[0]), empty0 = smem_u32(&empty[0]);
  if (warp == 4) {
    // Producer. Its instructions share a scheduler with a consumer warp,
    // whose warpgroup waits for its slowest warp: they are kept few.
    if (FUSED && R > 0 && elect_one()) { // what the final epilogue reads, into L2 meanwhile
      bulk_prefetch_l2(bias + nt * 128, 256);
      bulk_prefetch_l2(up + (size_t)(nt * 8 + half * 4) * (R >> 4) * 32, (R >> 4) * 2048);
    }
    const uint8_t *const pw[1] = {reinterpret_cast<const uint8_t *>(qw) + ((size_t)nt * KT * 8 + half * 4) * 512};
    const uint8_t *const pq[1] = {reinterpret_cast<const uint8_t *>(wscales + (size_t)nt * KT * 128)};
    wg_produce<S, TN, 1>(st0, sizeof(Stage), full0, empty0,
                         reinterpret_cast<const uint8_t *>(act8) + (size_t)(tok0 >> 3) * 512, pw,
                         reinterpret_cast<const uint8_t *>(ascale + tok0), pq, (size_t)Mpad * 64, (size_t)Mpad * 2, KT);
    return; // no block-wide barrier follows
  }

  const int RT = R >> 4;
  const bool lrs = FUSED && RT > 0 && RT <= 2;
  // Fused, rank <= 32: the tile's lract rows into slr, by the four
  // consumer warps at the start (wg_final's barrier 1 waits for them).
  if (lrs) wg_slr_fill_by<BF, TN, 128>(slr, lract, tok0, R, tid);
  if (FUSED && lzero != nullptr) wg_lzero<TN, 128>(lzero, tok0, R, tid);

  const int p = half * 4 + warp; // the warp's p-tile in the 128-channel chunk
  const int wpos = vec1d_pos(p * 16 + g) & ~3; // the weight scales: see wg_finish
  const uint32_t wsel = (g & 1) ? 0x3232u : 0x1010u;
  uint32_t acc16[NJ][2];
#pragma unroll
  for (int j = 0; j < NJ; j++) acc16[j][0] = acc16[j][1] = 0u;

  constexpr int NS = PIPE ? 2 : 1;
  const uint64_t desc0 = wg_desc(stg[0].act, 128, 512); // stage s: + s * sizeof(Stage) / 16
  typename WgAcc<BF>::T d[NS][ND]; // each group's first wgmma only writes it
  uint32_t fa[NS][2][4];
  const auto issue = [&](int k, int u) {
    const int s = unsigned(k) % S;
    wg_prep<BF>(stg[s].w, full0 + 8 * s, (unsigned(k) / S) & 1, warp, lane, fa[u][0], fa[u][1]);
    wg_mma<UNS, BF, TN>(desc0 + s * (sizeof(Stage) >> 4), fa[u][0], fa[u][1], d[u]);
  };
  const auto finish = [&](int k, int u) {
    const int s = unsigned(k) % S;
    fence_regs(d[u]);
    wg_finish<BF, TN>(stg[s].as, stg[s].ws, empty0 + 8 * s, wpos, wsel, lane, d[u], acc16);
  };
  if constexpr (PIPE) {
    issue(0, 0);
    int k = 0;
    for (; k + 2 < KT; k += 2) { // groups k and k + 1 finished, k + 1 and k + 2 started
      issue(k + 1, 1);
      wg_wait<1>();
      finish(k, 0);
      issue(k + 2, 0);
      wg_wait<1>();
      finish(k + 1, 1);
    }
    if (k + 1 < KT) {
      issue(k + 1, 1);
      wg_wait<1>();
      finish(k, 0);
      wg_wait<0>();
      finish(k + 1, 1);
    } else {
      wg_wait<0>();
      finish(k, 0);
    }
  } else {
    for (int k = 0; k < KT; k++) {
      issue(k, 0);
      wg_wait<0>();
      finish(k, 0);
    }
  }
  wg_final<BF, MODE, TN, 128>(acc16, bias + nt * 128, up + (size_t)(nt * 8 + p) * RT * 32 + lane, lract, slr, lrs, y,
                              M, N, R, tok0, nt, p, lane);
#else
  __trap(); // only launched on sm_90a (the host checks)
#endif
}

// The multi-warpgroup variant: a producer warpgroup and NW consumer
// warpgroups, consumer w on 64 channels (block channels 64w..64w+63) and
// all TN tokens of the block, so that the NW consumers share each
// activation stage. The producer gives its registers to the consumers
// (setmaxnreg; WG2_PREGS / WG2_CREGS): NW = 2 with TN = 256, the variant
// svdq.cu instantiates (accumulators 128 + 16-bit sums 64 registers a
// thread); NW = 3 with TN = 128 is bit-exact too but measured no faster
// than the one-warpgroup n128 kernel (NOTES). One block per
// multiprocessor; the producer's three idle warps fill the low-rank tile.
// Shared memory: the stages are dynamic (WG2_SMEM bytes at launch); the
// barriers, the low-rank tile and the final epilogue's bias and up
// fragments static. The block's channels are 64 NW consecutive ones (N a
// multiple of 64 NW).
#define WG2_STAGES 4
#define WG2_THREADS(NW) (128 * ((NW) + 1))
#define WG2_STAGE_BYTES(TN, NW) ((TN) * 66 + (NW) * 2304)
#define WG2_SMEM(TN, NW) (WG2_STAGES * WG2_STAGE_BYTES(TN, NW))
// Producer / consumer registers: the whole register file, 65536, split.
#define WG2_PREGS(NW) ((NW) == 2 ? 24 : 32)
#define WG2_CREGS(NW) ((NW) == 2 ? 240 : 160)

template <bool UNS, bool BF, int MODE, int TN, int NW>
SVDQ_DEV void gemm_wg2_body(const int8_t *__restrict__ act8, const uint16_t *__restrict__ ascale,
                            const uint4 *__restrict__ qw, const uint16_t *__restrict__ wscales,
                            const float *__restrict__ lract, const uint4 *__restrict__ up,
                            const uint16_t *__restrict__ bias, uint16_t *__restrict__ y, int M, int Mpad, int N,
                            int K, int R, float *__restrict__ lzero) {
#ifdef SVDQ_WGMMA
  static_assert(128 * (WG2_PREGS(NW) + NW * WG2_CREGS(NW)) <= 65536, "register split");
  constexpr int S = WG2_STAGES, NJ = TN / 8, ND = TN / 2, NC = 128 * NW;
  constexpr uint32_t SB = WG2_STAGE_BYTES(TN, NW), OFF_W = TN * 64, OFF_AS = OFF_W + NW * 2048,
                     OFF_WS = OFF_AS + TN * 2;
  extern __shared__ __align__(128) uint8_t wg2_smem[];
  __shared__ __align__(8) uint64_t full[S], empty[S];
  constexpr bool FUSED = MODE == GEMM_MODE_FUSED;
  __shared__ __align__(16) uint2 slr[FUSED ? NJ * 2 * 32 : 1];
  // The final epilogue's bias and (fused, rank <= 32) up fragments of each
  // consumer's 64 channels, copied in at the start (finbar): at one block
  // per multiprocessor their load latency would otherwise show.
  __shared__ __align__(16) uint16_t sbias[NW * 128];
  __shared__ __align__(16) uint4 sup[FUSED ? NW * 4 * 2 * 32 : 1];
  __shared__ __align__(8) uint64_t finbar;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int tok0 = blockIdx.x * TN, ch_blk = blockIdx.y * 64 * NW;
  const int KT = K >> 6;

  if (tid == 0) {
    mbar_init(&finbar, 1);
    wg_init_bars(full, empty, S, 4 * NW);
  }
  __syncthreads();
  const uint32_t st0 = smem_u32(wg2_smem), full0 = smem_u32(&full[0]), empty0 = smem_u32(&empty[0]);
  const int RT = R >> 4;
  const bool lrs = FUSED && RT > 0 && RT <= 2;
  if (warp < 4) {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(WG2_PREGS(NW)) : "memory");
    if (warp != 0) {
      // The producer's other three warps: the low-rank tile (slr) and the
      // zeroing of the next call's low-rank rows, while the consumers run
      // the groups (at one block per multiprocessor, these loads' latency
      // would otherwise stall the whole multiprocessor at the start).
      if (lrs) wg_slr_fill_by<BF, TN, 96>(slr, lract, tok0, R, tid - 32);
      if (FUSED && lzero != nullptr) wg_lzero<TN, 96>(lzero, tok0, R, tid - 32);
      if (lrs) asm volatile("bar.arrive 1, %0;\n" ::"n"(NC + 96) : "memory");
      return;
    }
    const uint8_t *pw[NW], *pq[NW];
    const uint32_t fin = smem_u32(&finbar);
    if (elect_one()) mbar_expect_tx(fin, NW * (256 + (lrs ? RT * 2048 : 0)));
#pragma unroll
    for (int w = 0; w < NW; w++) {
      const int cb = ch_blk + 64 * w, nt = cb >> 7, half = (cb >> 6) & 1;
      pw[w] = reinterpret_cast<const uint8_t *>(qw) + ((size_t)nt * KT * 8 + half * 4) * 512;
      pq[w] = reinterpret_cast<const uint8_t *>(wscales + (size_t)nt * KT * 128);
      if (elect_one()) {
        bulk_g2s(smem_u32(sbias + 128 * w), bias + nt * 128, 256, fin);
        if (lrs) bulk_g2s(smem_u32(sup + w * RT * 128), up + (size_t)(nt * 8 + half * 4) * RT * 32, RT * 2048, fin);
        else if (FUSED && R > 0) bulk_prefetch_l2(up + (size_t)(nt * 8 + half * 4) * RT * 32, RT * 2048);
      }
    }
    wg_produce<S, TN, NW>(st0, SB, full0, empty0, reinterpret_cast<const uint8_t *>(act8) + (size_t)(tok0 >> 3) * 512,
                          pw, reinterpret_cast<const uint8_t *>(ascale + tok0), pq, (size_t)Mpad * 64,
                          (size_t)Mpad * 2, KT);
    return;
  }
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(WG2_CREGS(NW)) : "memory");
  const int wgi = (warp >> 2) - 1, g = lane >> 2;
  const int cb = ch_blk + 64 * wgi, nt = cb >> 7, p = ((cb >> 6) & 1) * 4 + (warp & 3); // p-tile in chunk nt

  const int wpos = 128 * wgi + (vec1d_pos(p * 16 + g) & ~3);
  const uint32_t wsel = (g & 1) ? 0x3232u : 0x1010u;
  uint32_t acc16[NJ][2];
#pragma unroll
  for (int j = 0; j < NJ; j++) acc16[j][0] = acc16[j][1] = 0u;
  const uint64_t desc0 = wg_desc(wg2_smem, 128, 512);
  typename WgAcc<BF>::T d[ND];
  // The next group's weight fragments are unpacked while this group's
  // wgmma run (two fragment sets, the loop unrolled by two: KT is even):
  // otherwise each warp only waits there.
  const auto wts = [&](int k) {
    return reinterpret_cast<const uint4 *>(wg2_smem + (k & (S - 1)) * SB + OFF_W + 2048 * wgi);
  };
  uint32_t fa[2][2][4];
  wg_prep<BF>(wts(0), full0, 0, warp & 3, lane, fa[0][0], fa[0][1]);
  for (int kt = 0; kt < KT; kt += 2) {
#pragma unroll
    for (int u = 0; u < 2; u++) {
      const int k = kt + u, s = k & (S - 1);
      const uint8_t *st = wg2_smem + s * SB;
      wg_mma<UNS, BF, TN>(desc0 + s * (SB >> 4), fa[u][0], fa[u][1], d);
      if (k + 1 < KT)
        wg_prep<BF>(wts(k + 1), full0 + 8 * ((k + 1) & (S - 1)), (unsigned(k + 1) / S) & 1, warp & 3, lane,
                    fa[u ^ 1][0], fa[u ^ 1][1]);
      wg_wait<0>();
      fence_regs(d);
      wg_finish<BF, TN, (TN > 128)>(reinterpret_cast<const uint16_t *>(st + OFF_AS),
                                    reinterpret_cast<const uint16_t *>(st + OFF_WS), empty0 + 8 * s, wpos, wsel, lane,
                                    d, acc16);
    }
  }
  mbar_wait(smem_u32(&finbar), 0);
  const uint4 *upp = lrs ? sup + (wgi * 4 + (warp & 3)) * RT * 32 + lane : up + (size_t)(nt * 8 + p) * RT * 32 + lane;
  wg_final<BF, MODE, TN, NC + 96>(acc16, sbias + 128 * wgi, upp, lract, slr, lrs, y, M, N, R, tok0, nt, p, lane);
#else
  __trap();
#endif
}

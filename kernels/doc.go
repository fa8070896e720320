// Package kernels runs SVDQuant W4A4 layers on an NVIDIA GPU from the packed
// bytes of a nunchaku checkpoint (spec: nunchaku-format.md), so that a GPU
// run checks the file itself against the CPU emulation (quant.Layer.Forward)
// and measures the kernels' speed.
//
// # What runs
//
// The CUDA sources in cuda/ are compiled to PTX by scripts/build-ptx.sh
// (nvcc, sm_90a and sm_80 targets), committed under ptx/ and embedded; Open
// loads the one for the card (the driver JIT-compiles it). The host talks to
// libcuda.so.1 through purego (no cgo): every driver call's result is
// checked and a failure names the call (*Error); without a driver Open
// returns an error wrapping ErrNoDriver ("no CUDA driver found"). A CUDA
// context is current per OS thread, so a Device runs every driver call on
// one goroutine locked to its thread.
//
// A layer's forward pass, in nunchaku's arithmetic as quant/emulate.go
// documents it (16-bit input, x̂ = round16(x/λ), per-token activation
// quantization with the reciprocal of the unrounded scale, exact integer
// group products, a 16-bit accumulator updated with hfma, bias with hadd,
// then the low-rank branch added in FP32 and rounded once):
//
//   - the activation pass (cuda/act_quant.cuh) quantizes x per token and
//     group (signed INT4, unsigned INT4 with the 0.171875 shift, or NVFP4)
//     and, fused in the same pass, computes the low-rank down projection
//     x·proj_down on the 16-bit tensor cores;
//   - the GEMM (cuda/gemm_w4a4.cuh) reads qweight and wscales as stored,
//     in fragment order, one 16-byte load per lane per 16×64 tile; sm_80..89
//     use the native mma.m16n8k64 s4. The bias and the low-rank up
//     projection (16-bit tensor cores, FP32 accumulators) are fused into
//     the epilogue;
//   - Hopper has no 4-bit tensor cores: on sm_90a the GEMM of INT4 layers
//     is cuda/gemm_w4a4_sm90.cuh, wgmma computing yᵀ = W·xᵀ: the packed
//     weight p-tiles are the register operand, the activations the
//     shared-memory operand, written one byte per code by the activation
//     pass in the act8 layout (cuda/common.cuh) and streamed, with both
//     scales and the weights, by the bulk-copy engine from a producer warp.
//     BF16 models use FP8 (E4M3) wgmma: every 4-bit code and every group's
//     sum is exact there (the weights as n/512), and the FP32 accumulators
//     need no int→float conversion; FP16 models use INT8 wgmma (each nibble
//     the top half of a byte). SVDQ_GEMM=mma runs the sm_80 design there
//     instead (each nibble moved into the top half of a byte, two INT8
//     mma.m16n8k32 per group), to compare;
//   - NVFP4 layers (no card here has FP4 tensor cores) run
//     cuda/gemm_nvfp4.cuh on every card: each 16-group is one FP16
//     mma.m16n8k16, the E2M1 codes spread into FP16 bits in registers (the
//     weights times their E4M3 scale, exact), the group's exact sum added
//     into an FP32 accumulator with one FFMA by the activation scale: the
//     emulation's order and roundings, so the result is bit for bit the
//     reference kernel's;
//   - the unfused variant runs the down and up projections as separate
//     passes; the reference GEMM (cuda/gemm_ref.cuh) is one thread per
//     output with scalar loops.
//
// # Layouts
//
// The packed tensors are read through the index functions of
// cuda/common.cuh, mirrored one for one in layout.go; Packed.Logical decodes
// a file through the Go twins so that CI, without a GPU, checks them
// against formats/nunchaku's packer. Quantized activations use this
// package's own layout: uint32 [M/16][K/64][32 lanes][4 words], the A
// fragments of mma.m16n8k64, or for the wgmma GEMM act8 (one byte per
// code, 8-token × 16-byte core matrices; M padded to 128, or 256 for the
// n256x2 tile).
//
// # Checking
//
// Verify compares a GPU result with the emulation of the same layer:
// outputs within Tolerances (2 ulps of the model dtype plus the FP32 order
// of the up projection), after the GPU's own down-projection sums, which
// the GPU adds in another order, were checked within the FP32 bound and
// their 16-bit roundings carried into the expected output.
package kernels

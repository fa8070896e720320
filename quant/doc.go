// Package quant implements the per-layer mathematics of SVDQuant (Li et al.,
// "SVDQuant: Absorbing Outliers by Low-Rank Components for 4-Bit Diffusion
// Models", arXiv 2411.05007): the 4-bit number formats (INT4 group 64, the
// unsigned shifted INT4 input, NVFP4 E2M1 group 16 with FP8 E4M3 scales),
// exact float conversions, the smoothing search, the low-rank branch with
// refinement, optional GPTQ, W4A16 weight-only quantization, and the CPU
// emulation of a quantized layer exactly as nunchaku's kernel computes it.
//
// Layout conventions: a linear layer computes y = x·Wᵀ + b with W [N, K]
// row-major (N = out_features, K = in_features); activations X are [M, K].
// The package touches no files, flags or terminals; it imports only svd.
package quant

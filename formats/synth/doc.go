// Package synth writes synthetic checkpoints with a model family's real
// tensor names and shapes (formats/preset skeletons) at any scale, and
// calibration files in the svdq-calib/1 format whose activation statistics
// line up with the weights, so that every whole-checkpoint path (quantize,
// check, LoRA fusion, nunchaku packing) can run without downloading a model.
//
// # Files
//
// DIR/model.safetensors (or, with Shards > 1, DIR/model-0000i-of-0000n.safetensors
// and DIR/model.safetensors.index.json in the Hugging Face sharded layout),
// every tensor bf16; DIR/calib.safetensors with metadata format=svdq-calib/1
// and, for every module of the file that feeds a quantized layer (named as
// the file names it: diffusers names for diffusers files, BFL names such as
// "double_blocks.0.img_attn.qkv" for BFL and ComfyUI files, never with the
// file prefix):
//
//	<module>.input_absmax  F32  [K]     per-channel max |x| over all tokens
//	<module>.input_samples BF16 [S, K]  S sample rows (default 256)
//	<module>.input_count   I64  [1]     tokens the statistics stand for (65536)
//
// # Distribution (pattern "aligned", the default)
//
// Every layer input (one per smoothing group, or per layer when it has no
// group; a column-split tensor such as FLUX proj_out has one input per
// part) gets a channel profile drawn from a PCG stream seeded by
// (seed, input name):
//
//   - activation scale a_k = exp(0.4·g_k), g_k ~ N(0,1); max(2, K/256)
//     outlier channels have a_k multiplied by 16–64;
//   - weight column scale c_k = exp(0.25·h_k), h_k ~ N(0,1), divided by 16
//     on the activation outlier channels (large activations meet small
//     weights, as in real models where smoothing helps), and multiplied by 6
//     on max(1, K/512) other weight-outlier columns.
//
// A linear weight [N, K] (1×1 conv [N, K, 1, 1]) is
// w[n,k] = σ·r_n·c_k·z with σ = 1/√K, z ~ N(0,1), row scale
// r_n = exp(0.2·f_n) with max(1, N/512) outlier rows ×4, and heavy tails:
// one element in 4096 on average (geometric gaps) is multiplied by 8.
// Calibration rows are x[s,k] = t_s·a_k·z with a per-row (token) scale
// t_s = exp(0.3·e_s); inputs of Shifted layers (the MLP second linear after
// a GELU) are GELU(tanh)(t_s·a_k·z), hence ≥ −0.17. input_absmax is
// max(sample max, 4·a_k·max_s t_s) — the expected maximum of 65536 tokens —
// so it is never below the samples' own maximum.
//
// # Patterns
//
// Options.Pattern (svdq synth --pattern) picks one of three structures, so
// that a method is not judged on one outlier pattern only. Their
// parameters were fixed from the sources below before any quantization
// ran on them, and are not tuned to make any method win. Everything not
// listed is as in "aligned" (row scales, biases, tensors outside the
// quantized layers, GELU on Shifted inputs, absmax = max(sample max,
// expected maximum over 65536 tokens)).
//
//   - aligned (default): the distribution above: activation outliers where
//     the weights are small, the case smoothing is made for. Its files are
//     byte-identical to those written before patterns existed.
//   - massive: "massive activations" (Sun et al. 2024, arXiv 2402.17762:
//     very few fixed feature dimensions, values up to 10⁴–10⁵× the others,
//     largely constant across inputs, acting as biases; Turri et al. 2026,
//     arXiv 2605.13974: a few DiT hidden-state channels consistently much
//     larger than the rest). Per input, a_k = exp(0.4·g_k) and ordinary
//     weight columns c_k = exp(0.25·h_k) (no shrinking where activations are
//     large, no ×6 columns); 4 massive channels with a fixed sign and a
//     magnitude m_k = 10^U(2,3) (100–1000× the median a_k = 1), whose value
//     is m_k·exp(0.2·z) on every token, whatever its token scale (positive
//     on Shifted inputs). Token-wise outliers: one token in 32 on average
//     (shared by every input of the file, like a special token) has its
//     token scale t_s multiplied by 10^U(0.5,1) (×3.2–10), so the ordinary
//     channels' absmax comes from a few tokens. Weights as "aligned"'s
//     formula with these c_k. The massive channels dominate ‖X·Wᵀ‖ (a
//     bias-like component), so relative errors are small for every method
//     that keeps those columns exact.
//   - weights: weight-side outliers with mild activations, where the
//     low-rank branch matters most and smoothing little (DiT weights are
//     Gaussian-like with long tails: LRQ-DiT, arXiv 2508.03485; trained
//     weights carry a few dominant singular directions, which SVDQuant's
//     branch absorbs: Li et al. 2024, arXiv 2411.05007). a_k = exp(0.3·g_k)
//     with no outlier channels; c_k = exp(0.25·h_k) with max(1, K/256)
//     outlier columns ×8; w[n,k] = σ·r_n·c_k·(t + Σ_{i<16} g_i·u_ni·v_ik)
//     with t Student-t (ν = 3, scaled to unit variance), u, v ~ N(0,1),
//     g_i = 0.4·0.8^i (about 30% of the energy in 16 directions), and one
//     entry in 2048 on average multiplied by U(8,16).
//
// Patterns other than aligned add " pattern=NAME" to the svdq_synth and
// source metadata.
//
// Tensors outside the quantized layers: 1-D biases N(0, 0.02²), other 1-D
// tensors (norm weights, gates) 1 + N(0, 0.1²), everything else
// N(0, 1/fan_in) with fan_in the product of the dimensions after the first.
//
// # Determinism and memory
//
// Each tensor and each calibration row has its own PCG stream, seeded from
// (seed, tensor or input name, row), so the bytes do not depend on the
// order or number of workers: the same options give byte-identical files.
// Tensors are generated by a pool of workers (one per CPU) straight into
// bf16 buffers and handed to the streaming safetensors writer, so memory
// stays at a few tensors (the largest FLUX.1 tensor, single_blocks linear1, is 126 MiB).
package synth

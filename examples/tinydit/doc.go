// Package tinydit is a tiny FLUX-like diffusion transformer with
// deterministic weights, small enough to calibrate, quantize and evaluate as
// a whole model on a laptop CPU in seconds: the model behind `svdq demo`.
// It checks claims about quantization quality on a whole model's final
// output, not only layer by layer.
//
// # Architecture
//
// The layer graph and the tensor names are those of diffusers'
// FluxTransformer2DModel (so formats/preset's flux family plans it as
// FLUX.1-schnell: no guidance embedder), at width D (DefaultConfig: 256,
// heads of 64) with MLP width H = 4·D:
//
//   - conditioning: temb = timestep_embedder(sinusoid₂₅₆(1000·t)) +
//     text_embedder(pooled), each linear_1 → SiLU → linear_2; every adaLN
//     modulation linear reads SiLU(temb);
//   - x_embedder [D, 64] on 2×2-packed latent patches, context_embedder
//     [D, ContextDim] on the text features;
//   - double blocks transformer_blocks.{i}: norm1.linear and
//     norm1_context.linear [6D, D] (shift, scale, gate for attention and
//     for the MLP), LayerNorm without affine then x·(1+scale)+shift; attn.to_q
//     |to_k|to_v and add_q_proj|add_k_proj|add_v_proj, per-head RMSNorm
//     (norm_q, norm_k, norm_added_q, norm_added_k), rotary embedding with
//     FLUX's position ids (text (0,0,0), image (0,row,col)), joint
//     attention over text ‖ image tokens, attn.to_out.0 and attn.to_add_out,
//     gated residuals; ff and ff_context: net.0.proj [H, D] → GELU (tanh
//     approximation) → net.2 [D, H];
//   - single blocks single_transformer_blocks.{i} on the joint sequence:
//     norm.linear [3D, D], attn.to_q|k|v with norm_q/norm_k and rotary
//     embedding, proj_mlp [H, D] → GELU, proj_out [D, D+H] on attention ‖ MLP,
//     gated residual;
//   - norm_out.linear [2D, D] (scale, shift) and proj_out [64, D]: the
//     predicted velocity, one 64-vector (16 channels × 2×2) per image token.
//
// Parameters are spago modules (linear.Model, nn.Param); the batched
// forward pass runs on row-major [tokens, features] float32 slices with
// svd.Gemm for the products and is tested against a per-token forward
// written with spago's building blocks (reference_test.go).
//
// # Weights
//
// Random weights, but with the structure that makes 4-bit quantization of
// real DiTs hard; every parameter is drawn from its own PCG stream seeded
// by (Config.Seed, tensor name) and rounded to bf16, so the float32 model is
// exactly the 16-bit checkpoint WriteCheckpoint writes.
//
//   - Linear weights w = 1/√K · r_n · c_k · t₄: Student-t entries with 4
//     degrees of freedom (heavy tails, as trained weights have), log-normal
//     row and column scales (σ 0.2, 0.25), and max(1, K/128) input columns
//     4× larger: weight outliers, which smoothing makes worse and which a
//     low-rank branch absorbs. Biases N(0, 0.02²).
//   - Massive activations: max(1, D/128) residual-stream channels get a
//     bias of ±11…32 in x_embedder and context_embedder, so every token of
//     both streams carries them through all blocks (the "massive
//     activations" reported for LLMs and DiTs). After LayerNorm they remain
//     the largest channels of every block input.
//   - adaLN outliers: in each modulation linear, max(2, D/64) channels of
//     every scale chunk have 1+scale between 5 and 24 (and weight rows 4×
//     larger, so the factor moves with the timestep) and a shift of
//     ±0.5…2. The q/k/v and MLP inputs of that block inherit these channels
//     for every token — the channel-wise outliers, varying over timesteps,
//     that SmoothQuant-style smoothing targets in DiTs (ViDiT-Q, SVDQuant
//     Fig. 4). The modulation weights are small (gain 0.3), gates 0.3–0.7.
//   - MLP: in every first MLP linear, max(2, H/128) hidden units have 3×
//     larger weight rows and a +1…1.5 bias, so the GELU output feeding the
//     second linear (nunchaku's unsigned, shifted INT4 input) has a few
//     large, always-positive channels.
//   - RMSNorm weights 1 + N(0, 0.1²); final proj_out without outlier
//     columns.
//
// With DefaultConfig, the largest channel of a q/k/v or MLP input is 8–30×
// its median channel (up to about 70 in absolute value), that of the GELU
// inputs of the second MLP linears 6–22× (TestOutlierStructure checks 8–40×
// and 5–40× on a few of them).
// Nothing is tuned to favour a method: the structure is fixed before any
// quantization is run.
//
// # Inputs
//
// NewBatch draws (latent, text, timestep) samples: logit-normal t,
// x_t = (1−t)·x₀ + t·ε with a smooth, image-like x₀, text features from a
// fixed vocabulary with T5-like outlier feature dimensions and padding. See
// NewBatch.
package tinydit

// Package lora reads LoRA files (diffusers/PEFT, kohya, ComfyUI), maps their
// modules onto the layers of an SVDQuant checkpoint, and holds the fusion
// arithmetic and the provenance record that lets a fused LoRA be taken out
// again byte for byte. The fusion rule is the last section of
// shared/spec/nunchaku-format.md ("LoRA on a quantized layer").
//
// # Input formats
//
// A LoRA file is a safetensors file whose keys are <module><suffix>:
//
//	suffix              role                      style
//	.lora_A.weight      A, down  [r, K]           diffusers / PEFT
//	.lora_B.weight      B, up    [N, r]           diffusers / PEFT
//	.lora_down.weight   A, down  [r, K]           kohya, ComfyUI
//	.lora_up.weight     B, up    [N, r]           kohya, ComfyUI
//	.alpha              α, scalar ([] or [1])     any (optional)
//
// A 1×1 convolution LoRA ([r, K, 1, 1], [N, r, 1, 1]) reads as a linear one.
// The module part may carry a prefix: "transformer." (diffusers),
// "base_model.model." (PEFT), "diffusion_model." or
// "model.diffusion_model." (ComfyUI), "lora_unet_" / "lora_transformer_"
// (kohya, whose module names flatten dots to underscores). The style is
// recorded, not trusted: every module resolves by its name against the
// checkpoint's known modules (Index). Values may be F32, F16, BF16, F8_E4M3,
// F8_E5M2 or F64; they are widened to float32 exactly (F64 rounds).
//
// Beyond these (delta.go, dora.go, keys.go): LyCORIS LoHa (hada_w1_a/b,
// hada_w2_a/b, Tucker hada_t1/t2) and LoKr (lokr_w1 or lokr_w1_a/b, lokr_w2
// or lokr_w2_a/b, Tucker lokr_t2) and full modules (diff); DoRA magnitudes (dora_scale,
// lora_magnitude_vector) beside any of them; XLabs processor LoRAs
// (double_blocks.N.processor.qkv_lora1.down.weight, …), mapped to BFL and
// diffusers modules; PEFT keys with the adapter name (lora_A.default.weight).
// Text-encoder keys (lora_te*, text_encoder*) are listed apart
// (File.TextEncoder). A BFL control LoRA's bias deltas (Module.Bias) and
// norm scales (File.Norms) change the model's 1-D tensors (vector.go,
// MapVectors); other non-factor keys (lora_A.bias, diff_b) are listed in
// File.Control. A full fine-tune against its base opens as a File of
// TypeDiff modules (OpenDiff). Any other key is "unknown" and reported,
// never silently dropped.
//
// # The delta
//
// A plain LoRA module's update is ΔW = s · B · A with s = strength · α / r,
// α = r when the file gives none (diffusers' rule for files without
// alphas). LoHa, LoKr, DoRA and diff modules have a dense ΔW
// (Module.Dense, Module.DenseDoRA; the conventions are in delta.go and
// dora.go with their sources): on W4A4 and W4A16 layers it becomes its
// truncated SVD (Truncate: a rank, or the fewest singular values holding
// a fraction of ‖ΔW‖²), on kept tensors an exact factorisation
// (ExactBranch); plain LoRA parts are never re-factored.
//
// # Fusion by kind of target layer
//
//   - W4A4 (SVDQuant): the branch grows along the rank, proj_down ← [proj_down | Aᵀ],
//     proj_up ← [proj_up | s·B], both rounded to the model's 16-bit type;
//     nothing 4-bit is touched, so the layer computes its base output plus
//     x·ΔWᵀ up to that rounding. The low-rank branch reads the raw input
//     (before smoothing and before the MLP shift), so no λ and no shift
//     enter. The packer pads the total rank to a multiple of 16. Then every
//     W4A4 layer of the file, touched or not, is stored at one rank, the
//     largest any layer needs, the others widened with zero columns
//     (nunchaku.PadRank; NarrowRank takes them off again), and the file's
//     quantization_config records that rank: nunchaku's Python loaders
//     build every module with it and load strictly, and nunchaku's C++
//     engine needs the two linears of a fused MLP at one rank.
//   - W4A16 (adaLN modulation): nunchaku's GEMV_AWQ (src/Linear.cpp) has
//     optional unpacked lora_down [R, K] / lora_up [N, R] tensors in the
//     model dtype and adds (x·lora_downᵀ)·lora_upᵀ to its output; its own
//     LoRA converter writes them with the rank padded to 16 and lora_up's
//     rows interleaved like the weight (reorder_adanorm_lora_up). We write
//     the same: an exact 16-bit branch, no requantization (which would
//     re-round every weight and lose small LoRAs in the 4-bit grid; see
//     TestW4A16Choice). nunchaku's Python W4A16 module (AWQW4A16Linear) has
//     no such tensors: fuse-lora writes them only where every engine the
//     input loads in reads them (formats/engine), unless told to.
//   - Kept 16-bit tensors: W ← round16(W_base + Σ s·B·A), the sum in float64.
//     Rounding makes this irreversible by subtraction, so the base tensor
//     and the factors are kept (Reserved* names) in the fused file's
//     sidecar (SidecarSuffix), never in the fused file, whose strict
//     loaders would reject them; the merged weight is always recomputed
//     from the base: fusing three LoRAs at once or one after another gives
//     the same bytes, and removal restores the base bytes.
//
// Within one LoRA and one layer, each (module, input columns) pair is a rank
// block whose up rows outside the module's rows are zero: fused q/k/v
// layers get a block-diagonal up matrix when q, k and v have their own A,
// and one block when a single module covers all rows (BFL img_attn.qkv).
// Blocks whose A is bit-identical and whose rows do not overlap are merged
// (as nunchaku's converter does), so a qkv LoRA split into q, k, v copies
// keeps its rank; rank columns whose up column or down row is all zeros
// add nothing and are dropped (a BFL linear1 LoRA with block-diagonal B
// gives qkv_proj only its q|k|v columns). Blocks are ordered by their first
// output row.
//
// # Provenance
//
// The fused file's metadata key MetaKey ("svdq_loras") holds a Provenance
// JSON object: the base file's SHA-256, header padding and (when the fused
// file's differs) quantization_config, the base rank of every touched
// layer and of every widened one, per fused LoRA its name, file SHA-256,
// strength, style and the logical rank range [lo, hi) it occupies in each
// layer, and the sidecar's file name and SHA-256. Ranges of one layer tile
// [base, rank) in fusion order; the columns past a W4A4 layer's rank, up
// to the file's one rank, are zeros. Version 1 records (before the
// sidecar) are still read: their reserved tensors are in the file itself.
package lora

// Package source opens a model checkpoint in the forms users download it
// and presents the diffusion model's tensors as a safetensors.Reader, with
// a description of what it did (Input), so that every command that reads
// a checkpoint (quantize's plan, check's reference, inspect) sees the same
// tensors under the same names:
//
//   - plain safetensors: a file, a sharded index or a diffusers folder
//     (safetensors.OpenCheckpoint), tensors as stored; FP8 tensors stay
//     FP8 here and are widened by the consumer;
//   - GGUF (formats/gguf): F32, F16 and BF16 tensors as stored; every
//     block-quantized tensor dequantized to F32 exactly as ggml does;
//   - all-in-one ComfyUI checkpoints: when tensors lie under the diffusion
//     model prefix "model.diffusion_model." and others lie outside it, only
//     the diffusion model is taken (prefix removed, as ComfyUI's loader
//     does) and the other components are listed (components.go);
//   - ComfyUI scaled FP8 (scaled.go): the marker tensor "scaled_fp8",
//     per-weight "X.scale_weight" (and "X.scale_input") as
//     comfyanonymous/ComfyUI writes and reads them, and its newer per-layer
//     form ("X.comfy_quant" with "X.weight_scale"): each FP8 weight is
//     dequantized to F32 as fp8 × scale in float32, the scale and marker
//     tensors are consumed, and a broken file (a scale without its weight,
//     an FP8 weight without its scale while the marker is present) is an
//     error naming both tensors.
//
// Tensors this package computes (dequantized) report their stored form
// through Input.Stored; their bytes are computed on each Bytes call (a few
// are cached) and must not be modified.
package source

// Package calib collects, merges, reads, writes and validates the
// activation statistics that SVDQuant's smoothing search and error measures
// need (SVDQuant, arXiv 2411.05007, §4: λ_j = max|X_j|^α / max|W_j|^β, and
// the calibration rows on which each layer's output error is measured).
//
// # File format svdq-calib/1 (the contract with the outside world)
//
// A calibration file is one safetensors file (any name; calib.safetensors by
// convention) whose __metadata__ holds "format": "svdq-calib/1". Other
// metadata keys are allowed and ignored. Every linear layer is keyed by its
// module name as the 16-bit checkpoint being quantized names it (for a
// diffusers FLUX.1 transformer "transformer_blocks.0.attn.to_q"; for a BFL or
// ComfyUI file "double_blocks.0.img_attn.qkv"), without any file prefix, and
// has these tensors, all little-endian:
//
//	<name>.input_absmax   F32            [K]     max |x_k| over every token seen
//	<name>.input_samples  F32, F16, BF16 [S, K]  S sampled input rows, 1 ≤ S ≤ 4096
//	<name>.input_count    I64            [1]     optional: tokens seen, S ≤ count ≤ 2⁵³
//
// K is the layer's in_features. A token is one row of the layer's input
// (batch × sequence flattened; every denoising step counts separately).
// input_absmax is taken over all tokens seen, not only over the samples, so
// for every sample |x_k| ≤ input_absmax_k (checked with the slack of one
// rounding of the samples' dtype). The samples should be a uniform random
// subset of the tokens seen (reservoir sampling, as Collector does), so
// that a layer's error measured on them estimates its error on the whole
// distribution and two files can be merged fairly. When input_count is
// absent the statistics stand for S tokens.
//
// A layer that reads a column range of another's input (FLUX single blocks:
// proj_out's first 3072 columns feed nunchaku's out_proj, the last 12288 its
// mlp_fc2) is stored once under the checkpoint's module name; readers take
// Stats.Cols.
//
// Rules a reader enforces (Open checks the header and input_count,
// File.Layer the other values); each violation is an error naming the file
// and the tensor:
//
//   - the metadata "format" is present and exactly "svdq-calib/1";
//   - every tensor name is <layer>.input_absmax, <layer>.input_samples or
//     <layer>.input_count with a non-empty layer name, and every layer has
//     both input_absmax and input_samples;
//   - dtypes and shapes as in the table, the same K in both tensors, K ≥ 1;
//   - 1 ≤ S ≤ 4096 (MaxSamples). Files with more rows are rejected rather
//     than silently subsampled: the writer must choose its sample;
//   - every value finite, input_absmax ≥ 0, S ≤ input_count ≤ MaxCount
//     (2⁵³: exact as float64, and the counts of 1024 files add up without
//     overflow; merging refuses a sum past it), every sample within
//     input_absmax.
//
// # Collecting
//
// Collector.Observe takes a layer's input rows as a model runs. It keeps the
// per-channel absolute maximum, the token count and a uniform sample of at
// most MaxSamples rows per layer (reservoir sampling, Li's Algorithm L),
// with one PCG stream per layer seeded from (seed, layer name), so the
// result depends only on the seed and on the sequence of rows each layer
// sees, not on how they were batched or on other layers.
//
// # Merging
//
// Merge combines the statistics of two disjoint token sets: absmax is the
// elementwise maximum, counts add, and the samples are a fair merge — the
// number taken from each side is drawn from the hypergeometric distribution
// of a uniform subset of the union (using the counts), then that many rows
// are drawn without replacement from each side, so every token of the union
// is kept with the same probability. MergeFiles does this layer by layer
// for several files.
package calib

// Package model runs whole-checkpoint jobs: quantize a 16-bit checkpoint to
// an SVDQuant file nunchaku loads, check a quantized file against its
// reference on calibration rows (with the paper's baselines beside it), and
// unpack a quantized file into its logical tensors.
//
// A job walks a preset's plan (formats/preset) layer by layer: it reads the
// layer's source tensors lazily from the memory-mapped checkpoint
// (formats/safetensors), its calibration statistics (calib), runs the layer
// pipeline (quant), packs the result (formats/nunchaku) and writes it
// through the streaming writer as soon as it is done, so peak memory is a
// few layers (one per worker), not the model. Tensors that stay 16-bit are
// copied byte for byte. Output is deterministic: every random choice is
// seeded from the layer name, never from the worker that ran it.
//
// Long runs (docs/long-runs.md): every finished layer is also journaled as
// a record (record.go) in a work directory beside the output, so a killed
// run resumes (journal.go); --shard deals the units to N parts by
// estimated cost (shard.go) and Merge joins the parts (merge.go). Every
// output, fresh, resumed or merged, is written by one writer from the
// plan's outline (outline.go), which is what makes them byte-identical.
//
// The package prints nothing: progress is reported through callbacks, and
// the caller (cmd/svdq) decides what reaches the terminal.
package model

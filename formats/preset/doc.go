// Package preset knows the model families svdq quantizes: for each, which
// tensors of a checkpoint become which SVDQuant layers (W4A4, or W4A16 for
// adaLN modulation), which stay 16-bit and why, under which names nunchaku
// loads them, and a skeleton of the family's tensors for synthetic
// checkpoints.
//
// One file per family declares its tables (layer declarations with the
// diffusers and, for FLUX, the original BFL module names; tensors kept
// 16-bit; the outside-the-blocks map), after ollama's convert_*.go. Sources:
// the diffusers model classes for names and shapes (spec models.md);
// nunchaku's loaders for the output names (src/FluxModel.cpp,
// src/SanaModel.cpp, nunchaku/models/transformers/transformer_qwenimage.py,
// nunchaku/models/unets/unet_sdxl.py) and deepcompressor's
// backend/nunchaku/convert.py for how FLUX tensors map onto them. Widths and
// block counts are always read from the file, so narrower or shallower
// checkpoints of a family plan the same way.
//
// A Plan lists Layers (each assembled from row blocks of file tensors, see
// Source), Kept tensors, the diffusers config and the nunchaku model class;
// every tensor of the file is accounted for, or Plan fails naming the
// tensors it does not know. Plan.Resolve maps a module name in any naming
// (diffusers, BFL, kohya-flattened) to the rows and columns of the output
// it feeds, for LoRA fusion.
//
// The package reads only tensor names and shapes (the Table interface); it
// imports nothing of this module.
package preset

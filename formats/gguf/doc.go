// Package gguf reads GGUF files (the ggml/llama.cpp single-file model
// format, as city96's ComfyUI-GGUF writes FLUX and Qwen-Image diffusion
// models) and dequantizes their tensors to float32 exactly as ggml's
// reference dequantizers do. Of this module it imports only
// formats/safetensors, for its Error type.
//
// # Layout (GGUF version 2 and 3)
//
// From llama.cpp ggml/include/gguf.h (ggml-org/llama.cpp@0692415a):
//
//	"GGUF"                 4-byte magic
//	version                uint32 (2 or 3; version 1's 32-bit counts are refused)
//	tensor count           uint64
//	key-value count        uint64
//	key-value pairs        key: string; type: uint32; value (an array is
//	                       element type uint32, count uint64, elements)
//	tensor infos           name: string; n_dims: uint32; ne[0..n_dims): uint64
//	                       (ne[0] is the innermost, contiguous dimension);
//	                       ggml type: uint32; offset: uint64 relative to the
//	                       data section
//	padding                to general.alignment (uint32; default 32)
//	data section           the tensors, each at its offset
//
// Strings are a uint64 length and that many bytes, without a terminator;
// everything is little-endian. A tensor's torch shape is ne reversed
// (row-major [ne[n-1], …, ne[0]]), unless city96's converter recorded the
// original shape in the key "comfy.gguf.orig_shape.NAME" (an INT32 array;
// city96/ComfyUI-GGUF@795e4515:loader.py get_orig_shape), which then wins.
//
// # Block formats
//
// Each type stores rows of ne[0] elements in blocks of BlockSize elements,
// TypeSize bytes each (ggml/src/ggml-common.h block_* structs; the sizes
// in types.go are checked in a test). Dequantization follows llama.cpp's
// reference functions (ggml/src/ggml-quants.c dequantize_row_q8_0,
// _q4_0, _q4_1, _q5_0, _q5_1, _q2_K, _q3_K, _q4_K, _q5_K, _q6_K at
// ggml-org/llama.cpp@01243c58), written here from their definitions: every
// value is the float32 product of the (widened) fp16 scales and the integer
// code, in the same order of operations, so the result is bit-identical to
// ggml's.
//
// # Validation
//
// Open rejects, with an *Error naming the file, the tensor and the byte
// offset: a bad magic or version; counts, strings or arrays longer than
// the rest of the file (checked before anything is allocated); an unknown
// key-value type; a duplicate key or tensor name; more than 4 dimensions,
// a negative dimension or an element count that overflows; an unknown
// ggml type; a row length ne[0] not a multiple of the type's block size;
// an offset not a multiple of the alignment, or data past the end of the
// file; an orig_shape that is not an INT32 array or holds a different
// number of elements.
package gguf

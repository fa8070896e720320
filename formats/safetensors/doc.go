// Package safetensors reads and writes the safetensors tensor file format
// (https://github.com/huggingface/safetensors), strictly and lazily. It
// imports nothing of this module and can be reused on its own.
//
// # Layout
//
//	bytes [0, 8)        N, unsigned 64-bit little-endian: the header length
//	bytes [8, 8+N)      header: a UTF-8 JSON object, padded with spaces
//	bytes [8+N, EOF)    data section: the tensors' raw little-endian bytes
//
// The header maps each tensor name to
// {"dtype": "F32", "shape": [out, in], "data_offsets": [begin, end]}, the
// offsets being relative to the start of the data section; the optional key
// "__metadata__" holds a string→string object.
//
// # Validation
//
// Open rejects, with an *Error naming the file, the tensor and the byte
// offset:
//
//   - a file shorter than 8 bytes;
//   - N > MaxHeaderSize (100 MiB) or 8+N past the end of the file, checked
//     before anything of size N is allocated;
//   - a header that is empty, not valid UTF-8, not valid JSON, not a JSON
//     object, or followed by anything but JSON whitespace;
//   - a duplicate tensor name (also a duplicate "__metadata__", or a
//     duplicate field inside one entry) — encoding/json would silently keep
//     the last one, so the header is walked token by token;
//   - an entry that is not an object or lacks dtype, shape or data_offsets;
//     a dtype outside DTypes; a shape that is not an array of non-negative
//     integers (2.0, 2e3, "2" are not integers) or whose byte size,
//     multiplied left to right, overflows int64; data_offsets that are not
//     two such integers, with begin > end or end past the data section;
//     end − begin ≠ product(shape) × dtype size;
//   - "__metadata__" that is not an object of string values, or has a
//     duplicate key;
//   - tensors that do not tile the data section exactly. Sorted by offsets,
//     each tensor must begin where the previous one ended, the first at 0,
//     and the last must end at the end of the file. Overlaps, gaps and
//     trailing bytes are all rejected, as the reference Rust implementation
//     does (its MetadataIncompleteBuffer and InvalidOffset errors), so that
//     every byte of an accepted file belongs to exactly one tensor.
//
// Unknown fields inside an entry are ignored, as in the reference
// implementation. A scalar has shape [] and one element; a tensor with a
// zero dimension has begin = end. The reference caps N at 100,000,000
// bytes, slightly below MaxHeaderSize.
//
// # Reading
//
// Open reads only bytes [0, 8+N). The data section is memory-mapped
// read-only on the first Bytes call, so pages come from disk only when a
// tensor's bytes are touched. OpenCheckpoint also opens sharded checkpoints
// (*.safetensors.index.json), diffusers folders and directories holding one
// file, behind the same Reader interface. OpenBytes applies the same checks
// to a file held in memory (the fuzz targets of parsers built on Reader use
// it, so that no input touches the file system).
//
// # Writing
//
// Create computes the whole layout first, then tensors are written in any
// order at their final offsets, and Close writes the header and renames a
// temporary file into place; see Writer. The output follows the rules
// above, so every file this package writes it also reads. The temporary
// file is named .NAME.tmp-PID-DIGITS next to NAME (ParseTemp, TempFiles
// find those a killed process left); AbortAll removes those of every
// open Writer, for a signal handler.
package safetensors

package nunchaku

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// The integrity hash of a quantized layer (LayerMeta.SHA256): a SHA-256
// over the layer's packed tensors as the file stores them, so that a byte
// changed after quantization (a bad disk, a truncated copy, an edit) is
// found from the file alone. Running the layer cannot find it: the GPU and
// the CPU emulation read the same corrupted bytes and agree.
//
// The digest covers, for each suffix of HashSuffixes in that order whose
// tensor <layer>.<suffix> exists (under its C++ name or its Python alias:
// proj_down is found for lora_down, and the record names it lora_down, so
// renaming a layer's tensors for another loader keeps its hash), one record
//
//	<suffix> SP <dtype> SP [<d0>,<d1>,…] SP <byte length> LF   (ASCII, decimal)
//	<the tensor's bytes as stored>
//
// e.g. "qweight I8 [3072,1536] 4718592\n" followed by 4718592 bytes; a
// scalar is "[]". Absent suffixes contribute nothing; the layer's name is
// not part of the digest. In Python:
//
//	ALIAS = {"smooth": "smooth_factor", "smooth_orig": "smooth_factor_orig",
//	         "lora_down": "proj_down", "lora_up": "proj_up"}
//	h = hashlib.sha256()
//	for s in SUFFIXES:
//	    name = next((n for n in (s, ALIAS.get(s)) if n and f"{layer}.{n}" in tensors), None)
//	    if name:
//	        dtype, shape, data = tensors[f"{layer}.{name}"]
//	        h.update(f"{s} {dtype} [{','.join(map(str, shape))}] {len(data)}\n".encode())
//	        h.update(data)
//	sha256 = h.hexdigest()
//
// The value is 64 lowercase hex digits, always the same length, so that a
// writer can size the file header with a placeholder hash (PlaceholderHash)
// before the layer is packed.

// HashSuffixes lists, in digest order, the tensors LayerHash covers: every
// tensor a W4A4 or W4A16 layer may have, including the W4A16 LoRA branch
// that fuse-lora adds, then a W4Linear's scales and scaled_zeros (last, so
// that the digests of the other kinds did not change when they were added).
var HashSuffixes = []string{SuffixQWeight, SuffixWScales, SuffixWTScale, SuffixWCScales, SuffixWZeros,
	SuffixBias, SuffixSmooth, SuffixSmoothOrig, SuffixLoraDown, SuffixLoraUp, SuffixScales, SuffixScaledZeros}

// HashLen is the length of a LayerMeta.SHA256 value (hex digits).
const HashLen = 2 * sha256.Size

// PlaceholderHash has the length of every layer hash: a writer marshals
// the metadata with it to size the header before the layers are hashed.
// It is all zeros, well formed for ParseMeta but the digest of no layer in
// practice: a writer must replace it before closing the file.
const PlaceholderHash = "0000000000000000000000000000000000000000000000000000000000000000"

// LayerHash returns the hex SHA-256 of a layer's packed tensors served by
// get (see the digest definition above). get is called once per suffix of
// HashSuffixes; data is only read.
func LayerHash(get Getter) string {
	h := sha256.New()
	var line []byte
	for _, s := range HashSuffixes {
		_, dt, shape, data, ok := lookup(get, s)
		if !ok {
			continue
		}
		line = append(line[:0], s...)
		line = append(line, ' ')
		line = append(line, dt...)
		line = append(line, ' ', '[')
		for i, d := range shape {
			if i > 0 {
				line = append(line, ',')
			}
			line = strconv.AppendInt(line, d, 10)
		}
		line = append(line, ']', ' ')
		line = strconv.AppendInt(line, int64(len(data)), 10)
		line = append(line, '\n')
		h.Write(line)
		h.Write(data)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// HashTensors is LayerHash over a packer's output (PackW4A4, PackW4A16).
func HashTensors(ts []Tensor) string { return LayerHash(MapGetter(ts)) }

// checkHash validates a recorded hash: "" (none) or HashLen lowercase hex
// digits.
func checkHash(s string) error {
	if s == "" {
		return nil
	}
	if len(s) != HashLen {
		return fmt.Errorf("sha256 %q is not %d hex digits", s, HashLen)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return fmt.Errorf("sha256 %q is not %d lowercase hex digits", s, HashLen)
		}
	}
	return nil
}

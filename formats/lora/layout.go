package lora

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant"
)

// rankTile is the multiple the stored rank of a branch is padded to.
const rankTile = 16

// PadRank rounds a logical rank up to the stored multiple of 16.
func PadRank(r int) int { return (r + rankTile - 1) / rankTile * rankTile }

// The W4A16 branch (nunchaku GEMV_AWQ, src/Linear.cpp: "lora layout is
// different from w4a4"): two unpacked row-major tensors in the model dtype,
//
//	lora_down  [Rp, K]   rows r < R: Down[r, :], rows R..Rp-1 zero
//	lora_up    [N,  Rp]  row j·c + s: Up[s·m + j, :] (m = N/c), columns ≥ R zero
//
// with Rp = R rounded up to 16 and the same output interleave PackW4A16
// applies to the weight (c chunks; nunchaku's reorder_adanorm_lora_up). The
// engine adds (x·lora_downᵀ)·lora_upᵀ to the layer's output.

// PackW4A16Branch returns the lora_down and lora_up tensors of a W4A16
// layer's branch (see above). It returns an error when a value is not
// exactly of type dt or chunks does not divide N.
func PackW4A16Branch(b *Branch, chunks int, dt quant.Float16) ([]nunchaku.Tensor, error) {
	b.check("PackW4A16Branch")
	if chunks < 1 || b.N%chunks != 0 {
		return nil, fmt.Errorf("lora: W4A16 branch: N=%d does not split into %d chunks", b.N, chunks)
	}
	if err := representable(b, dt); err != nil {
		return nil, err
	}
	rp := PadRank(b.R)
	down := make([]byte, 2*rp*b.K)
	copy(down, dt.Encode(b.Down))
	up := make([]byte, 2*b.N*rp)
	m := b.N / chunks
	for r := 0; r < b.N; r++ {
		src := (r%chunks)*m + r/chunks
		copy(up[2*r*rp:], dt.Encode(b.Up[src*b.R:(src+1)*b.R]))
	}
	return []nunchaku.Tensor{
		{Suffix: nunchaku.SuffixLoraDown, DType: dt.String(), Shape: []int64{int64(rp), int64(b.K)}, Data: down},
		{Suffix: nunchaku.SuffixLoraUp, DType: dt.String(), Shape: []int64{int64(b.N), int64(rp)}, Data: up},
	}, nil
}

// UnpackW4A16Branch reads the rank-r branch of an [n, k] W4A16 layer with
// the given chunks through get (the inverse of PackW4A16Branch). Absent
// tensors mean a rank-0 branch, and then r must be 0. Errors name the
// layer, the tensor and the mismatch; the padding is not checked.
func UnpackW4A16Branch(get nunchaku.Getter, layer string, n, k, chunks, r int) (*Branch, error) {
	ddt, dsh, dd, dok := get(nunchaku.SuffixLoraDown)
	udt, ush, ud, uok := get(nunchaku.SuffixLoraUp)
	b := NewBranch(n, k)
	if !dok && !uok {
		if r != 0 {
			return nil, fmt.Errorf("%s: no lora_down/lora_up, but the branch has rank %d", layer, r)
		}
		return b, nil
	}
	if dok != uok {
		return nil, fmt.Errorf("%s: lora_down present = %v but lora_up present = %v", layer, dok, uok)
	}
	dt, err := float16(ddt)
	if err != nil || udt != ddt {
		return nil, fmt.Errorf("%s.lora_down/lora_up: dtypes %s/%s, want BF16 or F16 (both the same)", layer, ddt, udt)
	}
	if chunks < 1 || n%chunks != 0 {
		return nil, fmt.Errorf("%s: N=%d does not split into %d chunks", layer, n, chunks)
	}
	rp := PadRank(r)
	if len(dsh) != 2 || dsh[0] != int64(rp) || dsh[1] != int64(k) || len(dd) != 2*rp*k {
		return nil, fmt.Errorf("%s.lora_down: shape %v (%d bytes), want [%d %d] for rank %d", layer, dsh, len(dd), rp, k, r)
	}
	if len(ush) != 2 || ush[0] != int64(n) || ush[1] != int64(rp) || len(ud) != 2*n*rp {
		return nil, fmt.Errorf("%s.lora_up: shape %v (%d bytes), want [%d %d] for rank %d", layer, ush, len(ud), n, rp, r)
	}
	b.R = r
	b.Down = make([]float32, r*k)
	if err := quant.Decode(b.Down, dt.String(), dd[:2*r*k]); err != nil {
		return nil, fmt.Errorf("%s.lora_down: %v", layer, err)
	}
	b.Up = make([]float32, n*r)
	m := n / chunks
	for row := 0; row < n; row++ {
		src := (row%chunks)*m + row/chunks
		if err := quant.Decode(b.Up[src*r:(src+1)*r], dt.String(), ud[2*row*rp:2*(row*rp+r)]); err != nil {
			return nil, fmt.Errorf("%s.lora_up: %v", layer, err)
		}
	}
	return b, nil
}

// representable returns an error naming the first value of b that is not
// exactly of type dt (NaN and ±Inf included: a branch must stay finite).
func representable(b *Branch, dt quant.Float16) error {
	for _, f := range []struct {
		v    []float32
		name string
		cols int
	}{{b.Down, "down", b.K}, {b.Up, "up", max(b.R, 1)}} {
		for i, v := range f.v {
			if v != v || math.IsInf(float64(v), 0) || dt.Round(v) != v {
				return fmt.Errorf("lora: branch %s[%d, %d] = %v is not a finite %v value", f.name, i/f.cols, i%f.cols, v, dt)
			}
		}
	}
	return nil
}

// Reserved tensors of a kept (16-bit) tensor t that LoRAs were merged into:
// its base bytes and the factors of every fused LoRA, F32, logical rank
// (no padding). fuse-lora writes them to the sidecar file (SidecarSuffix),
// never into the fused checkpoint: nunchaku's strict loaders (FLUX V2,
// Qwen-Image, SDXL, Z-Image, ComfyUI Qwen-Image) reject unknown keys, and
// nunchaku V1's runtime LoRA reloads the 16-bit part strictly
// (_update_unquantized_part_lora_params). Files fused by older svdq
// (provenance version 1) carry them in their own tensor table; fuse-lora
// still reads those.
const ReservedPrefix = "svdq_lora."

// SidecarSuffix is appended to a fused file's path to name its sidecar:
// "flux-style.safetensors" → "flux-style.safetensors.lora-base". The name
// keeps the fused file's whole name, so the two sort together, and does not
// end in .safetensors, so that model pickers listing *.safetensors
// (ComfyUI's folder_paths, used by ComfyUI-nunchaku's DiT loader nodes) do
// not offer it as a model. It is a safetensors file all the same.
const SidecarSuffix = ".lora-base"

// SidecarMetaKey is the sidecar's metadata key; its value is the base
// checkpoint's SHA-256 (Base.SHA256), which marks the file as a sidecar
// and says which base it belongs to.
const SidecarMetaKey = "svdq_lora_sidecar"

// NarrowRank is the inverse of nunchaku.PadRank: it returns a packed
// lora_down [Kp, R] or lora_up [Np, R] tensor cut to rank r (a multiple of
// 16, at most R), and an error when a dropped column is not zero (the
// columns PadRank added are). t is not modified.
func NarrowRank(t nunchaku.Tensor, r int) (nunchaku.Tensor, error) {
	if len(t.Shape) != 2 || t.Shape[0]%rankTile != 0 || t.Shape[1]%rankTile != 0 || (t.DType != "BF16" && t.DType != "F16") {
		return nunchaku.Tensor{}, fmt.Errorf("lora: %s: %s %v is not a packed 16-bit low-rank tensor", t.Suffix, t.DType, t.Shape)
	}
	outer, rt := int(t.Shape[0])/rankTile, int(t.Shape[1])/rankTile
	if r%rankTile != 0 || r < 0 || r > rt*rankTile {
		return nunchaku.Tensor{}, fmt.Errorf("lora: %s: cannot narrow rank %d to %d", t.Suffix, rt*rankTile, r)
	}
	const tile = rankTile * rankTile * 2 // bytes
	if len(t.Data) != outer*rt*tile {
		return nunchaku.Tensor{}, fmt.Errorf("lora: %s: %d bytes for %v", t.Suffix, len(t.Data), t.Shape)
	}
	nt := r / rankTile
	out := make([]byte, 0, outer*nt*tile)
	for o := 0; o < outer; o++ {
		row := t.Data[o*rt*tile : (o+1)*rt*tile]
		for i, b := range row[nt*tile:] {
			if b != 0 {
				at := o*rt*tile + nt*tile + i
				return nunchaku.Tensor{}, fmt.Errorf("lora: %s: rank column past %d is not zero (byte %d)", t.Suffix, r, at)
			}
		}
		out = append(out, row[:nt*tile]...)
	}
	return nunchaku.Tensor{Suffix: t.Suffix, DType: t.DType, Shape: []int64{t.Shape[0], int64(r)}, Data: out}, nil
}

// ReservedBase, ReservedDown and ReservedUp name the reserved tensors of
// kept tensor t: the base tensor (same dtype and shape as t), Down F32
// [R, K] and Up F32 [N, R].
func ReservedBase(t string) string { return ReservedPrefix + "base." + t }
func ReservedDown(t string) string { return ReservedPrefix + "down." + t }
func ReservedUp(t string) string   { return ReservedPrefix + "up." + t }

// ReservedVector names the ops of 1-D tensor t (provenance KindVector):
// F32 [2·ops, stored length], per op a mask row (1: replace) and a value
// row, in stored order (VectorOp.Stored), in LoRA order. Its base bytes
// are ReservedBase(t).
func ReservedVector(t string) string { return ReservedPrefix + "vec." + t }

// EncodeF32 returns v as little-endian F32 bytes.
func EncodeF32(v []float32) []byte {
	out := make([]byte, 4*len(v))
	for i, f := range v {
		binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(f))
	}
	return out
}

package nunchaku

import "fmt"

// PadRank returns a packed low-rank tensor — lora_down stored [Kp, R] or
// lora_up stored [Np, R], 16-bit — with its rank widened to r by zero
// columns. Both pack 16×16 tiles with the rank tiles inner (lowrankIndex),
// and a tile's inside order does not depend on the rank, so widening
// appends r/16 − R/16 zero tiles after the R/16 tiles of every outer tile:
// the branch computes the same values, exactly. r must be a multiple of 16
// and at least R; t is not modified.
func PadRank(t Tensor, r int) (Tensor, error) {
	if len(t.Shape) != 2 || t.Shape[0]%16 != 0 || t.Shape[1]%16 != 0 || dtypeSize(t.DType) != 2 {
		return Tensor{}, fmt.Errorf("nunchaku: %s: %s %v is not a packed 16-bit low-rank tensor", t.Suffix, t.DType, t.Shape)
	}
	outer, rt := int(t.Shape[0])/16, int(t.Shape[1])/16
	if r%16 != 0 || r < rt*16 {
		return Tensor{}, fmt.Errorf("nunchaku: %s: cannot widen rank %d to %d", t.Suffix, rt*16, r)
	}
	const tile = 16 * 16 * 2 // bytes
	if len(t.Data) != outer*rt*tile {
		return Tensor{}, fmt.Errorf("nunchaku: %s: %d bytes for %v", t.Suffix, len(t.Data), t.Shape)
	}
	nt := r / 16
	out := make([]byte, outer*nt*tile)
	for o := 0; o < outer; o++ {
		copy(out[o*nt*tile:], t.Data[o*rt*tile:(o+1)*rt*tile])
	}
	return Tensor{Suffix: t.Suffix, DType: t.DType, Shape: []int64{t.Shape[0], int64(r)}, Data: out}, nil
}

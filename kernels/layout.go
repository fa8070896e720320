package kernels

// Index functions of the packed nunchaku layouts (spec: nunchaku-format.md).
// They mirror the device functions in cuda/common.cuh one for one; Logical
// (unpack.go) decodes packed bytes through them, and CI compares that with
// the layer formats/nunchaku packed, checking without a GPU the index
// arithmetic the kernels use.

// roundUp returns x rounded up to a multiple of m.
func roundUp(x, m int) int { return (x + m - 1) / m * m }

// vec1dPos is the position of element i of a packed 1-D vector (bias,
// smooth, wcscales): within each 128-chunk, element x·16+y·8+c·2+d is stored
// at ((x·4 + c)·2 + y)·2 + d.
func vec1dPos(i int) int {
	r := i & 127
	x, y, c, d := r>>4, (r>>3)&1, (r>>1)&3, r&1
	return i&^127 + ((x*4+c)*2+y)*2 + d
}

// qweightNibble returns the 4-bit code of W[n, k] from packed qweight bytes
// of a layer with padded input size kpad. Split n = nt·128 + p·16 + a·8 + g
// and k = kt·64 + b·32 + c·8 + e; uint32 words are ordered nt, kt, p, g, c,
// a, b and value e sits in bits 4e..4e+3.
func qweightNibble(qw []byte, n, k, kpad int) uint8 {
	nt, r := n>>7, n&127
	p, a, g := r>>4, (r>>3)&1, r&7
	kt, s := k>>6, k&63
	b, c, e := s>>5, (s>>3)&3, s&7
	word := (((((nt*(kpad>>6)+kt)*8+p)*8+g)*4+c)*2+a)*2 + b
	byt := qw[word*4+(e>>1)]
	if e&1 == 1 {
		return byt >> 4
	}
	return byt & 15
}

// wscaleInt4Pos is the element position of the INT4 scale of (n, group of 64)
// in packed wscales: order nt, group, then the 1-D permutation of n's
// position within its 128-chunk.
func wscaleInt4Pos(n, grp, kpad int) int {
	return ((n>>7)*(kpad>>6)+grp)*128 + vec1dPos(n&127)
}

// wscaleFP4Pos is the byte position of the NVFP4 E4M3 scale of (n, group
// of 16): n = nt·128 + s·32 + x·8 + y, group = kt·4 + j, order nt, kt, y, x,
// s, j.
func wscaleFP4Pos(n, grp, kpad int) int {
	r := n & 127
	s, x, y := r>>5, (r>>3)&3, r&7
	kt, j := grp>>2, grp&3
	return (((((n>>7)*(kpad>>6)+kt)*8+y)*4+x)*4+s)*4 + j
}

// loraPos is the element position of (row, col) inside 16×16 tile number
// tile of a packed low-rank matrix: row = a·8 + g, col = b·8 + c·2 + e,
// order g, c, a, b, e. For lora_up ([N, R], rows n) tile = (n/16)·(R/16) +
// r/16; for lora_down (logical [R, K], rows r) tile = (k/16)·(R/16) + r/16.
func loraPos(tile, row, col int) int {
	a, g := (row>>3)&1, row&7
	b, c, e := (col>>3)&1, (col>>1)&3, col&1
	return tile*256 + (((g*4+c)*2+a)*2+b)*2 + e
}

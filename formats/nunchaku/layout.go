package nunchaku

import "encoding/binary"

// Index arithmetic of the nunchaku layouts. Each function maps a logical
// index of the padded array to its position in the packed buffer; packing
// writes through it and unpacking reads through it, so the two are exact
// inverses by construction. The tests check every mapping against tables
// built by walking the memory order the spec states.

// Tile sizes of the W4A4 layout.
const (
	tileN    = 128 // N and K are padded to multiples of this
	tileK    = 128
	rankTile = 16 // R is padded to a multiple of this
)

// qweightRowBase is the byte offset contributed by row n of a W4A4 qweight
// whose padded width is kp: with n = nt·128 + p·16 + a·8 + g the uint32
// word index gains nt·(kp/64)·1024 + p·128 + g·16 + a·2 (memory order
// nt,kt,p,g,c,a,b; 1024 words per 128×64 tile).
func qweightRowBase(n, kp int) int {
	nt, p, a, g := n>>7, (n>>4)&7, (n>>3)&1, n&7
	return 4 * (nt*(kp/64)*1024 + p*128 + g*16 + a*2)
}

// qweightColOff is the byte offset and bit shift contributed by column k:
// with k = kt·64 + b·32 + c·8 + e the word index gains kt·1024 + c·4 + b and
// value e sits in bits 4e..4e+3 of the little-endian word, that is in byte
// e/2 at shift 4·(e mod 2).
func qweightColOff(k int) (off int, shift uint) {
	kt, b, c, e := k>>6, (k>>5)&1, (k>>3)&3, k&7
	return 4*(kt*1024+c*4+b) + (e >> 1), uint(e&1) * 4
}

// packNibbles writes the low 4 bits of the [n, k] row-major codes into dst,
// the zeroed qweight buffer of the padded [np, kp] matrix (np·kp/2 bytes).
// Eight consecutive k (e = 0..7) form one word, so full words are written
// at once.
func packNibbles(dst []byte, codes []int8, n, k, np, kp int) {
	for i := 0; i < n; i++ {
		base := qweightRowBase(i, kp)
		row := codes[i*k : (i+1)*k]
		j := 0
		for ; j+8 <= k; j += 8 {
			var w uint32
			for e, c := range row[j : j+8] {
				w |= uint32(c&0xF) << (4 * e)
			}
			off, _ := qweightColOff(j)
			binary.LittleEndian.PutUint32(dst[base+off:], w)
		}
		for ; j < k; j++ {
			off, sh := qweightColOff(j)
			dst[base+off] |= (byte(row[j]) & 0xF) << sh
		}
	}
}

// unpackNibbles reads the [n, k] codes of a packed [np, kp] qweight into dst;
// signed sign-extends the nibbles (INT4, -8..7), otherwise they are 0..15.
func unpackNibbles(dst []int8, src []byte, n, k, np, kp int, signed bool) {
	ext := uint32(0)
	if signed {
		ext = 1
	}
	for i := 0; i < n; i++ {
		base := qweightRowBase(i, kp)
		row := dst[i*k : (i+1)*k]
		for j0 := 0; j0 < k; j0 += 8 {
			off, _ := qweightColOff(j0)
			w := binary.LittleEndian.Uint32(src[base+off:])
			for e := 0; e < 8 && j0+e < k; e++ {
				v := w >> (4 * e) & 0xF
				// sign-extend a nibble ≥ 8 when signed: v − 16·(bit 3).
				row[j0+e] = int8(v) - int8(16*(v>>3&ext))
			}
		}
	}
}

// scaleIndex is the element index of (n, grp) in a packed group-scale array
// of the padded [np, groups] INT4 scales (stored view [groups, np]); with
// groups = 1 it is the layout of the 1-D vectors (bias, smooth). With
// n = nt·128 + x·16 + y·8 + c·2 + d the memory order is nt,grp,x,c,y,d.
func scaleIndex(n, grp, groups int) int {
	nt, x, y, c, d := n>>7, (n>>4)&7, (n>>3)&1, (n>>1)&3, n&1
	return (nt*groups+grp)*128 + x*16 + c*4 + y*2 + d
}

// microIndex is the element index of (n, grp) in packed NVFP4 micro-scales
// of the padded [np, groups] array (groups a multiple of 4; stored view
// [groups, np]). With n = nt·128 + s·32 + x·8 + y and grp = kt·4 + j the
// memory order is nt,kt,y,x,s,j.
func microIndex(n, grp, groups int) int {
	nt, s, x, y := n>>7, (n>>5)&3, (n>>3)&3, n&7
	kt, j := grp>>2, grp&3
	return (nt*(groups/4)+kt)*512 + y*64 + x*16 + s*4 + j
}

// lowrankIndex is the element index of (row, col) of a padded [rowsP, colsP]
// low-rank matrix packed in 16×16 tiles: down (logical [R, K]) orders tiles
// column-tile outer, row-tile inner; up (logical [N, R]) row-tile outer,
// column-tile inner. Inside a tile, row = a·8 + g and col = b·8 + c·2 + e
// are stored in order g,c,a,b,e.
func lowrankIndex(row, col, rowsP, colsP int, down bool) int {
	rt, ct := row>>4, col>>4
	var tile int
	if down {
		tile = ct*(rowsP/16) + rt
	} else {
		tile = rt*(colsP/16) + ct
	}
	a, g := (row>>3)&1, row&7
	b, c, e := (col>>3)&1, (col>>1)&3, col&1
	return tile*256 + g*32 + c*8 + a*4 + b*2 + e
}

// W4A16 layout (deepcompressor backend/tinychat pack_w4).

// w4a16Offset is the byte offset and bit shift of code (n, k) of an [N, K]
// W4A16 weight (K a multiple of 64, N of 4). In a row, the 32 codes
// q[0..31] of block kb form words w = kb·8 + j holding q[j + 8i] in bits
// 4i..4i+3; the [N, K/4] word matrix is split into rows 4t+u and 16-word
// column chunks and stored in order t, chunk, u, word, each word 16-bit
// little-endian.
func w4a16Offset(n, k, kdim int) (off int, shift uint) {
	t, u := n>>2, n&3
	kb, r := k>>5, k&31
	i, j := r>>3, r&7
	w := kb*8 + j           // word column in the row
	chunk, wi := w>>4, w&15 // 16-word chunk
	idx := ((t*(kdim/64)+chunk)*4+u)*16 + wi
	return 2*idx + (i >> 1), uint(i&1) * 4
}

// w4a16ScaleRows is deepcompressor's row count G' of the stored wscales /
// wzeros of an in-features-k W4A16 layer: k/64 rounded up to a multiple of
// 16 (ceil_num_groups, backend/tinychat/utils.py). nunchaku's loaders
// allocate ceil(k/64) rows (src/Linear.cpp GEMV_AWQ; nunchaku/models/linear.py
// AWQW4A16Linear), and the loaders decide (formats/engine): PackW4A16 writes
// k/64 rows; unpacking accepts either count, so deepcompressor's files read.
func w4a16ScaleRows(k int) int { return ceilTo(k/64, 16) }

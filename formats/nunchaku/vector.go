package nunchaku

// W4A4VectorIndex returns the element index of logical row n in a packed
// W4A4 1-D vector (bias, smooth): the INT4 scale order with one group
// (scaleIndex), as PackW4A4 stores it.
func W4A4VectorIndex(n int) int { return scaleIndex(n, 0, 1) }

// W4A16Row returns the checkpoint row stored at packed row r of an n-row
// W4A16 layer with c output chunks (c ≤ 1: no interleave), as PackW4A16
// stores its rows and bias.
func W4A16Row(r, n, c int) int { return interleaveSrc(r, n, max(c, 1)) }

package lora

import (
	"fmt"

	"github.com/svdq/svdq/quant"
)

// Branch is a low-rank term Up·Down of a layer in logical, row-major form:
// Down [R, K] multiplies the layer's raw input, Up [N, R] gives its output
// rows (checkpoint row order, not interleaved).
type Branch struct {
	N, K, R  int
	Down, Up []float32
}

// NewBranch returns an empty (rank-0) branch of an [n, k] layer.
func NewBranch(n, k int) *Branch {
	if n <= 0 || k <= 0 {
		panic(fmt.Sprintf("lora: NewBranch: bad shape [%d %d]", n, k))
	}
	return &Branch{N: n, K: k}
}

func (b *Branch) check(fn string) {
	if b.N <= 0 || b.K <= 0 || b.R < 0 || len(b.Down) != b.R*b.K || len(b.Up) != b.N*b.R {
		panic(fmt.Sprintf("lora: Branch.%s: inconsistent branch N=%d K=%d R=%d, down %d, up %d values",
			fn, b.N, b.K, b.R, len(b.Down), len(b.Up)))
	}
}

// Append concatenates c after b along the rank: Down ← [Down; c.Down],
// Up ← [Up | c.Up]. It panics when the shapes differ.
func (b *Branch) Append(c *Branch) {
	b.check("Append")
	c.check("Append")
	if c.N != b.N || c.K != b.K {
		panic(fmt.Sprintf("lora: Branch.Append: [%d %d] onto [%d %d]", c.N, c.K, b.N, b.K))
	}
	r := b.R + c.R
	up := make([]float32, b.N*r)
	for n := 0; n < b.N; n++ {
		copy(up[n*r:], b.Up[n*b.R:(n+1)*b.R])
		copy(up[n*r+b.R:], c.Up[n*c.R:(n+1)*c.R])
	}
	b.Down = append(b.Down, c.Down...)
	b.Up, b.R = up, r
}

// Drop removes rank columns [lo, hi) from the branch. It panics when the
// range is not inside [0, R].
func (b *Branch) Drop(lo, hi int) {
	b.check("Drop")
	if lo < 0 || hi < lo || hi > b.R {
		panic(fmt.Sprintf("lora: Branch.Drop: range [%d, %d) outside rank %d", lo, hi, b.R))
	}
	d := hi - lo
	if d == 0 {
		return
	}
	r := b.R - d
	down := make([]float32, 0, r*b.K)
	down = append(down, b.Down[:lo*b.K]...)
	down = append(down, b.Down[hi*b.K:]...)
	up := make([]float32, b.N*r)
	for n := 0; n < b.N; n++ {
		row := b.Up[n*b.R : (n+1)*b.R]
		copy(up[n*r:], row[:lo])
		copy(up[n*r+lo:], row[hi:])
	}
	b.Down, b.Up, b.R = down, up, r
}

// Slice returns a copy of rank columns [lo, hi) as a branch.
func (b *Branch) Slice(lo, hi int) *Branch {
	b.check("Slice")
	if lo < 0 || hi < lo || hi > b.R {
		panic(fmt.Sprintf("lora: Branch.Slice: range [%d, %d) outside rank %d", lo, hi, b.R))
	}
	r := hi - lo
	c := &Branch{N: b.N, K: b.K, R: r, Down: append([]float32(nil), b.Down[lo*b.K:hi*b.K]...), Up: make([]float32, b.N*r)}
	for n := 0; n < b.N; n++ {
		copy(c.Up[n*r:], b.Up[n*b.R+lo:n*b.R+hi])
	}
	return c
}

// Round rounds every value to dt in place (the stored form of a W4A4 or
// W4A16 branch).
func (b *Branch) Round(dt quant.Float16) {
	dt.RoundAll(b.Down)
	dt.RoundAll(b.Up)
}

// Delta returns ΔW = Up·Down [N, K] in float64.
func (b *Branch) Delta() []float64 {
	b.check("Delta")
	d := make([]float64, b.N*b.K)
	for n := 0; n < b.N; n++ {
		row := d[n*b.K : (n+1)*b.K]
		for r := 0; r < b.R; r++ {
			u := float64(b.Up[n*b.R+r])
			if u == 0 {
				continue
			}
			for k, v := range b.Down[r*b.K : (r+1)*b.K] {
				row[k] += u * float64(v)
			}
		}
	}
	return d
}

// Merge returns the merged weight of a kept tensor: w = base + Up·Down
// computed in float64 (rank terms added in index order), then rounded to
// float32 and, unless f32, to dt. base [N, K] is not modified. It panics
// when base has the wrong length.
func (b *Branch) Merge(base []float32, dt quant.Float16, f32 bool) []float32 {
	b.check("Merge")
	if len(base) != b.N*b.K {
		panic(fmt.Sprintf("lora: Branch.Merge: base has %d values, want %d", len(base), b.N*b.K))
	}
	d := b.Delta()
	out := make([]float32, len(base))
	for i, v := range base {
		w := float32(float64(v) + d[i])
		if !f32 {
			w = dt.Round(w)
		}
		out[i] = w
	}
	return out
}

// FirstNonFinite returns "down[i]" or "up[i]" for the first NaN/±Inf value
// of the branch, "" when all are finite (a LoRA scaled past the 16-bit
// range rounds to ±Inf).
func (b *Branch) FirstNonFinite() string {
	if i := quant.FirstNonFinite(b.Down); i >= 0 {
		return fmt.Sprintf("down[%d, %d] = %v", i/b.K, i%b.K, b.Down[i])
	}
	if i := quant.FirstNonFinite(b.Up); i >= 0 {
		return fmt.Sprintf("up[%d, %d] = %v", i/max(b.R, 1), i%max(b.R, 1), b.Up[i])
	}
	return ""
}

// LayerBranch returns a copy of the low-rank branch of a W4A4 layer.
func LayerBranch(l *quant.Layer) *Branch {
	return &Branch{N: l.N, K: l.K, R: l.R, Down: append([]float32(nil), l.Down...), Up: append([]float32(nil), l.Up...)}
}

// SetOn replaces the branch of the W4A4 layer l with a copy of b (Down, Up
// and R); everything 4-bit stays as it is. It panics when the shapes
// differ.
func (b *Branch) SetOn(l *quant.Layer) {
	b.check("SetOn")
	if b.N != l.N || b.K != l.K {
		panic(fmt.Sprintf("lora: Branch.SetOn: [%d %d] branch on a [%d %d] layer", b.N, b.K, l.N, l.K))
	}
	l.R, l.Down, l.Up = b.R, append([]float32(nil), b.Down...), append([]float32(nil), b.Up...)
}

// FirstNonZero returns "down[r, k] = v" or "up[n, r] = v" for the first
// nonzero value of the branch, "" when every value is zero (the columns a
// file's one rank adds to a layer's branch).
func (b *Branch) FirstNonZero() string {
	b.check("FirstNonZero")
	for i, v := range b.Down {
		if v != 0 {
			return fmt.Sprintf("down[%d, %d] = %v", i/b.K, i%b.K, v)
		}
	}
	for i, v := range b.Up {
		if v != 0 {
			return fmt.Sprintf("up[%d, %d] = %v", i/b.R, i%b.R, v)
		}
	}
	return ""
}

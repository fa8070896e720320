package lora

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/svd"
)

// TruncOptions choose the rank of a dense ΔW's branch on a W4A4 or W4A16
// layer (fuse-lora --delta-rank / --delta-energy): exactly one is set.
type TruncOptions struct {
	Rank   int     // keep the R leading singular directions (capped at min(N, K))
	Energy float64 // keep the fewest directions whose σ² sum to ≥ Energy·‖ΔW‖²_F (less 1e-6·‖ΔW‖²_F), 0 < Energy ≤ 1
}

// Validate checks that at most one of Rank and Energy is set and that
// both are in range (zero: unset).
func (o TruncOptions) Validate() error {
	switch {
	case o.Rank < 0:
		return fmt.Errorf("delta rank %d is negative", o.Rank)
	case o.Rank > 0 && o.Energy != 0:
		return fmt.Errorf("give a delta rank or a delta energy, not both")
	case o.Energy < 0 || o.Energy > 1 || math.IsNaN(o.Energy):
		return fmt.Errorf("delta energy %v is not in (0, 1]", o.Energy)
	}
	return nil
}

// Set reports whether a rank rule was given.
func (o TruncOptions) Set() bool { return o.Rank > 0 || o.Energy > 0 }

// Truncation describes the branch a dense ΔW became on one layer.
type Truncation struct {
	LoRA  string `json:"lora"`
	Layer string `json:"layer"`
	Rank  int    `json:"rank"` // rank kept
	Full  int    `json:"full"` // min(N, K)
	// Energy is the fraction of ‖ΔW‖²_F the kept singular values hold.
	Energy float64 `json:"energy"`
	// Error is ‖x·(ΔW − ΔW_r)ᵀ‖_F / ‖x·ΔWᵀ‖_F over Rows calibration rows
	// x, or ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F when Rows is 0; ΔW_r is the branch as
	// stored (rounded to the model's 16-bit type).
	Error float64 `json:"error"`
	Rows  int     `json:"rows"`
}

// exactSVDWork bounds m·n·min(m, n) for the exact (gonum) SVD; larger
// matrices use svd.Randomized.
const exactSVDWork = 1 << 27

// Truncate returns the best rank-r approximation of d [n, k] as a branch
// Up = U_r·diag(S_r) [n, r], Down = V_rᵀ [r, k] (float32, unrounded), with
// r chosen by opt, and the fraction of ‖d‖²_F it keeps. The SVD comes
// from the svd package: exact (gonum) for small matrices, else
// randomized subspace iteration, whose rank is doubled until the energy
// rule is met. A zero d returns a rank-0 branch. It panics on a bad shape
// or options (Validate first).
func Truncate(d []float64, n, k int, opt TruncOptions) (*Branch, float64) {
	if len(d) != n*k || n <= 0 || k <= 0 || !opt.Set() || opt.Validate() != nil {
		panic(fmt.Sprintf("lora: Truncate: %d values for [%d %d], options %+v", len(d), n, k, opt))
	}
	total := 0.0
	a := make([]float32, len(d))
	for i, v := range d {
		total += v * v
		a[i] = float32(v)
	}
	if total == 0 {
		return NewBranch(n, k), 1
	}
	full := min(n, k)
	var t *svd.Truncated
	if n*k*full <= exactSVDWork {
		t = svd.Exact(a, n, k, full)
	} else {
		r := opt.Rank
		if r == 0 {
			r = min(32, full)
		}
		for {
			t, _ = svd.Randomized(a, n, k, min(r, full), svd.RandOptions{Seed: 1})
			if opt.Rank > 0 || r >= full || energyRank(t.S, total, opt.Energy) > 0 {
				break
			}
			r *= 2
		}
	}
	r := min(opt.Rank, t.R)
	if opt.Rank == 0 {
		if r = energyRank(t.S, total, opt.Energy); r == 0 {
			r = t.R // float rounding: the whole spectrum found falls just short
		}
	}
	kept := 0.0
	for _, s := range t.S[:r] {
		kept += s * s
	}
	b := &Branch{N: n, K: k, R: r, Down: make([]float32, r*k), Up: make([]float32, n*r)}
	for i := 0; i < n; i++ {
		for j := 0; j < r; j++ {
			b.Up[i*r+j] = float32(float64(t.U[i*t.R+j]) * t.S[j])
		}
	}
	copy(b.Down, t.Vt[:r*k])
	b.pruneZero()
	return b, min(kept/total, 1)
}

// energyTol is how far short of e·‖ΔW‖² the kept energy may fall: the
// SVD runs in float32, so directions below ~1e-6 of the energy are noise
// (energy 1 then keeps the exact rank of a low-rank ΔW, not min(N, K)).
const energyTol = 1e-6

// energyRank returns the fewest leading values of s whose squares sum to
// at least e·total (less energyTol·total), 0 when all of s falls short.
func energyRank(s []float64, total, e float64) int {
	acc := 0.0
	for i, v := range s {
		acc += v * v
		if acc >= (e-energyTol)*total {
			return i + 1
		}
	}
	return 0
}

// ExactBranch returns an exact factorisation of d [n, k] with float32
// values: Up = I, Down = d when n ≤ k, else Up = d, Down = I (rank
// min(n, k)). It carries a dense ΔW into a 16-bit weight merge (Merge
// sums Up·Down in float64, so the identity adds no rounding).
func ExactBranch(d []float64, n, k int) *Branch {
	if len(d) != n*k {
		panic(fmt.Sprintf("lora: ExactBranch: %d values for [%d %d]", len(d), n, k))
	}
	r := min(n, k)
	dense, eye := make([]float32, n*k), make([]float32, r*r)
	for i, v := range d {
		dense[i] = float32(v)
	}
	for i := 0; i < r; i++ {
		eye[i*r+i] = 1
	}
	if n <= k {
		return &Branch{N: n, K: k, R: r, Down: dense, Up: eye}
	}
	return &Branch{N: n, K: k, R: r, Down: eye, Up: dense}
}

// TruncError returns ‖x·(d − b)ᵀ‖_F / ‖x·dᵀ‖_F for rows x [m, k] (m > 0),
// or ‖d − b‖_F / ‖d‖_F when m is 0, where b is the branch's Up·Down; 0
// when d is zero. The products run in float32 through svd.Gemm (a FLUX
// MLP layer on 256 rows is ~10¹⁰ multiply-adds), the norms in float64:
// the ratio is good to ~1e-5.
func TruncError(d []float64, b *Branch, x []float32, m int) float64 {
	n, k := b.N, b.K
	d32 := make([]float32, len(d))
	for i, v := range d {
		d32[i] = float32(v)
	}
	if m == 0 {
		// E = d − Up·Down, [n, k].
		e := append([]float32(nil), d32...)
		if b.R > 0 {
			svd.Gemm(false, false, n, k, b.R, -1, b.Up, b.R, b.Down, k, 1, e, k)
		}
		return ratio(e, d32)
	}
	y := make([]float32, m*n) // x·dᵀ
	svd.Gemm(false, true, m, n, k, 1, x, k, d32, k, 0, y, n)
	e := append([]float32(nil), y...)
	if b.R > 0 {
		t := make([]float32, m*b.R) // x·Downᵀ
		svd.Gemm(false, true, m, b.R, k, 1, x, k, b.Down, k, 0, t, b.R)
		svd.Gemm(false, true, m, n, b.R, -1, t, b.R, b.Up, b.R, 1, e, n) // − (x·Downᵀ)·Upᵀ
	}
	return ratio(e, y)
}

// ratio returns ‖num‖ / ‖den‖ (0 when den is zero).
func ratio(num, den []float32) float64 {
	var a, c float64
	for i := range num {
		a += float64(num[i]) * float64(num[i])
		c += float64(den[i]) * float64(den[i])
	}
	if c == 0 {
		return 0
	}
	return math.Sqrt(a / c)
}

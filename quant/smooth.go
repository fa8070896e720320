package quant

import (
	"fmt"
	"math"
)

// Smoothing (svdquant.md step 2): λ_j = ax_j^α / aw_j^β moves the outliers
// of input channel j from the activations (x/λ) into the weight (W·diag(λ)).

// SmoothCandidate is one (α, β) pair of the smoothing grid.
type SmoothCandidate struct{ Alpha, Beta float64 }

// plainCandidate is plain SVDQuant's fixed smoothing, (0.5, 0.5).
var plainCandidate = SmoothCandidate{0.5, 0.5}

// smoothGrid is the number of grid steps of α in the reference (num_grids).
const smoothGrid = 20

// SmoothCandidates returns the reference's 39 candidates in its order:
// (0, 0) (no smoothing); (α, 0) for α = 0.05, 0.10, …, 0.95; (α, 1−α) for
// the same α (deepcompressor's alpha 0.5, beta -2, num_grids 20).
func SmoothCandidates() []SmoothCandidate {
	c := []SmoothCandidate{{0, 0}}
	for i := 1; i < smoothGrid; i++ {
		c = append(c, SmoothCandidate{float64(i) / smoothGrid, 0})
	}
	for i := 1; i < smoothGrid; i++ {
		a := float64(i) / smoothGrid
		c = append(c, SmoothCandidate{a, 1 - a})
	}
	return c
}

// Smoothing factors are clamped so that λ and 1/λ are normal numbers of the
// model dtype with room to spare (Down = L_down·diag(1/λ) is stored too).
var smoothRange = map[Float16][2]float64{
	BF16: {0x1p-64, 0x1p64},
	F16:  {0x1p-14, 0x1p14},
}

// SmoothVector writes into lam ([K], caller-allocated) the smoothing factors
// λ_j = ax_j^α / aw_j^β rounded to dt, from the activation statistic ax
// (max |x_j| over the calibration tokens) and the weight statistic aw
// (max_n |W[n, j]| over every member of the group). (0, 0) gives λ = 1.
//
// Guards (ours; the reference sets zeros to 1 and the whole vector to 1 when
// any factor is not finite): a channel whose statistic entering the formula
// (ax_j when α > 0, aw_j when β > 0) is zero, subnormal in float32 or not
// finite gets λ_j = 1, since its input or its weight column is dead and any
// factor serves; every other factor is clamped to the dtype's safe range
// ([2^-64, 2^64] for bf16, [2^-14, 2^14] for fp16) after, for fp16, being
// raised to ax_j/2^15 at least, so that the kernel's fp16 x/λ cannot
// overflow (λ = 1 channels are left alone: |x| itself fits). The rounding happens
// here, before Ŵ = W·diag(λ) is formed, so that the stored factors and the
// smoothed weight agree. Panics if the lengths differ.
func SmoothVector(lam []float32, ax, aw []float64, c SmoothCandidate, dt Float16) {
	if len(ax) != len(lam) || len(aw) != len(lam) {
		panic(fmt.Sprintf("quant: SmoothVector with %d factors, %d activation and %d weight statistics", len(lam), len(ax), len(aw)))
	}
	lim := smoothRange[dt]
	for j := range lam {
		v := 1.0
		if c.Alpha > 0 {
			if !usable(ax[j]) {
				lam[j] = 1
				continue
			}
			v = math.Pow(ax[j], c.Alpha)
		}
		if c.Beta > 0 {
			if !usable(aw[j]) {
				lam[j] = 1
				continue
			}
			v /= math.Pow(aw[j], c.Beta)
		}
		if dt == F16 {
			// The kernel holds x/λ in fp16: keep |x/λ| ≤ 2^15 < 65504.
			v = max(v, ax[j]*0x1p-15)
		}
		lam[j] = dt.Round(float32(min(max(v, lim[0]), lim[1])))
	}
}

// usable reports whether a channel statistic is a positive normal float32.
func usable(a float64) bool {
	return a >= 0x1p-126 && !math.IsInf(a, 0) && a <= math.MaxFloat32
}

// weightAbsMax returns aw_j = max over the members and their rows of |W[n, j]|.
func weightAbsMax(ins []Input) []float64 {
	k := ins[0].K
	aw := make([]float64, k)
	for _, in := range ins {
		for n := 0; n < in.N; n++ {
			row := in.W[n*k : (n+1)*k]
			for j, w := range row {
				aw[j] = max(aw[j], math.Abs(float64(w)))
			}
		}
	}
	return aw
}

// activationStat returns ax_j from the calibration statistic; the shifted input
// adds ShiftINT4, an upper bound of max |x_j + shift| that is exact when the
// extreme is positive (always so for a GELU output, whose minimum is −0.17).
func activationStat(absMax []float32, shift float32) []float64 {
	ax := make([]float64, len(absMax))
	for j, a := range absMax {
		ax[j] = float64(a) + float64(shift)
	}
	return ax
}

// smoothWeight writes Ŵ = W·diag(λ) ([n, k]) into dst.
func smoothWeight(dst, w []float32, n, k int, lam []float32) {
	for r := 0; r < n; r++ {
		d, s := dst[r*k:(r+1)*k], w[r*k:(r+1)*k]
		for j, l := range lam {
			d[j] = s[j] * l
		}
	}
}

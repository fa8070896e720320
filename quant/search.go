package quant

import "math"

// The smoothing search: which (α, β) candidates are evaluated, in which
// order. Evaluation is a callback returning the objective (the group's
// squared output error); the first candidate with the smallest value wins.

// searchCandidates runs mode over the grid of SmoothCandidates and returns
// the best candidate, its objective and the number of evaluations.
func searchCandidates(mode SearchMode, eval func(SmoothCandidate) float64) (best SmoothCandidate, bestErr float64, evaluated int) {
	grid := SmoothCandidates()
	seen := make(map[int]float64)
	bestIdx := -1
	try := func(i int) float64 {
		if e, ok := seen[i]; ok {
			return e
		}
		e := eval(grid[i])
		if e != e {
			e = math.Inf(1) // a candidate that overflows loses
		}
		seen[i] = e
		if bestIdx < 0 || e < seen[bestIdx] {
			bestIdx = i
		}
		return e
	}
	switch mode {
	case SearchFull:
		for i := range grid {
			try(i)
		}
	case SearchFast:
		fastSearch(try, &bestIdx)
	case SearchOff:
		return plainCandidate, 0, 0
	default:
		panic("quant: bad search mode " + mode.String())
	}
	return grid[bestIdx], seen[bestIdx], len(seen)
}

// fastCoarse are the grid steps (α = step/20) of the fast search's coarse
// pass in each family.
var fastCoarse = []int{5, 10, 15}

// fastFamilyMargin: the second family is walked when its best coarse
// objective is within this fraction of the best.
var fastFamilyMargin = 0.02

// gridIndex maps a family (0: (α, 0); 1: (α, 1−α)) and a step i in
// 1..smoothGrid-1 (α = i/smoothGrid) to the index in SmoothCandidates.
func gridIndex(family, i int) int { return 1 + family*(smoothGrid-1) + (i - 1) }

// fastSearch evaluates (0, 0) and α = 0.1, 0.3, 0.5, 0.7, 0.9 in both
// families, then walks along the best one's family at the fine step 0.05
// while a neighbour improves; the other family's best coarse point is
// walked too when its objective is within fastFamilyMargin of the best (the
// two families' optima are often close, and the coarse step alone cannot
// tell them apart). When (0, 0) wins, the walk starts from the small-α ends
// of both families, which tend to it.
func fastSearch(try func(int) float64, bestIdx *int) {
	try(0)
	var famBest [2]int    // coarse step of each family's best point
	var famErr [2]float64 // its objective
	for f := 0; f < 2; f++ {
		famErr[f] = math.Inf(1)
		for _, i := range fastCoarse {
			if e := try(gridIndex(f, i)); e < famErr[f] {
				famBest[f], famErr[f] = i, e
			}
		}
	}
	var starts [][2]int // (family, step)
	if *bestIdx == 0 {
		starts = [][2]int{{0, 1}, {1, 1}}
	} else {
		b := *bestIdx - 1
		f := b / (smoothGrid - 1)
		starts = [][2]int{{f, b%(smoothGrid-1) + 1}}
		if o := 1 - f; famErr[o] <= famErr[f]*(1+fastFamilyMargin) {
			starts = append(starts, [2]int{o, famBest[o]})
		}
	}
	for _, s := range starts {
		f, i := s[0], s[1]
		cur := try(gridIndex(f, i))
		for _, dir := range []int{-1, 1} {
			for j := i + dir; j >= 1 && j < smoothGrid; j += dir {
				e := try(gridIndex(f, j))
				if e >= cur {
					break
				}
				cur, i = e, j
			}
		}
	}
}

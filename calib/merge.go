package calib

import (
	"fmt"
	"math/rand/v2"
	"slices"
)

// mergedSize returns how many sample rows a fair merge of (sa rows standing
// for na tokens) and (sb rows for nb tokens) can keep: at most MaxSamples and
// sa + sb, and, for a side whose sample is a strict subset of its tokens, no
// more than that side holds (a uniform subset of the union of size T takes
// up to min(T, n) rows from a side, which must have them).
func mergedSize(sa int, na int64, sb int, nb int64) int {
	t := min(MaxSamples, sa+sb)
	if int64(sa) < na {
		t = min(t, sa)
	}
	if int64(sb) < nb {
		t = min(t, sb)
	}
	return t
}

// Merge returns the statistics of the union of two disjoint token sets:
// elementwise maximum of AbsMax, Count = a.Tokens() + b.Tokens(), and
// mergedSize rows sampled fairly — the number taken from a is drawn from the
// hypergeometric distribution (T draws without replacement from a.Tokens()
// tokens of a and b.Tokens() of b), then that many rows are drawn without
// replacement from a's samples and the rest from b's, so that when each
// input's samples are a uniform subset of its tokens, every token of the
// union is kept with the same probability. Rows from a come first. The
// result owns new slices; a and b are not modified. The draws come from a
// PCG stream seeded by seed. It panics (prefix "calib:") when K differs,
// either input is inconsistent (see Validate) or the counts add up past
// MaxCount (MergeFiles checks the sums first).
func Merge(a, b *Stats, seed uint64) *Stats {
	for _, s := range []*Stats{a, b} {
		if err := validateShape(s); err != nil {
			panic("calib: Merge: " + err.Error())
		}
	}
	if a.K != b.K {
		panic(fmt.Sprintf("calib: Merge: K = %d and %d differ", a.K, b.K))
	}
	if a.Tokens() > MaxCount-b.Tokens() {
		panic(fmt.Sprintf("calib: Merge: counts %d + %d exceed MaxCount", a.Tokens(), b.Tokens()))
	}
	rng := rand.New(rand.NewPCG(seed, 0x6d65726765)) // "merge"
	na, nb := a.Tokens(), b.Tokens()
	t := mergedSize(a.S, na, b.S, nb)
	ta := hypergeometric(rng, t, na, nb)
	out := &Stats{K: a.K, S: t, Count: na + nb, AbsMax: make([]float32, a.K), Samples: make([]float32, 0, t*a.K)}
	for j := range out.AbsMax {
		out.AbsMax[j] = max(a.AbsMax[j], b.AbsMax[j])
	}
	for _, i := range sampleIndices(rng, a.S, ta) {
		out.Samples = append(out.Samples, a.Row(i)...)
	}
	for _, i := range sampleIndices(rng, b.S, t-ta) {
		out.Samples = append(out.Samples, b.Row(i)...)
	}
	return out
}

// hypergeometric returns how many of t draws without replacement from na
// items of kind a and nb of kind b are of kind a (t ≤ na + nb).
func hypergeometric(rng *rand.Rand, t int, na, nb int64) int {
	ka := 0
	ra, rb := float64(na), float64(nb)
	for i := 0; i < t; i++ {
		if rng.Float64()*(ra+rb) < ra {
			ka++
			ra--
		} else {
			rb--
		}
	}
	return ka
}

// sampleIndices returns k distinct indices drawn uniformly from [0, n),
// in increasing order (a partial Fisher–Yates shuffle, then sorted).
func sampleIndices(rng *rand.Rand, n, k int) []int {
	if k > n {
		panic(fmt.Sprintf("calib: sample %d of %d rows", k, n))
	}
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	for i := 0; i < k; i++ {
		j := i + rng.IntN(n-i)
		p[i], p[j] = p[j], p[i]
	}
	sel := p[:k]
	slices.Sort(sel) // the output's row order is a function of the chosen set
	return sel
}

// validateShape checks lengths and counts only (not values).
func validateShape(s *Stats) error {
	switch {
	case s == nil:
		return fmt.Errorf("nil statistics")
	case s.K < 1 || len(s.AbsMax) != s.K:
		return fmt.Errorf("K = %d with %d absmax values", s.K, len(s.AbsMax))
	case s.S < 1 || s.S > MaxSamples || len(s.Samples) != s.S*s.K:
		return fmt.Errorf("S = %d with %d sample values for K = %d", s.S, len(s.Samples), s.K)
	case s.Count != 0 && s.Count < int64(s.S):
		return fmt.Errorf("count %d below S = %d", s.Count, s.S)
	case s.Count > MaxCount:
		return fmt.Errorf("count %d above MaxCount", s.Count)
	}
	return nil
}

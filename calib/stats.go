package calib

import (
	"fmt"
	"math"
)

// Format is the value of the "format" metadata key of a calibration file.
const Format = "svdq-calib/1"

// MaxSamples is the largest number of sample rows a layer may carry.
const MaxSamples = 4096

// MaxCount is the largest token count (input_count) a layer may carry:
// 2⁵³, so that counts are exact as float64 (the merge draws with them) and
// the counts of 1024 files add up without overflowing int64. A real
// calibration run sees far fewer tokens (FLUX.1 at 4096 tokens, 50 steps
// and a million prompts: 2·10¹¹).
const MaxCount = 1 << 53

// Tensor name suffixes of one layer.
const (
	SuffixAbsMax  = ".input_absmax"
	SuffixSamples = ".input_samples"
	SuffixCount   = ".input_count"
)

// Stats are the calibration statistics of one layer input.
type Stats struct {
	K       int       // input features
	AbsMax  []float32 // [K] max |x_k| over every token seen
	Samples []float32 // [S, K] row-major sample rows
	S       int       // number of sample rows
	Count   int64     // tokens seen (≥ S); 0 when unknown, read as S
}

// Tokens returns Count, or S when Count is 0 (unknown).
func (s *Stats) Tokens() int64 {
	if s.Count == 0 {
		return int64(s.S)
	}
	return s.Count
}

// Row returns sample row i (a subslice of Samples).
func (s *Stats) Row(i int) []float32 { return s.Samples[i*s.K : (i+1)*s.K] }

// Cols returns the statistics of input columns [lo, hi), for a layer that
// reads part of another's input (FLUX single-block proj_out: out_proj takes
// columns [0, 3072), mlp_fc2 [3072, 15360)). The result owns new slices;
// Count and S are kept. It panics unless 0 ≤ lo < hi ≤ K.
func (s *Stats) Cols(lo, hi int) *Stats {
	if lo < 0 || hi > s.K || lo >= hi || len(s.AbsMax) < s.K || len(s.Samples) < s.S*s.K {
		panic(fmt.Sprintf("calib: Cols(%d, %d) of stats with K=%d (absmax %d, samples %d for S=%d)",
			lo, hi, s.K, len(s.AbsMax), len(s.Samples), s.S))
	}
	k := hi - lo
	out := &Stats{K: k, S: s.S, Count: s.Count,
		AbsMax: append([]float32(nil), s.AbsMax[lo:hi]...), Samples: make([]float32, s.S*k)}
	for i := 0; i < s.S; i++ {
		copy(out.Samples[i*k:(i+1)*k], s.Samples[i*s.K+lo:i*s.K+hi])
	}
	return out
}

// Clone returns a deep copy of s.
func (s *Stats) Clone() *Stats {
	c := *s
	c.AbsMax = append([]float32(nil), s.AbsMax...)
	c.Samples = append([]float32(nil), s.Samples...)
	return &c
}

// Validate checks stats against the svdq-calib/1 rules for a layer with
// wantK input features (wantK ≤ 0: any K): K, slice lengths, 1 ≤ S ≤
// MaxSamples, finite values, absmax ≥ 0, Count = 0 or S ≤ Count ≤
// MaxCount, and every
// sample within absmax (with the slack of one BF16 rounding, 2⁻⁷ relative).
// The error names the first violation; it does not name a file (callers
// add the layer or file name).
func Validate(stats *Stats, wantK int) error {
	return validate(stats, wantK, bf16Slack)
}

// slack is what one rounding to a sample dtype may add to a value: at most
// rel·|x| (half an ulp; twice that for margin) plus abs in the subnormal
// range.
type slack struct{ rel, abs float64 }

var (
	f32Slack  = slack{0x1p-23, 0x1p-149}
	f16Slack  = slack{0x1p-10, 0x1p-25}
	bf16Slack = slack{0x1p-7, 0x1p-133}
)

func validate(s *Stats, wantK int, sl slack) error {
	switch {
	case s == nil:
		return fmt.Errorf("no statistics")
	case s.K < 1:
		return fmt.Errorf("K = %d, want ≥ 1", s.K)
	case wantK > 0 && s.K != wantK:
		return fmt.Errorf("K = %d, the layer has %d input features", s.K, wantK)
	case len(s.AbsMax) != s.K:
		return fmt.Errorf("input_absmax has %d values, want K = %d", len(s.AbsMax), s.K)
	case s.S < 1 || s.S > MaxSamples:
		return fmt.Errorf("S = %d sample rows, want 1..%d", s.S, MaxSamples)
	case len(s.Samples) != s.S*s.K:
		return fmt.Errorf("input_samples has %d values, want S·K = %d·%d", len(s.Samples), s.S, s.K)
	case s.Count != 0 && s.Count < int64(s.S):
		return fmt.Errorf("input_count %d is below the %d sample rows", s.Count, s.S)
	case s.Count > MaxCount:
		return fmt.Errorf("input_count %d exceeds the limit of %d tokens", s.Count, int64(MaxCount))
	}
	for k, a := range s.AbsMax {
		if !(a >= 0) || math.IsInf(float64(a), 0) {
			return fmt.Errorf("input_absmax[%d] = %v, want finite and ≥ 0", k, a)
		}
	}
	for i := 0; i < s.S; i++ {
		for k, x := range s.Row(i) {
			if x-x != 0 {
				return fmt.Errorf("input_samples[%d, %d] = %v is not finite", i, k, x)
			}
			if ax := math.Abs(float64(x)); ax > float64(s.AbsMax[k])*(1+sl.rel)+sl.abs {
				return fmt.Errorf("input_samples[%d, %d]: |x| = %v exceeds input_absmax[%d] = %v", i, k, ax, k, s.AbsMax[k])
			}
		}
	}
	return nil
}

package calib

import (
	"math"
	"strings"
	"testing"
)

func smallStats() *Stats {
	return &Stats{K: 4, S: 2, Count: 10,
		AbsMax:  []float32{1, 2, 3, 4},
		Samples: []float32{0.5, -2, 1, 4, -1, 1, -3, 0}}
}

func TestCols(t *testing.T) {
	s := smallStats()
	c := s.Cols(1, 3)
	if c.K != 2 || c.S != 2 || c.Count != 10 {
		t.Fatalf("Cols: K=%d S=%d Count=%d", c.K, c.S, c.Count)
	}
	want := []float32{-2, 1, 1, -3}
	for i, v := range want {
		if c.Samples[i] != v {
			t.Errorf("sample %d = %v, want %v", i, c.Samples[i], v)
		}
	}
	if c.AbsMax[0] != 2 || c.AbsMax[1] != 3 {
		t.Errorf("absmax %v", c.AbsMax)
	}
	c.AbsMax[0], c.Samples[0] = 99, 99 // owns its slices
	if s.AbsMax[1] != 2 || s.Samples[1] != -2 {
		t.Errorf("Cols aliases its source")
	}
	if err := Validate(c, 2); err != nil {
		t.Errorf("Cols result invalid: %v", err)
	}
	for _, r := range [][2]int{{-1, 2}, {2, 2}, {3, 5}, {3, 1}} {
		func() {
			defer func() {
				if p := recover(); p == nil || !strings.HasPrefix(p.(string), "calib: ") {
					t.Errorf("Cols(%d, %d): panic %v", r[0], r[1], p)
				}
			}()
			s.Cols(r[0], r[1])
		}()
	}
}

func TestValidate(t *testing.T) {
	nan := float32(math.NaN())
	for _, tc := range []struct {
		name  string
		edit  func(*Stats)
		wantK int
		want  string // substring of the error; "" = valid
	}{
		{"ok", func(*Stats) {}, 4, ""},
		{"any K", func(*Stats) {}, 0, ""},
		{"wrong K", func(*Stats) {}, 5, "input features"},
		{"absmax length", func(s *Stats) { s.AbsMax = s.AbsMax[:3] }, 4, "input_absmax has 3"},
		{"samples length", func(s *Stats) { s.Samples = s.Samples[:7] }, 4, "input_samples has 7"},
		{"no rows", func(s *Stats) { s.S, s.Samples = 0, nil }, 4, "S = 0"},
		{"too many rows", func(s *Stats) { s.S = MaxSamples + 1; s.Samples = make([]float32, s.S*4) }, 4, "S = 4097"},
		{"count below S", func(s *Stats) { s.Count = 1 }, 4, "input_count 1"},
		{"unknown count", func(s *Stats) { s.Count = 0 }, 4, ""},
		{"NaN absmax", func(s *Stats) { s.AbsMax[2] = nan }, 4, "input_absmax[2]"},
		{"negative absmax", func(s *Stats) { s.AbsMax[0] = -1 }, 4, "input_absmax[0]"},
		{"Inf sample", func(s *Stats) { s.Samples[5] = float32(math.Inf(-1)) }, 4, "input_samples[1, 1]"},
		{"sample above absmax", func(s *Stats) { s.Samples[3] = 4.1 }, 4, "exceeds input_absmax[3]"},
		{"sample within bf16 slack", func(s *Stats) { s.Samples[3] = 4.01 }, 4, ""},
	} {
		s := smallStats()
		tc.edit(s)
		err := Validate(s, tc.wantK)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	if err := Validate(nil, 0); err == nil {
		t.Errorf("nil stats validated")
	}
}

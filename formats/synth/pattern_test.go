package synth

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/svdq/svdq/calib"
)

// TestPatternsDeterministic: every pattern gives the same bytes for any
// worker count, "" is "aligned", and the patterns differ from each other.
func TestPatternsDeterministic(t *testing.T) {
	seen := map[string]string{}
	for _, p := range append(Patterns(), "") {
		base := Options{Arch: "flux-dev", Scale: 0.125, Blocks: 1, Seed: 4, Samples: 16, Pattern: p}
		a, b := base, base
		a.Workers, b.Workers = 1, 3
		da, db := gen(t, a), gen(t, b)
		var all []byte
		for _, f := range []string{ModelFile, CalibFile} {
			x, err := os.ReadFile(filepath.Join(da, f))
			if err != nil {
				t.Fatal(err)
			}
			y, err := os.ReadFile(filepath.Join(db, f))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(x, y) {
				t.Errorf("pattern %q: %s differs between 1 and 3 workers", p, f)
			}
			all = append(all, x...)
		}
		key := string(all)
		if prev, ok := seen[key]; ok && !(p == "" && prev == string(Aligned)) {
			t.Errorf("patterns %q and %q wrote the same files", p, prev)
		}
		if p == "" {
			if _, ok := seen[key]; !ok {
				t.Error(`pattern "" differs from "aligned"`)
			}
			continue
		}
		seen[key] = p
		meta := open(t, da).Metadata()["svdq_synth"]
		if got := strings.Contains(meta, "pattern="+p); got != (p != string(Aligned)) {
			t.Errorf("pattern %q: svdq_synth metadata %q", p, meta)
		}
	}
	if err := Generate(Options{Arch: "flux-dev", Scale: 0.125, Blocks: 1, Pattern: "nope", Out: t.TempDir()}); err == nil {
		t.Error("unknown pattern: no error")
	}
}

// TestPatternsCalibValid: every pattern's calibration file passes the calib
// package's svdq-calib/1 checks (absmax bounds the samples, all finite).
func TestPatternsCalibValid(t *testing.T) {
	for _, p := range Patterns() {
		for _, arch := range []string{"flux-dev", "sana"} {
			dir := gen(t, Options{Arch: arch, Scale: 0.125, Blocks: 1, Samples: 64, Seed: 2, Pattern: p})
			f, err := calib.Open(filepath.Join(dir, CalibFile))
			if err != nil {
				t.Fatalf("%s %s: %v", p, arch, err)
			}
			for _, n := range f.Names() {
				if _, err := f.Layer(n); err != nil {
					t.Errorf("%s %s: %v", p, arch, err)
				}
			}
			f.Close()
		}
	}
}

// channelStats returns, per channel of samples [S, K], the median of |x|
// and whether every sample has the same sign.
func channelStats(x []float32, S, K int) (med []float64, oneSign []bool) {
	med = make([]float64, K)
	oneSign = make([]bool, K)
	col := make([]float64, S)
	for k := range K {
		pos, neg := 0, 0
		for s := range S {
			v := float64(x[s*K+k])
			col[s] = math.Abs(v)
			if v > 0 {
				pos++
			} else if v < 0 {
				neg++
			}
		}
		sort.Float64s(col)
		med[k] = col[S/2]
		oneSign[k] = pos == S || neg == S
	}
	return med, oneSign
}

// TestMassiveStructure: each input has 4 channels of one sign whose typical
// |x| is 100–1000× the median channel's (loosely: 60–3000×, with the
// log-normal spread), ordinary weights in those columns, and a few
// token-wise outlier rows.
func TestMassiveStructure(t *testing.T) {
	const S = 256
	dir := gen(t, Options{Arch: "flux-dev", Scale: 0.125, Blocks: 1, Seed: 3, Samples: S, Pattern: string(Massive)})
	r := open(t, dir)
	c := open(t, filepath.Join(dir, CalibFile))
	for _, m := range []string{"transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2", "single_transformer_blocks.1.proj_mlp"} {
		x, sh := floats(t, c, m+".input_samples")
		K := int(sh[1])
		med, oneSign := channelStats(x, S, K)
		mm := median64(med)
		var massive []int
		for k := range K {
			if med[k] > 30*mm {
				massive = append(massive, k)
				if ratio := med[k] / mm; ratio < 60 || ratio > 3000 || !oneSign[k] {
					t.Errorf("%s: channel %d median |x| %.3g = %.0f× the median channel, one sign %v", m, k, med[k], ratio, oneSign[k])
				}
			}
		}
		if len(massive) != massiveChannels {
			t.Errorf("%s: %d massive channels %v, want %d", m, len(massive), massive, massiveChannels)
		}
		if strings.HasSuffix(m, "ff.net.2") {
			if v := minOf(x); v < -0.17 {
				t.Errorf("%s: GELU input min %g", m, v)
			}
		}
		// Ordinary weights where activations are massive.
		w, wsh := floats(t, r, m+".weight")
		colMax := make([]float64, K)
		for n := range int(wsh[0]) {
			for k := range K {
				colMax[k] = max(colMax[k], math.Abs(float64(w[n*K+k])))
			}
		}
		medW := median64(colMax)
		for _, k := range massive {
			if colMax[k] < medW/3 {
				t.Errorf("%s: massive channel %d has a small weight column (max %.3g, median %.3g)", m, k, colMax[k], medW)
			}
		}
		// Token-wise outliers: rows whose ordinary channels are ×3–10.
		isMassive := map[int]bool{}
		for _, k := range massive {
			isMassive[k] = true
		}
		rms := make([]float64, S)
		for s := range S {
			for k := range K {
				if !isMassive[k] {
					rms[s] += float64(x[s*K+k]) * float64(x[s*K+k])
				}
			}
			rms[s] = math.Sqrt(rms[s])
		}
		medR := median64(rms)
		out := 0
		for _, v := range rms {
			if v > 2.5*medR {
				out++
			}
		}
		if out < 1 || out > S/10 {
			t.Errorf("%s: %d token-wise outlier rows of %d (rms > 2.5× median), want 1..%d", m, out, S, S/10)
		}
	}
}

// TestWeightsStructure: heavy-tailed weights with outlier columns and
// scattered large entries, mild activations without outlier channels.
func TestWeightsStructure(t *testing.T) {
	dir := gen(t, Options{Arch: "flux-dev", Scale: 0.125, Blocks: 1, Seed: 5, Samples: 64, Pattern: string(Weights)})
	r := open(t, dir)
	c := open(t, filepath.Join(dir, CalibFile))
	const m = "transformer_blocks.0.attn.to_q"
	amax, _ := floats(t, c, m+".input_absmax")
	medA := float64(median32(amax))
	for k, a := range amax {
		if float64(a) > 5*medA {
			t.Errorf("activation channel %d absmax %.3g = %.1f× the median: not mild", k, a, float64(a)/medA)
		}
	}
	w, sh := floats(t, r, m+".weight")
	N, K := int(sh[0]), int(sh[1])
	colRMS := make([]float64, K)
	for n := range N {
		for k := range K {
			colRMS[k] += float64(w[n*K+k]) * float64(w[n*K+k])
		}
	}
	medC := median64(colRMS)
	outCols := 0
	for _, v := range colRMS {
		if v > 16*medC { // ×8 in scale = ×64 in energy, well above the log-normal spread
			outCols++
		}
	}
	if outCols < 1 || outCols > max(1, K/256)+1 {
		t.Errorf("%d weight outlier columns, want about %d", outCols, max(1, K/256))
	}
	// Kurtosis of the entries after dividing by their column's RMS
	// (Student-t ν = 3 has none; a Gaussian has 3).
	var m2, m4 float64
	maxZ := 0.0
	for n := range N {
		for k := range K {
			z := float64(w[n*K+k]) / math.Sqrt(colRMS[k]/float64(N))
			m2 += z * z
			m4 += z * z * z * z
			maxZ = max(maxZ, math.Abs(z))
		}
	}
	m2 /= float64(N * K)
	m4 /= float64(N * K)
	if kurt := m4 / (m2 * m2); kurt < 8 {
		t.Errorf("kurtosis %.1f, want heavy tails (> 8)", kurt)
	}
	if maxZ < 12 { // a Gaussian of this size peaks near 5
		t.Errorf("largest entry %.1f column RMS, want scattered outliers (> 12)", maxZ)
	}
}

// TestFillHeavyLowRank: with flat columns, the top singular direction of a
// fillHeavy weight holds g_0²/(1+Σg²) ≈ 11% of the energy; a Student-t
// matrix alone would hold about (√N+√K)²/(N·K) ≈ 1.6%.
func TestFillHeavyLowRank(t *testing.T) {
	const n, k = 256, 256
	col := make([]float32, k)
	for i := range col {
		col[i] = 1
	}
	dst := make([]byte, 2*n*k)
	fillHeavy(dst, 1, "w", n, col)
	w := make([]float64, n*k)
	var fro float64
	for i := range w {
		w[i] = float64(math.Float32frombits(uint32(binary.LittleEndian.Uint16(dst[2*i:])) << 16))
		fro += w[i] * w[i]
	}
	// Power iteration on WᵀW.
	v := make([]float64, k)
	for i := range v {
		v[i] = 1 / math.Sqrt(k)
	}
	u := make([]float64, n)
	var s2 float64
	for range 50 {
		for i := range n {
			u[i] = 0
			for j := range k {
				u[i] += w[i*k+j] * v[j]
			}
		}
		nv := 0.0
		for j := range k {
			v[j] = 0
			for i := range n {
				v[j] += w[i*k+j] * u[i]
			}
			nv += v[j] * v[j]
		}
		s2 = math.Sqrt(nv) // = σ₁² once converged
		for j := range v {
			v[j] /= s2
		}
	}
	if share := s2 / fro; share < 0.05 || share > 0.25 {
		t.Errorf("top singular direction holds %.1f%% of the energy, want about 11%%", 100*share)
	}
}

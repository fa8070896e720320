package main

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/safetensors"
)

// calibPart writes an svdq-calib/1 file of layers "a" (K = 8) and "b"
// (K = 5, only when withB) whose statistics come from rows tokens of seeded
// random rows, reservoir-sampled to at most 16 rows. Row values encode
// (part, token) in their first column, so a merged sample can be traced to
// its source.
func calibPart(t *testing.T, dir, name string, part, rows int, withB bool) string {
	t.Helper()
	r := rand.New(rand.NewPCG(uint64(part), 7))
	c := calib.NewCollector(uint64(part), 16)
	for _, layer := range []struct {
		name string
		k    int
	}{{"a", 8}, {"b", 5}} {
		if layer.name == "b" && !withB {
			continue
		}
		x := make([]float32, rows*layer.k)
		for i := range rows {
			x[i*layer.k] = float32(part*10000 + i) // identity of the token
			for j := 1; j < layer.k; j++ {
				x[i*layer.k+j] = float32(r.NormFloat64() * float64(1+part*j))
			}
		}
		c.Observe(layer.name, x, rows, layer.k)
	}
	path := filepath.Join(dir, name)
	if err := calib.Write(path, c.Stats()); err != nil {
		t.Fatal(err)
	}
	return path
}

func readCalib(t *testing.T, path string) map[string]*calib.Stats {
	t.Helper()
	f, err := calib.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]*calib.Stats{}
	for _, n := range f.Names() {
		if out[n], err = f.Layer(n); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// TestCalibMergeAssociative merges three files as (A+B)+C, A+(B+C) and
// A+B+C: absmax, token counts and sample counts must agree exactly, and
// every merged sample must be a row of one of the inputs.
func TestCalibMergeAssociative(t *testing.T) {
	dir := t.TempDir()
	a := calibPart(t, dir, "a.safetensors", 1, 40, true)
	b := calibPart(t, dir, "b.safetensors", 2, 100, false) // no layer "b": copied from the others
	c := calibPart(t, dir, "c.safetensors", 3, 7, true)    // fewer rows than the reservoir
	p := func(n string) string { return filepath.Join(dir, n) }
	mustRun(t, 0, "calib", "merge", a, b, "--out", p("ab.safetensors"))
	mustRun(t, 0, "calib", "merge", p("ab.safetensors"), c, "--out", p("ab_c.safetensors"))
	mustRun(t, 0, "calib", "merge", "--seed=9", "--out", p("bc.safetensors"), b, c) // flags first also work
	mustRun(t, 0, "calib", "merge", a, p("bc.safetensors"), "--out", p("a_bc.safetensors"), "--seed", "5")
	out, _ := mustRun(t, 0, "calib", "merge", a, b, c, "--out", p("abc.safetensors"))
	if !strings.Contains(out, "2 layers") {
		t.Errorf("summary %q does not report 2 layers", out)
	}

	inputs := []map[string]*calib.Stats{readCalib(t, a), readCalib(t, b), readCalib(t, c)}
	want := map[string]struct {
		count int64
		s     int
	}{"a": {147, 16}, "b": {47, 16}}
	var results []map[string]*calib.Stats
	for _, n := range []string{"ab_c.safetensors", "a_bc.safetensors", "abc.safetensors"} {
		results = append(results, readCalib(t, p(n)))
	}
	for layer, w := range want {
		// The statistics of the union, computed directly.
		var absmax []float32
		var rows [][]float32
		for _, in := range inputs {
			st := in[layer]
			if st == nil {
				continue
			}
			if absmax == nil {
				absmax = make([]float32, st.K)
			}
			for j, v := range st.AbsMax {
				absmax[j] = max(absmax[j], v)
			}
			for i := range st.S {
				rows = append(rows, st.Row(i))
			}
		}
		for i, res := range results {
			st := res[layer]
			if st == nil {
				t.Fatalf("merge %d: layer %s missing", i, layer)
			}
			if st.Count != w.count || st.S != w.s {
				t.Errorf("merge %d layer %s: count %d, S %d; want %d, %d", i, layer, st.Count, st.S, w.count, w.s)
			}
			if !slices.Equal(st.AbsMax, absmax) {
				t.Errorf("merge %d layer %s: absmax %v, want the elementwise max %v", i, layer, st.AbsMax, absmax)
			}
			seen := map[float32]bool{}
			for r := range st.S {
				row := st.Row(r)
				if seen[row[0]] {
					t.Errorf("merge %d layer %s: token %v sampled twice", i, layer, row[0])
				}
				seen[row[0]] = true
				if !slices.ContainsFunc(rows, func(x []float32) bool { return slices.Equal(x, row) }) {
					t.Errorf("merge %d layer %s: sample row %v is no input's row", i, layer, row)
				}
			}
		}
	}
}

// TestCalibMergeBadInputs: every bad input exits 2 with a message naming
// the offending file, and leaves no output file.
func TestCalibMergeBadInputs(t *testing.T) {
	dir := t.TempDir()
	a := calibPart(t, dir, "a.safetensors", 1, 20, true)
	p := func(n string) string { return filepath.Join(dir, n) }

	// Layer "a" with K = 9 instead of 8.
	wide := &calib.Stats{K: 9, S: 1, Count: 1, AbsMax: make([]float32, 9), Samples: make([]float32, 9)}
	if err := calib.Write(p("wide.safetensors"), map[string]*calib.Stats{"a": wide}); err != nil {
		t.Fatal(err)
	}
	// A safetensors file that is not a calibration file.
	if err := safetensors.WriteFile(p("model.safetensors"), []safetensors.Tensor{{
		Spec: safetensors.Spec{Name: "w", DType: safetensors.F32, Shape: []int64{1}}, Data: make([]byte, 4)}}, nil); err != nil {
		t.Fatal(err)
	}
	// A calibration file whose sample exceeds its absmax, and one with a NaN.
	rewrite(t, a, p("over.safetensors"), func(ts *safetensors.Tensor) bool {
		if ts.Name == "a.input_samples" {
			putValue(ts, 3, 1e6)
		}
		return true
	})
	rewrite(t, a, p("nan.safetensors"), func(ts *safetensors.Tensor) bool {
		if ts.Name == "a.input_absmax" {
			putValue(ts, 2, float32(math.NaN()))
		}
		return true
	})
	// A truncated file.
	raw, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("short.safetensors"), raw[:len(raw)-3], 0o644); err != nil {
		t.Fatal(err)
	}

	out := p("out.safetensors")
	cases := []struct {
		name string
		args []string
		want string // in stderr
	}{
		{"no inputs", []string{"--out", out}, "no input files"},
		{"no --out", []string{a}, "out"},
		{"missing file", []string{a, p("nope.safetensors"), "--out", out}, "nope.safetensors"},
		{"width mismatch", []string{a, p("wide.safetensors"), "--out", out}, "wide.safetensors"},
		{"not a calibration file", []string{a, p("model.safetensors"), "--out", out}, "model.safetensors"},
		{"sample above absmax", []string{a, p("over.safetensors"), "--out", out}, "over.safetensors"},
		{"NaN absmax", []string{p("nan.safetensors"), a, "--out", out}, "nan.safetensors"},
		{"truncated", []string{a, p("short.safetensors"), "--out", out}, "short.safetensors"},
		{"output is an input", []string{a, p("wide.safetensors"), "--out", a}, "also an input"},
		{"unknown flag", []string{a, "--bogus", "--out", out}, "--bogus"},
		{"bad seed", []string{a, "--seed", "x", "--out", out}, "--seed"},
		{"flag without value", []string{a, "--out"}, "needs a value"},
		{"output directory missing", []string{a, "--out", p("no/such/dir/out.safetensors")}, "no/such/dir"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := os.ReadFile(a)
			_, e, code := svdq(t, append([]string{"calib", "merge"}, tc.args...)...)
			if code != exitBadInput {
				t.Fatalf("exit %d, want %d; stderr: %s", code, exitBadInput, e)
			}
			if !strings.Contains(e, tc.want) {
				t.Errorf("stderr %q does not mention %q", e, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("%s was written", out)
				os.Remove(out)
			}
			if after, _ := os.ReadFile(a); !slices.Equal(before, after) {
				t.Errorf("input %s was modified", a)
			}
			entries, _ := os.ReadDir(dir)
			for _, en := range entries {
				if strings.Contains(en.Name(), "tmp") || strings.HasPrefix(en.Name(), ".") {
					t.Errorf("left a temporary file %s", en.Name())
				}
			}
		})
	}
}

// TestCalibCounts: an input_count that is negative or past calib.MaxCount
// (2⁶³−1 overflowed calib merge, whose error then named another file, while
// quantize and check took the file) is refused by every command that reads
// calibration files, with one line naming the file and the tensor; counts
// valid alone whose sum is not are refused by calib merge, naming the file
// that tips the sum. Exit 2, nothing written, the inputs unchanged.
func TestCalibCounts(t *testing.T) {
	m, cal := tinyModel(t)
	q := tinyQuantized(t)
	dir := t.TempDir()
	const tensor = "transformer_blocks.0.attn.to_q.input_count"
	withCount := func(name string, c uint64) string {
		p := filepath.Join(dir, name)
		rewrite(t, cal, p, func(ts *safetensors.Tensor) bool {
			if ts.Name == tensor {
				binary.LittleEndian.PutUint64(ts.Data, c)
			}
			return true
		})
		return p
	}
	huge := withCount("huge.safetensors", math.MaxInt64)
	neg := withCount("negative.safetensors", math.MaxUint64) // -1
	full := withCount("full.safetensors", calib.MaxCount)
	full2 := withCount("full2.safetensors", calib.MaxCount)
	out := filepath.Join(dir, "out.safetensors")
	for _, c := range []struct {
		args []string
		file string // the file the error names
		want string
	}{
		{[]string{"calib", "merge", cal, huge, "--out", out}, huge, "exceeds the limit"},
		{[]string{"calib", "merge", huge, cal, "--out", out}, huge, "exceeds the limit"},
		{[]string{"calib", "merge", cal, neg, "--out", out}, neg, "count -1 is negative"},
		{[]string{"calib", "merge", full, full2, "--out", out}, full2, "would count more than"},
		{append([]string{"quantize", "--model", m, "--calib", huge, "--out", out}, fastFlags...), huge, "exceeds the limit"},
		{[]string{"quantize", "--model", m, "--calib", neg, "--out", out}, neg, "is negative"},
		{[]string{"check", "--model", q, "--reference", m, "--calib", huge}, huge, "exceeds the limit"},
		{[]string{"gpu-check", "--model", q, "--reference", m, "--calib", neg}, neg, "is negative"},
	} {
		before, _ := os.ReadFile(c.file)
		_, e := mustRun(t, exitBadInput, c.args...)
		oneLine(t, strings.Join(c.args, " "), e)
		if !strings.Contains(e, c.file+": tensor \""+tensor+"\": ") || !strings.Contains(e, c.want) {
			t.Errorf("%s: error %q does not name %s, tensor %s, %q", strings.Join(c.args[:2], " "), e, c.file, tensor, c.want)
		}
		absent(t, out)
		if after, _ := os.ReadFile(c.file); !slices.Equal(before, after) {
			t.Errorf("%s changed", c.file)
		}
	}
	mustRun(t, 0, "calib", "merge", full, "--out", out) // a count at the limit is valid
}

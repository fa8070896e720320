package quant

import (
	"fmt"
	"math"
	"reflect"
	"strings"
	"sync"
	"testing"
)

// Tolerances of the pipeline tests, in one place.
var pipeTol = struct {
	searchedVsPlain float64 // searched SVDQuant ≤ plain·(1+this): the grid holds (0.5, 0.5)
	fastVsFull      float64 // mean error of the fast search ≤ full·(1+this)
	orderingMiss    float64 // share of cases allowed to break svdquant < smoothquant < naive
	fusedVsSplit    float64 // a fused slice's error ≤ this × its error as a separate member
	gptqVsRTN       float64 // pipeline with GPTQ ≤ without·(1+this)
	gptqMustWin     float64 // where GPTQ must win: with ≤ without·(1−this)
	objectiveVsFile float64 // relative gap between the search objective and the stored layer's error
}{
	searchedVsPlain: 0.005,
	fastVsFull:      0.02,
	orderingMiss:    0.25,
	fusedVsSplit:    1.5,
	gptqVsRTN:       1e-9,
	gptqMustWin:     0.05,
	objectiveVsFile: 1e-4,
}

// accuracyRow is one case of the accuracy table: every method's relative
// output error on the calibration rows.
type accuracyRow struct {
	prec     Precision
	sc       synthCase
	full     Result
	fast     Result
	baseline map[string]float64
}

var (
	accuracyOnce sync.Once
	accuracyRows []accuracyRow
	accuracyErr  error
)

// accuracyTable runs the pipeline (full and fast search) and the baselines
// on every synthetic pattern, two shapes and both precisions, once per test
// binary.
func accuracyTable(t *testing.T) []accuracyRow {
	t.Helper()
	accuracyOnce.Do(func() {
		for _, prec := range []Precision{INT4, NVFP4} {
			for _, p := range synthPatterns {
				for _, sh := range [][2]int{{128, 256}, {384, 128}} {
					sc := newSynth(p, sh[0], sh[1], 128, 7, false)
					opt := Options{Precision: prec, Seed: 3}
					row := accuracyRow{prec: prec, sc: sc}
					res, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
					if err != nil {
						accuracyErr = err
						return
					}
					row.full = res[0]
					opt.Search = SearchFast
					if res, err = QuantizeGroup([]Input{sc.in}, false, sc.c, opt); err != nil {
						accuracyErr = err
						return
					}
					row.fast = res[0]
					opt.Search = SearchFull
					if row.baseline, err = Baselines(sc.in, false, sc.c, opt); err != nil {
						accuracyErr = err
						return
					}
					accuracyRows = append(accuracyRows, row)
				}
			}
		}
	})
	if accuracyErr != nil {
		t.Fatal(accuracyErr)
	}
	return accuracyRows
}

// svdquantBound is the largest relative error TestPipelineAccuracyTable
// accepts from SVDQuant (full and fast search) per precision and pattern:
// 1.2× the worst of the two shapes as measured (full search, seed 3):
// INT4 act-outliers 0.0050, heavy-tail 0.0746, lowrank-noise 0.0286;
// NVFP4 0.0043, 0.0551, 0.0243 (fast search within 2% of these).
var svdquantBound = map[Precision]map[synthPattern]float64{
	INT4:  {patActOutliers: 0.0060, patHeavyTail: 0.090, patLowRank: 0.035},
	NVFP4: {patActOutliers: 0.0052, patHeavyTail: 0.066, patLowRank: 0.030},
}

func TestPipelineAccuracyTable(t *testing.T) {
	for _, r := range accuracyTable(t) {
		bound, ok := svdquantBound[r.prec][r.sc.pattern]
		if !ok {
			t.Fatalf("%v %v: no error bound for pattern %q", r.prec, r.sc, r.sc.pattern)
		}
		for _, e := range []struct {
			search string
			err    float64
		}{{"full", r.full.RelError}, {"fast", r.fast.RelError}} {
			if !(e.err > 0 && e.err <= bound) {
				t.Errorf("%v %v: SVDQuant (%s search) error %.5f, want in (0, %.4f]", r.prec, r.sc, e.search, e.err, bound)
			}
		}
		b := r.baseline
		t.Logf("%-5v %-22v svdquant %.4f (α %.2f β %.2f, %2d iters) fast %.4f (%d cands) | naive %.4f smoothquant %.4f lowrank %.4f plain %.4f w4a16 %.4f",
			r.prec, r.sc, r.full.RelError, r.full.Alpha, r.full.Beta, r.full.Iters, r.fast.RelError, r.fast.Evaluated,
			b["naive_w4a4"], b["smoothquant_w4a4"], b["lowrank_w4a4"], b["svdquant_plain"], b["w4a16"])
		var keys []string
		for k, v := range b {
			keys = append(keys, k)
			if !(v > 0) || math.IsInf(v, 0) {
				t.Errorf("%v %v: baseline %s = %v", r.prec, r.sc, k, v)
			}
		}
		if len(keys) != len(BaselineKeys) {
			t.Errorf("%v %v: baseline keys %v, want %v", r.prec, r.sc, keys, BaselineKeys)
		}
		for _, k := range BaselineKeys {
			if _, ok := b[k]; !ok {
				t.Errorf("%v %v: baseline %s missing", r.prec, r.sc, k)
			}
		}
	}
}

func TestPipelineBeatsBaselines(t *testing.T) {
	rows := accuracyTable(t)
	miss := 0
	for _, r := range rows {
		svdq, sq, naive := r.full.RelError, r.baseline["smoothquant_w4a4"], r.baseline["naive_w4a4"]
		if !(svdq < sq && sq < naive) {
			miss++
			t.Logf("%v %v: svdquant %.4f, smoothquant %.4f, naive %.4f not in order", r.prec, r.sc, svdq, sq, naive)
		}
		if plain := r.baseline["svdquant_plain"]; svdq > plain*(1+pipeTol.searchedVsPlain) {
			t.Errorf("%v %v: searched SVDQuant %.5f worse than plain %.5f", r.prec, r.sc, svdq, plain)
		}
	}
	if float64(miss) > pipeTol.orderingMiss*float64(len(rows)) {
		t.Errorf("svdquant < smoothquant < naive fails in %d of %d cases", miss, len(rows))
	}
}

func TestPipelineNVFP4BeatsINT4(t *testing.T) {
	var sum [3]float64
	var cnt [3]int
	for _, r := range accuracyTable(t) {
		sum[r.prec] += r.full.RelError
		cnt[r.prec]++
	}
	i4, f4 := sum[INT4]/float64(cnt[INT4]), sum[NVFP4]/float64(cnt[NVFP4])
	t.Logf("mean relative error: INT4 %.4f, NVFP4 %.4f", i4, f4)
	if f4 > i4 {
		t.Errorf("NVFP4 mean error %.4f above INT4 %.4f", f4, i4)
	}
}

func TestSearchFastCloseToFull(t *testing.T) {
	var full, fast float64
	evals := 0
	rows := accuracyTable(t)
	for _, r := range rows {
		full += r.full.RelError
		fast += r.fast.RelError
		evals += r.fast.Evaluated
		if r.full.Evaluated != len(SmoothCandidates()) {
			t.Errorf("%v %v: full search evaluated %d candidates", r.prec, r.sc, r.full.Evaluated)
		}
	}
	t.Logf("mean error full %.5f, fast %.5f (%.1f candidates on average)", full/float64(len(rows)), fast/float64(len(rows)), float64(evals)/float64(len(rows)))
	if fast > full*(1+pipeTol.fastVsFull) {
		t.Errorf("fast search mean error %.5f more than %.0f%% above full %.5f", fast/float64(len(rows)), 100*pipeTol.fastVsFull, full/float64(len(rows)))
	}
	if evals >= len(rows)*len(SmoothCandidates())/2 {
		t.Errorf("fast search evaluated %d candidates over %d cases: not fast", evals, len(rows))
	}
}

// TestRefinementNeverWorse checks on every pattern that the refined branch
// is no worse than the one-SVD start, that the kept state is the one whose
// error is reported, and that the search objective agrees with the error
// of the layer as stored.
func TestRefinementNeverWorse(t *testing.T) {
	for _, prec := range []Precision{INT4, NVFP4} {
		for _, p := range synthPatterns {
			sc := newSynth(p, 256, 128, 128, 11, false)
			sc.in.Bias = nil
			for _, iters := range []int{1, DefaultIters} {
				name := fmt.Sprintf("%v/%v/iters=%d", prec, sc, iters)
				cfg := pipeConfig{prec: prec, dt: BF16, rank: 32, iters: iters, maxRows: 256}
				g := newGroupEval([]Input{sc.in}, false, sc.c, cfg)
				g.setCandidate(plainCandidate)
				m := g.mem[0]
				g.fit(m, m.what, refinePower)
				start := m.st.err
				n := g.refine(m)
				if n < 1 || n > iters {
					t.Errorf("%s: %d iterations run", name, n)
				}
				if m.st.err > start {
					t.Errorf("%s: refined error %.6g worse than start %.6g", name, m.st.err, start)
				}
				l := g.layer(m)
				if w := l.DequantizeWeight(); !reflect.DeepEqual(w, m.deq) {
					t.Errorf("%s: the working residual is not the stored one", name)
				}
				rel, err := layerRelError(l, sc.in, g.x, g.s, m.yref)
				if err != nil {
					t.Fatal(err)
				}
				if obj := relFromSquared(m.st.err, m.ynorm); math.Abs(rel-obj) > pipeTol.objectiveVsFile*obj {
					t.Errorf("%s: objective %.7f, stored layer %.7f", name, obj, rel)
				}
				t.Logf("%s: %d iterations, error %.5f → %.5f", name, n, relFromSquared(start, m.ynorm), rel)
			}
		}
	}
}

// TestShiftedBiasCorrection quantizes an MLP second linear (GELU input) with
// the unsigned shifted activations and checks the stored bias formula and
// that the kernel-exact emulation matches the float layer.
func TestShiftedBiasCorrection(t *testing.T) {
	for _, p := range []synthPattern{patActOutliers, patHeavyTail} {
		sc := newSynth(p, 128, 256, 128, 5, true)
		for _, prec := range []Precision{INT4, NVFP4} {
			name := fmt.Sprintf("%v/%v", prec, sc)
			res, err := QuantizeGroup([]Input{sc.in}, true, sc.c, Options{Precision: prec, Search: SearchFast})
			if err != nil {
				t.Fatal(err)
			}
			l := res[0].Layer
			if l.Unsigned != (prec == INT4) {
				t.Fatalf("%s: Unsigned = %v", name, l.Unsigned)
			}
			// The bias as stored: round(b − Σ_k deq[n,k]·shift/λ_k) (INT4), round(b) (NVFP4).
			w := l.DequantizeWeight()
			for n := 0; n < l.N; n++ {
				want := float64(sc.in.Bias[n])
				if l.Unsigned {
					for k := 0; k < l.K; k++ {
						want -= float64(w[n*l.K+k]) * ShiftINT4 / float64(l.Smooth[k])
					}
				}
				if got := l.Bias[n]; got != l.DType.Round(float32(want)) {
					t.Fatalf("%s: bias[%d] = %v, want round(%v)", name, n, got, want)
				}
			}
			s := sc.c.S
			ref := make([]float64, s*l.N)
			RefOutput(ref, sc.c.X, s, l.K, sc.in.W, l.N, sc.in.Bias)
			y := make([]float32, s*l.N)
			l.Forward(y, sc.c.X, s)
			with, off := RelError(y, ref), offsetShare(y, ref, s, l.N)
			if with > 1.5*res[0].RelError+0.002 {
				t.Errorf("%s: kernel-exact error %.4f, pipeline reported %.4f", name, with, res[0].RelError)
			}
			if !l.Unsigned {
				continue
			}
			// Without the correction the error gains a per-output offset.
			saved := l.Bias
			l.Bias = append([]float32(nil), sc.in.Bias...)
			l.DType.RoundAll(l.Bias)
			l.Forward(y, sc.c.X, s)
			l.Bias = saved
			without, offWithout := RelError(y, ref), offsetShare(y, ref, s, l.N)
			// The signed, unshifted quantization of the same layer.
			signed, err := QuantizeGroup([]Input{sc.in}, false, sc.c, Options{Precision: prec, Search: SearchFast})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: error %.4f (offset share %.2f) with the bias correction, %.4f (offset share %.2f) without; signed input %.4f",
				name, with, off, without, offWithout, signed[0].RelError)
			if with >= without || off > 0.5*offWithout {
				t.Errorf("%s: the bias correction does not remove the shift's offset", name)
			}
			if res[0].RelError > 1.5*signed[0].RelError {
				t.Errorf("%s: shifted error %.4f against %.4f with a signed input", name, res[0].RelError, signed[0].RelError)
			}
		}
	}
}

// offsetShare returns the share of the squared error ‖Y_q − Y‖² ([s, n])
// that is a constant offset per output (the mean over rows).
func offsetShare(yq []float32, ref []float64, s, n int) float64 {
	mean := make([]float64, n)
	var tot float64
	for i := 0; i < s; i++ {
		for j := 0; j < n; j++ {
			d := float64(yq[i*n+j]) - ref[i*n+j]
			mean[j] += d / float64(s)
			tot += d * d
		}
	}
	var off float64
	for _, m := range mean {
		off += float64(s) * m * m
	}
	return off / tot
}

// TestFusedQKV: a fused projection is one layer (one λ, one SVD, one
// branch); each slice's error stays close to its error as a separate member
// of a group (own SVD), which shares λ only.
func TestFusedQKV(t *testing.T) {
	const n, k = 128, 256
	var parts []synthCase
	fused := Input{Name: "qkv_proj", N: 3 * n, K: k}
	for i := 0; i < 3; i++ {
		sc := newSynth(patActOutliers, n, k, 128, uint64(20+i), false)
		parts = append(parts, sc)
		fused.W = append(fused.W, sc.in.W...)
		fused.Bias = append(fused.Bias, sc.in.Bias...)
	}
	c := parts[0].c // one input feeds q, k and v
	for _, prec := range []Precision{INT4, NVFP4} {
		opt := Options{Precision: prec, Search: SearchFast}
		rf, err := QuantizeGroup([]Input{fused}, false, c, opt)
		if err != nil {
			t.Fatal(err)
		}
		l := rf[0].Layer
		if l.N != 3*n || l.R != DefaultRank || len(l.Down) != DefaultRank*k || len(l.Smooth) != k {
			t.Fatalf("%v: fused layer N=%d R=%d down %d smooth %d", prec, l.N, l.R, len(l.Down), len(l.Smooth))
		}
		sep := []Input{parts[0].in, parts[1].in, parts[2].in}
		rg, err := QuantizeGroup(sep, false, c, opt)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < 3; i++ {
			if !reflect.DeepEqual(rg[i].Layer.Smooth, rg[0].Layer.Smooth) || rg[i].Alpha != rg[0].Alpha {
				t.Fatalf("%v: group members got different smoothing", prec)
			}
			if reflect.DeepEqual(rg[i].Layer.Down, rg[0].Layer.Down) {
				t.Fatalf("%v: group members share a down projection", prec)
			}
		}
		y := make([]float32, c.S*3*n)
		l.ForwardFast(y, c.X, c.S)
		for p := 0; p < 3; p++ {
			yq := make([]float32, c.S*n)
			for i := 0; i < c.S; i++ {
				copy(yq[i*n:(i+1)*n], y[i*3*n+p*n:i*3*n+(p+1)*n])
			}
			ref := make([]float64, c.S*n)
			RefOutput(ref, c.X, c.S, k, parts[p].in.W, n, parts[p].in.Bias)
			slice := RelError(yq, ref)
			t.Logf("%v slice %d: fused %.4f, separate %.4f", prec, p, slice, rg[p].RelError)
			if slice > pipeTol.fusedVsSplit*rg[p].RelError {
				t.Errorf("%v slice %d: fused error %.4f vs %.4f as a separate member", prec, p, slice, rg[p].RelError)
			}
		}
	}
}

func TestPipelineDeterministic(t *testing.T) {
	sc := newSynth(patHeavyTail, 128, 256, 128, 2, false)
	for _, opt := range []Options{{Seed: 9, Search: SearchFast}, {Seed: 9, Precision: NVFP4, Search: SearchFast, GPTQ: true}} {
		a, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
		if err != nil {
			t.Fatal(err)
		}
		b, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("%+v: two runs differ", opt)
		}
	}
}

// TestPipelineGPTQ: on every pattern GPTQ is never worse than
// round-to-nearest (it is kept only where it wins), and a layer where it is
// not kept is round-to-nearest's. Where GPTQ must win it is kept, with an
// error clearly below round-to-nearest's: heavy-tailed weights (large
// rounding errors to spread) with 32 calibration rows for K = 256 input
// channels. The Hessian has rank 32, so GPTQ can push each column's
// rounding error onto columns the rows cannot tell apart, and the objective
// is measured on those same rows (measured 7–10% lower for INT4 and NVFP4,
// seeds 1–3).
func TestPipelineGPTQ(t *testing.T) {
	for _, prec := range []Precision{INT4, NVFP4} {
		for _, p := range synthPatterns {
			sc := newSynth(p, 128, 256, 128, 4, false)
			opt := Options{Precision: prec, Search: SearchOff}
			rtn, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
			if err != nil {
				t.Fatal(err)
			}
			opt.GPTQ = true
			gq, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%v %v: RTN %.5f, with GPTQ %.5f (kept: %v)", prec, sc, rtn[0].RelError, gq[0].RelError, gq[0].GPTQ)
			if gq[0].RelError > rtn[0].RelError*(1+pipeTol.gptqVsRTN)+1e-6 {
				t.Errorf("%v %v: GPTQ pipeline %.5f worse than RTN %.5f", prec, sc, gq[0].RelError, rtn[0].RelError)
			}
			if !gq[0].GPTQ && !reflect.DeepEqual(gq[0].Layer, rtn[0].Layer) {
				t.Errorf("%v %v: GPTQ not kept, but the layer differs from RTN's", prec, sc)
			}
		}
	}
	for _, prec := range []Precision{INT4, NVFP4} {
		for seed := uint64(1); seed <= 2; seed++ {
			sc := newSynth(patHeavyTail, 128, 256, 32, seed, false)
			opt := Options{Precision: prec, Search: SearchOff}
			rtn, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
			if err != nil {
				t.Fatal(err)
			}
			opt.GPTQ = true
			gq, err := QuantizeGroup([]Input{sc.in}, false, sc.c, opt)
			if err != nil {
				t.Fatal(err)
			}
			r, g := rtn[0].RelError, gq[0].RelError
			t.Logf("%v %v seed %d, %d rows: RTN %.5f, with GPTQ %.5f (kept: %v, %.1f%% lower)", prec, sc, seed, sc.c.S, r, g, gq[0].GPTQ, 100*(1-g/r))
			if !gq[0].GPTQ || !(g < r*(1-pipeTol.gptqMustWin)) {
				t.Errorf("%v %v seed %d: GPTQ kept %v with error %.5f; want kept and below %.5f (RTN %.5f less %.0f%%)",
					prec, sc, seed, gq[0].GPTQ, g, r*(1-pipeTol.gptqMustWin), r, 100*pipeTol.gptqMustWin)
			}
		}
	}
}

func TestQuantizeGroupErrors(t *testing.T) {
	good := newSynth(patLowRank, 64, 128, 16, 1, false)
	mod := func(f func(in *Input, c *Calib)) ([]Input, Calib) {
		in, c := good.in, good.c
		in.W = append([]float32(nil), in.W...)
		c.X = append([]float32(nil), c.X...)
		f(&in, &c)
		return []Input{in}, c
	}
	cases := []struct {
		name string
		f    func(in *Input, c *Calib)
		want string
	}{
		{"short weight", func(in *Input, c *Calib) { in.W = in.W[:10] }, "weight has 10 values"},
		{"bias length", func(in *Input, c *Calib) { in.Bias = in.Bias[:3] }, "bias has 3 values"},
		{"nan weight", func(in *Input, c *Calib) { in.W[5] = float32(math.NaN()) }, "weight element 5"},
		{"calib rows", func(in *Input, c *Calib) { c.S = 17 }, "calibration input"},
		{"absmax", func(in *Input, c *Calib) { c.AbsMax = c.AbsMax[:5] }, "absmax has 5"},
		{"inf input", func(in *Input, c *Calib) { c.X[130] = float32(math.Inf(1)) }, "row 1 channel 2"},
	}
	for _, tc := range cases {
		ins, c := mod(tc.f)
		_, err := QuantizeGroup(ins, false, c, Options{Search: SearchOff, Iters: -1})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), good.in.Name) {
			t.Errorf("%s: error %v, want one naming %s with %q", tc.name, err, good.in.Name, tc.want)
		}
	}
	other := good.in
	other.Name, other.K, other.W = "other", 64, make([]float32, 64*64)
	if _, err := QuantizeGroup([]Input{good.in, other}, false, good.c, Options{}); err == nil || !strings.Contains(err.Error(), "other") {
		t.Errorf("mismatched K: error %v", err)
	}
}

// TestLayerValuesAsStored: every value of the result is what the file
// holds (16-bit fields fixed points of the dtype's rounding, NVFP4 scales
// E4M3 values), in bf16 and fp16.
func TestLayerValuesAsStored(t *testing.T) {
	sc := newSynth(patActOutliers, 128, 192, 64, 8, true)
	for _, dt := range []Float16{BF16, F16} {
		for _, prec := range []Precision{INT4, NVFP4} {
			res, err := QuantizeGroup([]Input{sc.in}, true, sc.c, Options{Precision: prec, DType: dt, Search: SearchFast})
			if err != nil {
				t.Fatal(err)
			}
			l := res[0].Layer
			name := fmt.Sprintf("%v/%v", prec, dt)
			if l.DType != dt || l.Validate() != nil {
				t.Fatalf("%s: dtype %v, validate %v", name, l.DType, l.Validate())
			}
			fields := map[string][]float32{"smooth": l.Smooth, "down": l.Down, "up": l.Up, "bias": l.Bias}
			if prec == INT4 {
				fields["scales"] = l.Scales
			} else {
				for i, s := range l.Scales {
					if E4M3ToF32(F32ToE4M3(s)) != s {
						t.Fatalf("%s: scale %d = %v is not an E4M3 value", name, i, s)
					}
				}
			}
			for f, v := range fields {
				for i, x := range v {
					if dt.Round(x) != x || math.IsInf(float64(x), 0) {
						t.Fatalf("%s: %s[%d] = %v is not a finite %v value", name, f, i, x, dt)
					}
				}
			}
			t.Logf("%s: error %.4f", name, res[0].RelError)
		}
	}
}

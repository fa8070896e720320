package tinydit

import (
	"math"
	"os"
	"testing"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/quant"
)

// TestDemoSmall runs the whole demo pipeline on the small model: checkpoint,
// calibration pass, both quantize jobs, the three baselines, evaluation.
// The ranking the demo exists to show must hold, and every file it names
// must exist.
func TestDemoSmall(t *testing.T) {
	rep, err := RunDemo(DemoOptions{Config: SmallConfig(), Dir: t.TempDir(), CalibSamples: 24, EvalSamples: 6,
		Batch: 4, Search: quant.SearchFast, Rank: 16, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	by := map[string]DemoMethod{}
	for _, m := range rep.Methods {
		t.Logf("%-18s bits %.2f layer %.4f output %.4f PSNR %.2f", m.Name, m.Bits, m.LayerError, m.OutputError, m.PSNR)
		if !(m.OutputError > 0 && m.OutputError < 1) || math.IsNaN(m.PSNR) || !(m.Bits > 4 && m.Bits < 16) {
			t.Errorf("%s: implausible row %+v", m.Name, m)
		}
		by[m.Name] = m
	}
	if len(by) != 5 {
		t.Fatalf("%d methods, want 5", len(by))
	}
	naive, sq, int4, fp4 := by[MethodNaive], by[MethodSmoothQuant], by[MethodSVDQuantINT], by[MethodSVDQuantFP4]
	if !(int4.PSNR > sq.PSNR && sq.PSNR > naive.PSNR && fp4.PSNR > sq.PSNR) {
		t.Errorf("PSNR ranking broken: naive %.2f, SmoothQuant %.2f, SVDQuant INT4 %.2f, NVFP4 %.2f",
			naive.PSNR, sq.PSNR, int4.PSNR, fp4.PSNR)
	}
	if !(int4.LayerError < sq.LayerError && sq.LayerError < naive.LayerError) {
		t.Errorf("layer error ranking broken: %v %v %v", naive.LayerError, sq.LayerError, int4.LayerError)
	}
	for _, f := range []string{rep.Checkpoint, rep.Calib, rep.INT4, rep.NVFP4} {
		if _, err := os.Stat(f); err != nil {
			t.Error(err)
		}
	}
	if rep.CalibRows != int64(24*rep.Config.ImageTokens()) {
		t.Errorf("calibration rows %d, want %d", rep.CalibRows, 24*rep.Config.ImageTokens())
	}
}

// TestEmulations: the fast and the kernel-exact emulation of the same
// quantized model agree up to the kernel's own 16-bit rounding: for W4A16
// within a tenth of the quantization error; for W4A4, whose exact INT4 path
// accumulates the groups in a 16-bit (here bf16) accumulator, within half
// of it.
func TestEmulations(t *testing.T) {
	cfg := SmallConfig()
	m, _ := New(cfg)
	dir := t.TempDir()
	path := dir + "/m.safetensors"
	if err := m.WriteCheckpoint(path); err != nil {
		t.Fatal(err)
	}
	plan, err := planOf(path)
	if err != nil {
		t.Fatal(err)
	}
	c := calib.NewCollector(1, 64)
	m.Calibrate(c, 1, 8, 4)
	in := NewBatch(cfg, 2, 3)
	ref := m.Forward(in, Run{})
	for _, b := range []Baseline{NaiveW4A4, W4A16} {
		fast, err := m.BuildBaseline(plan, c.Stats(), b, quant.Options{}, Fast)
		if err != nil {
			t.Fatal(err)
		}
		exact, err := m.BuildBaseline(plan, c.Stats(), b, quant.Options{}, Exact)
		if err != nil {
			t.Fatal(err)
		}
		yf, ye := m.Forward(in, Run{Layers: fast.Layers}), m.Forward(in, Run{Layers: exact.Layers})
		qerr, gap := relDiff(yf, ref), relDiff(ye, yf)
		t.Logf("baseline %d: quantization error %.4f, fast vs exact %.5f", b, qerr, gap)
		limit := 0.5
		if b == W4A16 {
			limit = 0.1
		}
		if !(gap < limit*qerr) {
			t.Errorf("baseline %d: fast and exact emulation differ by %.4f, quantization error %.4f", b, gap, qerr)
		}
	}
}

// TestNaiveShiftedBias: the naive INT4 layer of an MLP second linear takes
// the kernel's unsigned shifted input (x + 0.171875 quantized unsigned);
// its bias correction must cancel the shift. Against y = x·Ŵᵀ + b with the
// dequantized weight Ŵ, the per-channel mean error over the calibration
// rows is then only the bias of rounding the activations (GELU outputs
// crowd near 0, where the unsigned grid rounds them down: about an eighth
// of the shift term here), while without the correction it is the full
// −Ŵ·0.171875.
func TestNaiveShiftedBias(t *testing.T) {
	cfg := SmallConfig()
	m, _ := New(cfg)
	c := calib.NewCollector(1, 64)
	m.Calibrate(c, 1, 4, 4)
	st := c.Stats()["transformer_blocks.0.ff.net.2"]
	d := m.Layer("transformer_blocks.0.mlp_fc2")
	in := quant.Input{Name: d.Name, W: d.W, N: d.N, K: d.K, Bias: d.B}
	l := naiveLayer(in, true, quant.INT4, quant.BF16)
	if !l.Unsigned {
		t.Fatal("naive INT4 layer of a shifted input is not unsigned")
	}
	wq := l.DequantizeWeight()
	ideal := make([]float64, st.S*d.N)
	quant.RefOutput(ideal, st.Samples, st.S, d.K, wq, d.N, d.B)
	shiftNorm := 0.0 // ‖Ŵ·1·shift‖
	for n := range d.N {
		var s float64
		for _, w := range wq[n*d.K : (n+1)*d.K] {
			s += float64(w) * quant.ShiftINT4
		}
		shiftNorm += s * s
	}
	shiftNorm = math.Sqrt(shiftNorm)
	meanErr := func() float64 {
		y := make([]float32, st.S*d.N)
		l.ForwardFast(y, st.Samples, st.S)
		var e float64
		for n := range d.N {
			var s float64
			for i := range st.S {
				s += float64(y[i*d.N+n]) - ideal[i*d.N+n]
			}
			s /= float64(st.S)
			e += s * s
		}
		return math.Sqrt(e) / shiftNorm
	}
	good := meanErr()
	copy(l.Bias, d.B) // drop the correction
	bad := meanErr()
	t.Logf("mean error / ‖Ŵ·shift‖: %.4f with the correction, %.4f without", good, bad)
	if !(good < 0.25*bad && math.Abs(bad-1) < 0.15) {
		t.Errorf("mean error / ‖Ŵ·shift‖: %.4f with the bias correction (want < a quarter of the uncorrected), %.4f without (want 1 ± 0.15)", good, bad)
	}
	for _, prec := range []quant.Precision{quant.INT4, quant.NVFP4} {
		if err := naiveLayer(in, false, prec, quant.BF16).Validate(); err != nil {
			t.Errorf("%v: %v", prec, err)
		}
	}
}

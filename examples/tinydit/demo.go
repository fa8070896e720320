package tinydit

import (
	"fmt"
	"math"
	"path/filepath"
	"time"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model"
)

// DemoOptions configure RunDemo. Zero fields take the defaults noted.
type DemoOptions struct {
	Config       Config           // the model; zero: DefaultConfig()
	Dir          string           // existing directory for the files the demo writes
	CalibSamples int              // calibration samples; 0: 256
	EvalSamples  int              // held-out samples; 0: 32
	Batch        int              // samples per forward pass; 0: 16
	Search       quant.SearchMode // smoothing search of every searched variant
	Rank         int              // low-rank branch of the SVDQuant variants; 0: quant.DefaultRank
	Emulation    Emulation        // how quantized layers are evaluated
	Workers      int              // quantize job workers; 0: the job's default
	Seed         uint64           // seed of the inputs, the calibration reservoirs and the baselines' randomized SVDs
	// Log, when set, receives one line per stage as the demo runs.
	Log func(format string, args ...any)
}

// DemoMethod is one row of the demo's table.
type DemoMethod struct {
	Name string
	// LayerError is the mean over the 4-bit layers of the relative output
	// error on their calibration rows (quant.Result.RelError).
	LayerError float64
	// OutputError is ‖Ŷ − Y‖_F / ‖Y‖_F of the final output (the predicted
	// velocity of every held-out sample) against the 16-bit model.
	OutputError float64
	// PSNR is 10·log10(peak² / MSE) of the final output, with peak =
	// max(Y) − min(Y) over the held-out outputs of the 16-bit model (the
	// output's dynamic range, as for an image with values in [min, max]).
	PSNR    float64
	Seconds float64 // time to quantize the whole model (its quantize job, or its in-memory build)
	// Bits is the packed size (formats/nunchaku) of the quantized layers in
	// bits per weight: branch, scales, smoothing vector, bias and the W4A16
	// adaLN layers included.
	Bits float64
}

// DemoReport is what RunDemo measured.
type DemoReport struct {
	Config                    Config
	Params                    int64 // parameters of the model
	QuantParams               int64 // weights in 4-bit layers (W4A4 and W4A16)
	CalibRows                 int64 // rows (image tokens) transformer_blocks.0.attn.to_q saw in the calibration pass
	CalibSamples, EvalSamples int
	Search                    quant.SearchMode
	Emulation                 Emulation
	Peak                      float64 // dynamic range of the 16-bit model's held-out output
	Methods                   []DemoMethod
	// Stage times in seconds.
	BuildSeconds, CalibSeconds, EvalSeconds, TotalSeconds float64
	// Files written in Dir.
	Checkpoint, Calib, INT4, NVFP4 string
}

// Demo method names, in table order.
const (
	MethodNaive       = "naive W4A4"
	MethodSmoothQuant = "SmoothQuant W4A4"
	MethodSVDQuantINT = "SVDQuant INT4"
	MethodSVDQuantFP4 = "SVDQuant NVFP4"
	MethodW4A16       = "W4A16"
)

// RunDemo builds the model, writes it as a bf16 checkpoint, runs the
// calibration pass and writes its svdq-calib/1 file, quantizes the
// checkpoint with the quantize job of quant/model (INT4 and NVFP4, rank 32,
// opt.Search), builds the baselines (naive W4A4, SmoothQuant W4A4, W4A16)
// in memory from the same plan and statistics, and evaluates every variant
// on held-out samples against the 16-bit model. Errors come from files or
// from the quantize job.
func RunDemo(opt DemoOptions) (*DemoReport, error) {
	start := time.Now()
	if opt.Config == (Config{}) {
		opt.Config = DefaultConfig()
	}
	opt.CalibSamples = orDefault(opt.CalibSamples, 256)
	opt.EvalSamples = orDefault(opt.EvalSamples, 32)
	opt.Batch = orDefault(opt.Batch, 16)
	logf := opt.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	rep := &DemoReport{Config: opt.Config, Search: opt.Search, Emulation: opt.Emulation,
		CalibSamples: opt.CalibSamples, EvalSamples: opt.EvalSamples,
		Checkpoint: filepath.Join(opt.Dir, "tinydit.safetensors"),
		Calib:      filepath.Join(opt.Dir, "calib.safetensors"),
		INT4:       filepath.Join(opt.Dir, "tinydit-int4.safetensors"),
		NVFP4:      filepath.Join(opt.Dir, "tinydit-nvfp4.safetensors")}

	m, err := New(opt.Config)
	if err != nil {
		return nil, err
	}
	if err := m.WriteCheckpoint(rep.Checkpoint); err != nil {
		return nil, err
	}
	rep.Params = m.Params()
	rep.BuildSeconds = time.Since(start).Seconds()
	logf("model: %d double + %d single blocks, width %d, %.2f M parameters -> %s",
		opt.Config.Double, opt.Config.Single, opt.Config.Dim, float64(rep.Params)/1e6, rep.Checkpoint)

	t := time.Now()
	col := calib.NewCollector(opt.Seed, quant.DefaultMaxRows)
	m.Calibrate(col, opt.Seed, opt.CalibSamples, opt.Batch)
	stats := col.Stats()
	if err := calib.Write(rep.Calib, stats); err != nil {
		return nil, err
	}
	if st := stats["transformer_blocks.0.attn.to_q"]; st != nil {
		rep.CalibRows = st.Count
	}
	rep.CalibSeconds = time.Since(t).Seconds()
	logf("calibration: %d samples, %d layer inputs, %d rows per image-stream input (%.1f s) -> %s",
		opt.CalibSamples, len(stats), rep.CalibRows, rep.CalibSeconds, rep.Calib)

	plan, err := planOf(rep.Checkpoint)
	if err != nil {
		return nil, err
	}
	for _, l := range plan.Layers {
		rep.QuantParams += int64(l.N) * int64(l.K)
	}

	// The variants, in table order.
	var variants []*Variant
	qopt := quant.Options{Search: opt.Search, DType: quant.BF16, Seed: opt.Seed}
	build := func(name string, b Baseline, prec quant.Precision) error {
		t := time.Now()
		o := qopt
		o.Precision = prec
		v, err := m.BuildBaseline(plan, stats, b, o, opt.Emulation)
		if err != nil {
			return err
		}
		rep.Methods = append(rep.Methods, DemoMethod{Name: name, LayerError: v.LayerError,
			Seconds: time.Since(t).Seconds(), Bits: v.Bits()})
		variants = append(variants, v)
		logf("%s: built in memory in %.1f s", name, time.Since(t).Seconds())
		return nil
	}
	job := func(name, out string, prec quant.Precision) error {
		t := time.Now()
		qr, err := model.Quantize(model.QuantizeOptions{
			PlanOptions: model.PlanOptions{Model: rep.Checkpoint, Precision: prec, Rank: opt.Rank},
			Calib:       rep.Calib, Out: out, Search: opt.Search, Workers: opt.Workers,
			Tool: "svdq demo"})
		if err != nil {
			return err
		}
		v, err := LoadQuantized(out, opt.Emulation)
		if err != nil {
			return err
		}
		var sum float64
		var n int
		for _, l := range qr.Layers {
			if l.Precision != "w4a16" {
				sum += l.RelError
				n++
			}
		}
		rep.Methods = append(rep.Methods, DemoMethod{Name: name, LayerError: sum / float64(max(n, 1)),
			Seconds: time.Since(t).Seconds(), Bits: v.Bits()})
		variants = append(variants, v)
		logf("%s: quantize job %.1f s, %d layers -> %s", name, time.Since(t).Seconds(), len(qr.Layers), out)
		return nil
	}
	if err := build(MethodNaive, NaiveW4A4, quant.INT4); err != nil {
		return nil, err
	}
	if err := build(MethodSmoothQuant, SmoothQuantW4A4, quant.INT4); err != nil {
		return nil, err
	}
	if err := job(MethodSVDQuantINT, rep.INT4, quant.INT4); err != nil {
		return nil, err
	}
	if err := job(MethodSVDQuantFP4, rep.NVFP4, quant.NVFP4); err != nil {
		return nil, err
	}
	if err := build(MethodW4A16, W4A16, quant.INT4); err != nil {
		return nil, err
	}

	t = time.Now()
	held := NewBatch(opt.Config, opt.Seed+1, opt.EvalSamples)
	ref := m.forwardBatched(held, Run{}, opt.Batch)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range ref {
		lo, hi = math.Min(lo, float64(v)), math.Max(hi, float64(v))
	}
	rep.Peak = hi - lo
	for i, v := range variants {
		out := m.forwardBatched(held, Run{Layers: v.Layers}, opt.Batch)
		rep.Methods[i].OutputError, rep.Methods[i].PSNR = compare(out, ref, rep.Peak)
	}
	rep.EvalSeconds = time.Since(t).Seconds()
	logf("evaluation: %d held-out samples × %d variants (%.1f s)", opt.EvalSamples, len(variants)+1, rep.EvalSeconds)
	rep.TotalSeconds = time.Since(start).Seconds()
	return rep, nil
}

func orDefault(v, d int) int {
	if v <= 0 {
		return d
	}
	return v
}

// planOf plans the checkpoint at path with the flux preset it is detected as.
func planOf(path string) (*preset.Plan, error) {
	r, err := safetensors.Open(path)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	t := tableOf{r}
	fam, err := preset.Detect(t)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	p, err := fam.Plan(t, preset.Options{})
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return p, nil
}

// tableOf adapts a safetensors.Reader to preset.Table.
type tableOf struct{ r safetensors.Reader }

func (t tableOf) Names() []string { return t.r.Names() }
func (t tableOf) Shape(name string) ([]int64, bool) {
	i, ok := t.r.Info(name)
	return i.Shape, ok
}

// forwardBatched runs Forward over in, batch samples at a time, and
// concatenates the outputs.
func (m *Model) forwardBatched(in *Batch, run Run, batch int) []float32 {
	var out []float32
	for lo := 0; lo < in.N; lo += batch {
		out = append(out, m.Forward(in.Slice(m.cfg, lo, min(in.N, lo+batch)), run)...)
	}
	return out
}

// compare returns ‖y − ref‖/‖ref‖ and 10·log10(peak²/MSE) (+Inf when equal,
// NaN when y is not finite).
func compare(y, ref []float32, peak float64) (rel, psnr float64) {
	var num, den float64
	for i, r := range ref {
		d := float64(y[i]) - float64(r)
		num += d * d
		den += float64(r) * float64(r)
	}
	if !finite(y) {
		return math.NaN(), math.NaN()
	}
	mse := num / float64(len(ref))
	return math.Sqrt(num / den), 10 * math.Log10(peak*peak/mse)
}

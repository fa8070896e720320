package model

import (
	"os"
	"path/filepath"
	"time"

	"github.com/svdq/svdq/formats/synth"
	"github.com/svdq/svdq/quant"
)

// DemoOptions size the demo. The zero value is the README's demo: a
// FLUX.1-dev skeleton at scale 0.125 (width 384) with 1 double and 2
// single blocks, 128 calibration rows, fast smoothing search and at most 10
// refinement iterations, INT4 and NVFP4.
type DemoOptions struct {
	Dir     string  // work directory; "" makes (and removes) a temporary one
	Scale   float64 // 0: 0.125
	Blocks  int     // 0: 1
	Samples int     // calibration rows; 0: 128
	Iters   int     // 0: 10
	// FullSearch runs the reference's 39-candidate smoothing search
	// instead of the fast one.
	FullSearch bool
	Workers    int
	// OnStep, when set, is called before each step with a short
	// description ("synth", "quantize int4", "check int4", ...).
	OnStep func(step string)
}

// DemoRun is one precision's result.
type DemoRun struct {
	Precision string
	Quantize  *QuantizeReport
	Check     *CheckReport
	QuantSecs float64
	CheckSecs float64
}

// DemoReport is what Demo measured.
type DemoReport struct {
	Family   string
	Width    int
	Layers   int
	Runs     []DemoRun
	SynthSec float64
	Seconds  float64
}

// Demo synthesizes a small FLUX checkpoint with its calibration file,
// quantizes it through Quantize in INT4 and NVFP4, and checks each output
// with Check: the whole pipeline end to end, without downloads.
func Demo(opt DemoOptions) (*DemoReport, error) {
	start := time.Now()
	step := func(s string) {
		if opt.OnStep != nil {
			opt.OnStep(s)
		}
	}
	if opt.Scale == 0 {
		opt.Scale = 0.125
	}
	if opt.Blocks == 0 {
		opt.Blocks = 1
	}
	if opt.Samples == 0 {
		opt.Samples = 128
	}
	if opt.Iters == 0 {
		opt.Iters = 10
	}
	search := quant.SearchFast
	if opt.FullSearch {
		search = quant.SearchFull
	}
	dir := opt.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "svdq-demo-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	step("synth")
	if err := synth.Generate(synth.Options{Arch: "flux-dev", Out: dir, Scale: opt.Scale, Blocks: opt.Blocks,
		Samples: opt.Samples, Seed: 1}); err != nil {
		return nil, err
	}
	rep := &DemoReport{Family: "flux-dev", SynthSec: time.Since(start).Seconds()}
	model, cal := filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	for _, p := range []quant.Precision{quant.INT4, quant.NVFP4} {
		out := filepath.Join(dir, "flux-"+p.String()+".safetensors")
		step("quantize " + p.String())
		t0 := time.Now()
		q, err := Quantize(QuantizeOptions{PlanOptions: PlanOptions{Model: model, Precision: p},
			Calib: cal, Out: out, Search: search, Iters: opt.Iters, Workers: opt.Workers, Tool: "svdq demo"})
		if err != nil {
			return nil, err
		}
		run := DemoRun{Precision: p.String(), Quantize: q, QuantSecs: time.Since(t0).Seconds()}
		step("check " + p.String())
		t0 = time.Now()
		if run.Check, _, err = Check(CheckOptions{Model: out, Reference: model, Calib: cal,
			Search: search, Workers: opt.Workers}); err != nil {
			return nil, err
		}
		run.CheckSecs = time.Since(t0).Seconds()
		rep.Runs = append(rep.Runs, run)
		rep.Layers = len(q.Layers)
		if l, ok := q.Plan.preset.Layer("transformer_blocks.0.qkv_proj"); ok {
			rep.Width = l.K
		}
	}
	rep.Seconds = time.Since(start).Seconds()
	return rep, nil
}

package model

import (
	"path/filepath"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
)

// TestCheckBFLCalib (issue 24): check looks calibration keys up as
// quantize does (findCalib: the recorded key, then the preset's diffusers
// and BFL names), so a calibration file in BFL naming that quantize
// accepts, check accepts too.
func TestCheckBFLCalib(t *testing.T) {
	gen := func(naming string) (model, cal string) {
		dir := t.TempDir()
		if err := synth.Generate(synth.Options{Arch: "flux-dev", Out: dir, Scale: 0.04, Blocks: 1, Samples: 32, Seed: 1, Naming: naming}); err != nil {
			t.Fatal(err)
		}
		return filepath.Join(dir, synth.ModelFile), filepath.Join(dir, synth.CalibFile)
	}
	bflModel, bflCalib := gen("bfl")
	diffModel, diffCalib := gen("diffusers")

	// A BFL checkpoint with its BFL-named calibration file (synth names
	// the modules as the checkpoint does: double_blocks.0.img_attn.qkv).
	out := filepath.Join(t.TempDir(), "q.safetensors")
	if _, err := Quantize(fastOptions(bflModel, bflCalib, out)); err != nil {
		t.Fatal(err)
	}
	f, err := safetensors.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	refs, err := parseCalibRefs(f.Metadata()[MetaCalib])
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if r := refs["transformer_blocks.0.qkv_proj"]; r.Key != "double_blocks.0.img_attn.qkv" {
		t.Fatalf("recorded calibration key %+v, want the BFL name", r)
	}
	rep, _, err := Check(CheckOptions{Model: out, Reference: bflModel, Calib: bflCalib, Search: 1, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Passed || len(rep.Layers) != 20 {
		t.Fatalf("passed %v, %d layers", rep.Passed, len(rep.Layers))
	}

	// A file that records diffusers keys, checked with the BFL-named file
	// of the same statistics: quantize accepts either file for this
	// model, and so does check.
	out2 := filepath.Join(t.TempDir(), "q.safetensors")
	if _, err := Quantize(fastOptions(diffModel, diffCalib, out2)); err != nil {
		t.Fatal(err)
	}
	if _, err := Quantize(fastOptions(diffModel, bflCalib, filepath.Join(t.TempDir(), "q.safetensors"))); err != nil {
		t.Fatalf("quantize with the BFL-named file: %v", err)
	}
	rep2, _, err := Check(CheckOptions{Model: out2, Reference: diffModel, Calib: bflCalib, Search: 1, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !rep2.Passed || len(rep2.Layers) != 20 {
		t.Fatalf("passed %v, %d layers", rep2.Passed, len(rep2.Layers))
	}

	// And the other way round: the BFL file's recorded BFL keys are not
	// in the diffusers-named file, whose diffusers names check finds.
	rep3, _, err := Check(CheckOptions{Model: out, Reference: bflModel, Calib: diffCalib, Search: 1, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !rep3.Passed || len(rep3.Layers) != 20 {
		t.Fatalf("passed %v, %d layers", rep3.Passed, len(rep3.Layers))
	}
}

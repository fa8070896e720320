package model

import (
	"path/filepath"
	"testing"
)

func TestQuantizeTiny(t *testing.T) {
	model, cal := tinyModel(t)
	out := filepath.Join(t.TempDir(), "q.safetensors")
	rep, err := Quantize(fastOptions(model, cal, out))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.Layers {
		t.Logf("%-45s %v %s r%d a%.2f b%.2f err %.4f", l.Name, l.Shape, l.Precision, l.Rank, l.Alpha, l.Beta, l.RelError)
	}
	t.Logf("%+v", rep.Totals)
}

func TestCheckTiny(t *testing.T) {
	model, cal := tinyModel(t)
	out := filepath.Join(t.TempDir(), "q.safetensors")
	if _, err := Quantize(fastOptions(model, cal, out)); err != nil {
		t.Fatal(err)
	}
	rep, spec, err := Check(CheckOptions{Model: out, Reference: model, Calib: cal, Search: 1, Workers: 2,
		Spectrum: "transformer_blocks.0.qkv_proj"})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range rep.Layers {
		t.Logf("%-45s %s %v", l.Name, l.Precision, l.RelError)
	}
	t.Logf("%+v %v", rep.Worst, rep.Passed)
	t.Logf("%v", spec.Smoothed[:5])
}

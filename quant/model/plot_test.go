package model

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestPlotErrors(t *testing.T) {
	r := &CheckReport{Layers: []CheckLayer{
		{Name: "a.qkv_proj", Precision: "int4", RelError: map[string]float64{MethodSVDQuant: 0.03, MethodNaive: 0.2, MethodSmoothQuant: 0.1, MethodLowRank: 0.12, MethodSVDQuantPlain: 0.04, MethodW4A16: 0.01}},
		{Name: "a.norm1.linear", Precision: "w4a16", RelError: map[string]float64{MethodSVDQuant: 0.01, MethodW4A16: 0.01}},
	}}
	dir := t.TempDir()
	for _, name := range []string{"e.png", "e.svg"} {
		path := filepath.Join(dir, name)
		if err := PlotErrors(r, path); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if name == "e.png" && !bytes.HasPrefix(b, []byte("\x89PNG")) {
			t.Errorf("%s: not a PNG", name)
		}
		if name == "e.svg" && !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s: not an SVG", name)
		}
	}
	if err := PlotErrors(r, filepath.Join(dir, "e.gif")); err == nil {
		t.Error("gif accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, "e.gif")); err == nil {
		t.Error("file written for a refused format")
	}
}

func TestPlotSpectrum(t *testing.T) {
	s := &Spectrum{Layer: "x", Before: []float64{100, 10, 1, 0.1}, Smoothed: []float64{50, 20, 2, 0.5}, Rank: 2}
	path := filepath.Join(t.TempDir(), "s.png")
	if err := PlotSpectrum(s, path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() < 1000 {
		t.Fatalf("spectrum plot: %v %v", fi, err)
	}
}

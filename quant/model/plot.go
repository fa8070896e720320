package model

import (
	"bytes"
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// methodColors gives each method key a fixed color so plots compare.
var methodColors = map[string]color.Color{
	MethodSVDQuant:      color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	MethodSVDQuantPlain: color.RGBA{R: 0x9e, G: 0xc3, B: 0xe6, A: 0xff},
	MethodNaive:         color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	MethodSmoothQuant:   color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
	MethodLowRank:       color.RGBA{R: 0x94, G: 0x67, B: 0xbd, A: 0xff},
	MethodW4A16:         color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
}

// plotFormat returns the image format of path from its extension (png or
// svg) or an error naming the path.
func plotFormat(path string) (string, error) {
	ext := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
	switch ext {
	case "png", "svg":
		return ext, nil
	}
	return "", fmt.Errorf("%s: plot format %q not supported (use .png or .svg)", path, filepath.Ext(path))
}

// savePlot renders p at w×h into path; the file appears only when rendering
// succeeded.
func savePlot(p *plot.Plot, w, h vg.Length, path string) error {
	format, err := plotFormat(path)
	if err != nil {
		return err
	}
	wt, err := p.WriterTo(w, h, format)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// PlotErrors draws the per-layer relative errors of every method in r as a
// grouped bar chart (one group per layer, one bar per method, fixed colors)
// and writes it to path (.png or .svg). The width grows with the number of
// layers so labels stay readable.
func PlotErrors(r *CheckReport, path string) error {
	if _, err := plotFormat(path); err != nil {
		return err
	}
	if len(r.Layers) == 0 {
		return fmt.Errorf("%s: no layers to plot", path)
	}
	p := plot.New()
	p.Title.Text = "relative output error per layer (lower is better)"
	p.Y.Label.Text = "‖Yq − Y‖ / ‖Y‖"
	p.Legend.Top = true
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter

	var present []string
	for _, m := range Methods {
		for _, l := range r.Layers {
			if _, ok := l.RelError[m]; ok {
				present = append(present, m)
				break
			}
		}
	}
	const barW = 5
	names := make([]string, len(r.Layers))
	for i, l := range r.Layers {
		names[i] = l.Name
	}
	for i, m := range present {
		vals := make(plotter.Values, len(r.Layers))
		for j, l := range r.Layers {
			vals[j] = l.RelError[m] // missing: 0, no bar
		}
		bc, err := plotter.NewBarChart(vals, barW)
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		bc.Color = methodColors[m]
		bc.LineStyle.Width = 0
		bc.Offset = vg.Length(float64(i)-float64(len(present)-1)/2) * barW
		p.Add(bc)
		p.Legend.Add(m, bc)
	}
	p.NominalX(names...)
	top := 0.0
	for _, l := range r.Layers {
		for _, v := range l.RelError {
			top = max(top, v)
		}
	}
	p.Y.Min, p.Y.Max = 0, top*1.4 // headroom for the legend
	p.X.Min, p.X.Max = -0.6, float64(len(r.Layers))-0.4
	width := vg.Length(len(r.Layers)*len(present)*barW+len(r.Layers)*8) + 2*vg.Inch
	width = max(width, 6*vg.Inch)
	return savePlot(p, width, 5*vg.Inch, path)
}

// Spectrum holds the singular values of one layer's weight before and after
// smoothing (W and W·diag(λ)), descending.
type Spectrum struct {
	Layer    string
	Before   []float64
	Smoothed []float64
	Rank     int // the checkpoint's rank R, drawn as a marker
}

// PlotSpectrum draws s (log-scale singular values against their index, both
// curves) and writes it to path (.png or .svg).
func PlotSpectrum(s *Spectrum, path string) error {
	if _, err := plotFormat(path); err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = "singular values of " + s.Layer
	p.X.Label.Text = "index"
	p.X.Tick.Marker = intTicks{}
	p.Y.Label.Text = "σ (log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	p.Legend.Top = true
	add := func(label string, vs []float64, c color.Color) error {
		var xys plotter.XYs
		for i, v := range vs {
			if v > 0 {
				xys = append(xys, plotter.XY{X: float64(i + 1), Y: v})
			}
		}
		if len(xys) == 0 {
			return nil
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return err
		}
		l.Color = c
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(label, l)
		return nil
	}
	if err := add("W (before smoothing)", s.Before, methodColors[MethodNaive]); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := add("W·diag(λ) (smoothed)", s.Smoothed, methodColors[MethodSVDQuant]); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if s.Rank > 0 {
		lo, hi := minPositive(s.Before, s.Smoothed)
		if lo < hi {
			r, err := plotter.NewLine(plotter.XYs{{X: float64(s.Rank), Y: lo}, {X: float64(s.Rank), Y: hi}})
			if err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
			r.Color = color.Gray{Y: 0x80}
			r.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(r)
			p.Legend.Add(fmt.Sprintf("rank %d", s.Rank), r)
		}
	}
	return savePlot(p, 7*vg.Inch, 5*vg.Inch, path)
}

// minPositive returns the smallest and largest positive values in the slices.
func minPositive(vs ...[]float64) (lo, hi float64) {
	first := true
	for _, v := range vs {
		for _, x := range v {
			if x <= 0 {
				continue
			}
			if first || x < lo {
				lo = x
			}
			if first || x > hi {
				hi = x
			}
			first = false
		}
	}
	return lo, hi
}

// intTicks are gonum's default ticks labelled as integers.
type intTicks struct{}

func (intTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = fmt.Sprintf("%.0f", ts[i].Value)
		}
	}
	return ts
}

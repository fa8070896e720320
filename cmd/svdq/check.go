package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "check",
		Usage:     "measure every quantized layer against its reference on calibration rows (CI accuracy gate)",
		ArgsUsage: " ",
		Description: "For every quantized layer, emulates the layer exactly as nunchaku's kernel computes it on the\n" +
			"calibration rows and reports ‖Y_q − Y‖_F / ‖Y‖_F next to the baselines computed from the\n" +
			"reference weights on the same rows: svdquant_plain, naive_w4a4, smoothquant_w4a4,\n" +
			"lowrank_w4a4, w4a16. Exit status 0 when every layer is within --max-rel-error (or none is\n" +
			"given), 1 when not, 2 on bad input.\n\n" +
			"First, each layer's packed tensors are hashed and compared with the SHA-256 recorded at\n" +
			"quantize time (svdq metadata): a layer whose bytes differ is reported, nothing is measured\n" +
			"and the exit status is 1. Files without recorded hashes report integrity \"absent\".\n\n" +
			"--spectrum LAYER plots that layer's singular values before and after smoothing into\n" +
			"--spectrum-out (default: the --plot name with -spectrum before the extension, else\n" +
			"spectrum.png).\n\n" +
			"Example: svdq check --model flux-int4.safetensors --reference flux1-dev.safetensors --calib calib.safetensors --max-rel-error 0.2",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "quantized `Q.safetensors`"},
			&cli.StringFlag{Name: "reference", Required: true, Usage: "the 16-bit checkpoint it was made from"},
			&cli.StringFlag{Name: "calib", Required: true, Usage: "calibration statistics (svdq-calib/1 `FILE`)"},
			&cli.StringFlag{Name: "layers", Usage: "check only layers whose name matches `REGEX`"},
			&cli.Float64Flag{Name: "max-rel-error", Usage: "fail (exit 1) when a layer's error exceeds `X`"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"},
			&cli.StringFlag{Name: "smooth-search", Value: "full", Usage: "smoothing search of the SmoothQuant baseline: full, fast or off"},
			&cli.IntFlag{Name: "workers", Value: model.DefaultWorkers(), Usage: "layers checked at once"},
			&cli.StringFlag{Name: "plot", Usage: "draw per-layer errors of every method into `FILE.png|svg`"},
			&cli.StringFlag{Name: "spectrum", Usage: "plot the singular values of `LAYER` before and after smoothing"},
			&cli.StringFlag{Name: "spectrum-out", Usage: "file of the --spectrum plot (`FILE.png|svg`)"},
			// fuse-lora: the LoRAs fused into --model, merged into the reference in full precision.
			&cli.StringSliceFlag{Name: "lora", Usage: "LoRA fused into --model, `FILE[:STRENGTH]` (repeatable): measure against the reference with it merged"},
		},
		Action: checkAction,
	})
}

func checkAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opt := model.CheckOptions{Model: c.String("model"), Reference: c.String("reference"), Calib: c.String("calib"),
		MaxRelError: c.Float64("max-rel-error"), Workers: c.Int("workers"), Spectrum: c.String("spectrum")}
	if opt.MaxRelError < 0 {
		return fmt.Errorf("--max-rel-error %v is negative", opt.MaxRelError)
	}
	var err error
	if opt.Layers, err = layersFlag(c); err != nil {
		return err
	}
	if opt.Search, err = quant.ParseSearchMode(c.String("smooth-search")); err != nil {
		return err
	}
	if opt.LoRAs, err = model.ParseLoRASpecs(c.StringSlice("lora")); err != nil { // fuse-lora
		return err
	}
	plot, specOut := c.String("plot"), c.String("spectrum-out")
	if opt.Spectrum != "" && specOut == "" {
		specOut = "spectrum.png"
		if plot != "" {
			ext := filepath.Ext(plot)
			specOut = strings.TrimSuffix(plot, ext) + "-spectrum" + ext
		}
	}
	for _, p := range []string{plot, specOut} {
		if p == "" {
			continue
		}
		if err := dirExists(p); err != nil {
			return err
		}
		if ext := strings.ToLower(filepath.Ext(p)); ext != ".png" && ext != ".svg" {
			return fmt.Errorf("%s: plot format %q not supported (use .png or .svg)", p, ext)
		}
	}
	var b *bar
	opt.OnLayer = func(l model.CheckLayer, done, total int) {
		if b == nil {
			b = newBar(c.App.ErrWriter, int64(total), "check", false)
		}
		b.println("", 1)
	}
	rep, spec, err := model.Check(opt)
	if b != nil {
		b.finish()
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, rep); err != nil {
			return err
		}
	} else if len(rep.Mismatches) > 0 {
		printMismatches(c.App.Writer, rep.Mismatches, len(rep.Layers), "nothing was measured")
	} else {
		printCheck(c.App.Writer, rep, opt.MaxRelError)
	}
	if len(rep.Mismatches) > 0 {
		return failed(nil) // no errors to plot
	}
	if plot != "" {
		if err := model.PlotErrors(rep, plot); err != nil {
			return err
		}
	}
	if spec != nil {
		if err := model.PlotSpectrum(spec, specOut); err != nil {
			return err
		}
	}
	if !rep.Passed {
		return failed(nil)
	}
	return nil
}

// printCheck prints the per-layer table, the per-method means and the
// verdict.
func printCheck(w io.Writer, rep *model.CheckReport, maxErr float64) {
	width := len("mean of 999 int4/nvfp4 layers")
	for _, l := range rep.Layers {
		width = max(width, len(l.Name))
	}
	fmt.Fprintf(w, "%-*s  %-5s", width, "layer", "prec")
	for _, m := range model.Methods {
		fmt.Fprintf(w, "  %*s", colWidth(m), m)
	}
	fmt.Fprintln(w)
	for _, l := range rep.Layers {
		fmt.Fprintf(w, "%-*s  %-5s", width, l.Name, l.Precision)
		for _, m := range model.Methods {
			if v, ok := l.RelError[m]; ok {
				fmt.Fprintf(w, "  %*.4f", colWidth(m), v)
			} else {
				fmt.Fprintf(w, "  %*s", colWidth(m), "-")
			}
		}
		fmt.Fprintln(w)
	}
	for _, group := range [][]string{{"int4", "nvfp4"}, {"w4a16"}, {"w4a16g128"}} {
		mean, count := rep.MeanErrors(group...)
		if count[model.MethodSVDQuant] == 0 {
			continue
		}
		fmt.Fprintf(w, "%-*s  %-5s", width, fmt.Sprintf("mean of %d %s layers", count[model.MethodSVDQuant], strings.Join(group, "/")), "")
		for _, m := range model.Methods {
			if _, ok := count[m]; ok {
				fmt.Fprintf(w, "  %*.4f", colWidth(m), mean[m])
			} else {
				fmt.Fprintf(w, "  %*s", colWidth(m), "-")
			}
		}
		fmt.Fprintln(w)
	}
	verdict := "passed"
	if !rep.Passed {
		verdict = "FAILED"
	}
	limit := ""
	if maxErr > 0 {
		limit = fmt.Sprintf(" (limit %g)", maxErr)
	}
	fmt.Fprintf(w, "%s: %d layers, worst %s %.4f%s\n", verdict, len(rep.Layers), rep.Worst.Name, rep.Worst.RelError, limit)
}

// colWidth is the width of a method's column.
func colWidth(m string) int { return max(len(m), 7) }

// printMismatches prints one line per layer whose packed bytes differ from
// the hash recorded at quantize time, then the verdict:
//
//	transformer_blocks.0.qkv_proj: packed bytes differ from those recorded at quantize time: sha256 9c…, recorded 41…
//	FAILED: 1 of 20 layers differ from their recorded sha256 (nothing was measured)
func printMismatches(w io.Writer, bad []model.LayerIntegrity, total int, note string) {
	for _, l := range bad {
		fmt.Fprintf(w, "%s: %s\n", l.Name, l.Problem())
	}
	fmt.Fprintf(w, "FAILED: %d of %d layers differ from their recorded sha256 (%s)\n", len(bad), total, note)
}

// printJSON prints v as one line of JSON (the --json output of a command).
func printJSON(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(data))
	return err
}

// noArgs refuses positional arguments to a command that takes none.
func noArgs(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("%s: unexpected argument %q", c.Command.Name, c.Args().First())
	}
	return nil
}

// layersFlag compiles the --layers REGEX flag (nil when not given).
func layersFlag(c *cli.Context) (*regexp.Regexp, error) {
	s := c.String("layers")
	if s == "" {
		return nil, nil
	}
	re, err := regexp.Compile(s)
	if err != nil {
		return nil, fmt.Errorf("--layers %q: %v", s, err)
	}
	return re, nil
}

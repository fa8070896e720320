package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
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
			"lowrank_w4a4, w4a16. W4A4 layers (int4, nvfp4) are judged against --max-rel-error, weight-only\n" +
			"layers (w4a16 adaLN, w4a16g128 T5), whose errors are an order of magnitude larger, against\n" +
			"--max-rel-error-w4a16; each kind gets its own summary line. Exit status 0 when every layer is\n" +
			"within the limit of its kind (0: no limit), 1 when not, 2 on bad input. One line per layer goes\n" +
			"to stderr as it finishes; the table (or --json) to stdout at the end.\n\n" +
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
			&cli.Float64Flag{Name: "max-rel-error", Usage: "fail (exit 1) when a W4A4 (int4, nvfp4) layer's error exceeds `X` (0: no limit)"},
			&cli.Float64Flag{Name: "max-rel-error-w4a16", Usage: "fail (exit 1) when a weight-only (w4a16, w4a16g128) layer's error exceeds `X` (0: no limit)"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"},
			&cli.StringFlag{Name: "smooth-search", Value: "full", Usage: "smoothing search of the SmoothQuant baseline: full, fast or off"},
			&cli.IntFlag{Name: "workers", Value: model.DefaultWorkers(), Usage: "layers checked at once"},
			&cli.StringFlag{Name: "plot", Usage: "draw per-layer errors of every method into `FILE.png|svg`"},
			&cli.StringFlag{Name: "spectrum", Usage: "plot the singular values of `LAYER` before and after smoothing"},
			&cli.StringFlag{Name: "spectrum-out", Usage: "file of the --spectrum plot (`FILE.png|svg`)"},
			// fuse-lora: the LoRAs fused into --model, merged into the reference in full precision.
			&cli.StringSliceFlag{Name: "lora", Usage: "LoRA fused into --model, `FILE[:STRENGTH]` (repeatable; LoHa, LoKr, DoRA too): measure against the reference with its full ΔW merged"},
			&cli.StringFlag{Name: "delta", Usage: "fine-tune `FINETUNED` fused into --model with fuse-lora --delta (its --base is --reference): measure against it"},
		},
		Action: checkAction,
	})
}

func checkAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opt := model.CheckOptions{Model: c.String("model"), Reference: c.String("reference"), Calib: c.String("calib"),
		MaxRelError: c.Float64("max-rel-error"), MaxRelErrorW4A16: c.Float64("max-rel-error-w4a16"),
		Workers: c.Int("workers"), Spectrum: c.String("spectrum")}
	for _, f := range []string{"max-rel-error", "max-rel-error-w4a16"} {
		if v := c.Float64(f); !(v >= 0) || math.IsInf(v, 0) {
			return fmt.Errorf("--%s %v: want a finite number ≥ 0 (0: no limit)", f, v)
		}
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
	if d := c.String("delta"); d != "" { // fuse-lora --delta d --base (the reference)
		opt.LoRAs = append(opt.LoRAs, model.LoRASpec{Path: d, Strength: 1, Base: opt.Reference})
	}
	plot, specOut := c.String("plot"), spectrumOut(c)
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
		b.println(checkLine(l, done, total), 1)
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
		printCheck(c.App.Writer, rep)
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

// spectrumOut is the file of the --spectrum plot: --spectrum-out, else
// the --plot name with -spectrum before the extension, else spectrum.png;
// "" without --spectrum.
func spectrumOut(c *cli.Context) string {
	if c.String("spectrum") == "" {
		return ""
	}
	if s := c.String("spectrum-out"); s != "" {
		return s
	}
	if plot := c.String("plot"); plot != "" {
		ext := filepath.Ext(plot)
		return strings.TrimSuffix(plot, ext) + "-spectrum" + ext
	}
	return "spectrum.png"
}

// checkLine formats one measured layer, in completion order:
//
//	[ 3/20] int4   err 0.0312  transformer_blocks.0.qkv_proj
func checkLine(l model.CheckLayer, done, total int) string {
	return fmt.Sprintf("[%*d/%d] %-5s  err %.4f  %s", len(fmt.Sprint(total)), done, total, l.Precision,
		l.RelError[model.MethodSVDQuant], l.Name)
}

// printCheck prints the per-layer table, the per-method means, one
// verdict line per kind of layer and the overall verdict.
func printCheck(w io.Writer, rep *model.CheckReport) {
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
	over := 0
	for _, k := range rep.Kinds {
		fmt.Fprintln(w, kindLine(k))
		over += k.Over
	}
	if rep.Passed {
		fmt.Fprintf(w, "passed: %d layers\n", len(rep.Layers))
	} else {
		fmt.Fprintf(w, "FAILED: %d layers, %d over the limit of their kind\n", len(rep.Layers), over)
	}
}

// kindFlags names the limit flag of each kind.
var kindFlags = map[string]string{model.KindW4A4: "--max-rel-error", model.KindW4A16: "--max-rel-error-w4a16"}

// kindLine is the verdict on one kind of layer:
//
//	w4a4  (int4/nvfp4):         17 layers, worst 0.0712 transformer_blocks.0.mlp_fc2; limit 0.2 (--max-rel-error): passed
//	w4a16 (weight-only):         3 layers, worst 0.5512 transformer_blocks.0.norm1.linear; no limit (--max-rel-error-w4a16)
func kindLine(k model.KindResult) string {
	what := map[string]string{model.KindW4A4: "w4a4  (int4/nvfp4)", model.KindW4A16: "w4a16 (weight-only)"}[k.Kind]
	line := fmt.Sprintf("%-20s %4d layers, worst %.4f %s; ", what+":", k.Layers, k.Worst.RelError, k.Worst.Name)
	if k.Limit <= 0 {
		return line + fmt.Sprintf("no limit (%s)", kindFlags[k.Kind])
	}
	verdict := "passed"
	if !k.Passed {
		verdict = fmt.Sprintf("FAILED (%d over)", k.Over)
	}
	return line + fmt.Sprintf("limit %g (%s): %s", k.Limit, kindFlags[k.Kind], verdict)
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

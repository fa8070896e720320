package main

import (
	"fmt"
	"io"
	"os"

	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "demo",
		Usage:     "quantize a small synthetic FLUX model in INT4 and NVFP4 and print the accuracy table (no downloads)",
		ArgsUsage: " ",
		Description: "Synthesizes a FLUX.1-dev checkpoint at width 384 (1 double + 2 single blocks) with its\n" +
			"calibration file in a temporary directory, quantizes it through the real quantize path in\n" +
			"INT4 and NVFP4, checks both against the 16-bit weights and prints the mean relative output\n" +
			"error of every method. The synthetic weights have planted activation and weight outliers,\n" +
			"so the numbers show the methods' ranking, not a real model's accuracy.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Usage: "keep the files in `DIR` instead of a temporary directory"},
			&cli.BoolFlag{Name: "full-search", Usage: "use the reference's 39-candidate smoothing search (slower)"},
		},
		Action: demoAction,
	})
}

func demoAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("demo: unexpected argument %q", c.Args().First())
	}
	if d := c.String("dir"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	rep, err := model.Demo(model.DemoOptions{Dir: c.String("dir"), FullSearch: c.Bool("full-search"),
		OnStep: func(s string) { fmt.Fprintf(c.App.ErrWriter, "svdq demo: %s...\n", s) }})
	if err != nil {
		return err
	}
	printDemo(c.App.Writer, rep)
	return nil
}

// printDemo prints the per-method mean errors of each precision and the
// time taken.
func printDemo(w io.Writer, rep *model.DemoReport) {
	fmt.Fprintf(w, "\nsynthetic %s, width %d, %d quantized layers\n", rep.Family, rep.Width, rep.Layers)
	fmt.Fprintf(w, "mean relative output error ‖Yq − Y‖/‖Y‖ on the calibration rows (lower is better)\n\n")
	fmt.Fprintf(w, "%-28s", "method")
	for _, r := range rep.Runs {
		fmt.Fprintf(w, "  %8s", r.Precision)
	}
	fmt.Fprintln(w)
	labels := map[string]string{
		model.MethodSVDQuant:      "svdquant (searched, refined)",
		model.MethodSVDQuantPlain: "svdquant_plain (α=β=0.5)",
		model.MethodNaive:         "naive_w4a4",
		model.MethodSmoothQuant:   "smoothquant_w4a4",
		model.MethodLowRank:       "lowrank_w4a4",
		model.MethodW4A16:         "w4a16 (16-bit activations)",
	}
	var n4, n16 int
	for _, m := range model.Methods {
		fmt.Fprintf(w, "%-28s", labels[m])
		for _, r := range rep.Runs {
			mean, count := r.Check.MeanErrors("int4", "nvfp4")
			n4 = count[model.MethodSVDQuant]
			fmt.Fprintf(w, "  %8.4f", mean[m])
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%-28s", "adaLN layers (w4a16)")
	for _, r := range rep.Runs {
		mean, count := r.Check.MeanErrors("w4a16")
		n16 = count[model.MethodSVDQuant]
		fmt.Fprintf(w, "  %8.4f", mean[model.MethodSVDQuant])
	}
	fmt.Fprintf(w, "\n(means over %d W4A4 layers; the last row over %d weight-only adaLN layers)\n\n", n4, n16)
	for _, r := range rep.Runs {
		t := r.Quantize.Totals
		fmt.Fprintf(w, "%-6s quantize %5.1fs  check %5.1fs  %s -> %s, %.2f bits per weight in quantized layers\n",
			r.Precision, r.QuantSecs, r.CheckSecs, human(t.InBytes), human(t.OutBytes), t.BitsPerWeight)
	}
	fmt.Fprintf(w, "total %.1fs (synth %.1fs)\n", rep.Seconds, rep.SynthSec)
}

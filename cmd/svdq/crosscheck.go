package main

import (
	"fmt"
	"io"

	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	flags := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "quantized `Q.safetensors` (INT4 layers are checked)"},
			&cli.StringFlag{Name: "reference", Required: true, Usage: "the 16-bit checkpoint it was made from (`FP_PATH`)"},
			&cli.StringFlag{Name: "calib", Required: true, Usage: "calibration statistics (svdq-calib/1 `FILE`)"},
			&cli.StringFlag{Name: "dir", Required: true, Usage: "work `DIR` shared with crosscheck.cu"},
			&cli.StringFlag{Name: "layers", Usage: "only layers whose name matches `REGEX`"},
			&cli.IntFlag{Name: "rows", Value: 256, Usage: "calibration rows per layer at most"},
		}
	}
	// opts reads the flags both subcommands share (and refuses arguments).
	opts := func(c *cli.Context) (model.CrossCheckOptions, error) {
		if err := noArgs(c); err != nil {
			return model.CrossCheckOptions{}, err
		}
		re, err := layersFlag(c)
		return model.CrossCheckOptions{Model: c.String("model"), Reference: c.String("reference"),
			Calib: c.String("calib"), Dir: c.String("dir"), Layers: re, Rows: c.Int("rows")}, err
	}
	register(&cli.Command{
		Name:  "crosscheck",
		Usage: "hold the emulation against nunchaku's own INT4 kernels (with scripts/nunchaku-crosscheck/run.sh)",
		Description: "scripts/nunchaku-crosscheck/run.sh NUNCHAKU_SRC MODEL REFERENCE CALIB runs the three steps on a\n" +
			"GPU machine: `svdq crosscheck export` writes each INT4 W4A4 layer's stored tensors and\n" +
			"calibration rows to --dir; crosscheck.cu, built there from the user's nunchaku source tree,\n" +
			"runs nunchaku's kernels on them; `svdq crosscheck compare` reads nunchaku's outputs and\n" +
			"compares them with the emulation: per layer and in total, a histogram of the outputs by\n" +
			"their distance in 16-bit ulps, (a) with nunchaku's own low-rank down-projection sums fed\n" +
			"to the emulation (must be all 0) and (b) with the emulation's own sums (nunchaku adds its\n" +
			"128-column block sums with atomics in no fixed order, so a sum may round to the other\n" +
			"16-bit neighbour; every row that differs must have such a sum). Exit status 1 when (a)\n" +
			"differs anywhere or (b) differs in a row without such a sum, 2 on bad input.",
		Subcommands: []*cli.Command{
			{
				Name:      "export",
				Usage:     "write the layers for crosscheck.cu",
				ArgsUsage: " ",
				Flags:     flags(),
				Action: func(c *cli.Context) error {
					o, err := opts(c)
					if err != nil {
						return err
					}
					n, err := model.CrossCheckExport(o)
					if err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "exported %d INT4 layers to %s\n", n, o.Dir)
					return nil
				},
			},
			{
				Name:      "compare",
				Usage:     "compare nunchaku's outputs in --dir with the emulation",
				ArgsUsage: " ",
				Flags:     append(flags(), &cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"}),
				Action: func(c *cli.Context) error {
					o, err := opts(c)
					if err != nil {
						return err
					}
					out, asJSON := c.App.Writer, c.Bool("json")
					if !asJSON {
						fmt.Fprintf(out, "%-44s %5s  %-34s  %-34s  %s\n", "layer", "rows", "given sums: 0/1/2/3-4/5-8/>8 ulps",
							"own sums: 0/1/2/3-4/5-8/>8 ulps", "sums off (16-bit)")
					}
					rep, err := model.CrossCheckCompare(o, func(l model.CrossLayer) {
						if !asJSON {
							fmt.Fprintf(out, "%-44s %5d  %-34s  %-34s  %d of %d (%d)\n", l.Name, l.Rows, hist(l.Given), hist(l.Own),
								l.SumsDiffer, l.Sums, l.Sums16Differ)
						}
					})
					if err != nil {
						return err
					}
					if asJSON {
						if err := printJSON(out, rep); err != nil {
							return err
						}
					} else {
						printCrossSummary(out, rep)
					}
					if !rep.Passed {
						return failed(nil)
					}
					return nil
				},
			},
		},
	})
}

func hist(h model.ULPHistogram) string {
	return fmt.Sprintf("%d/%d/%d/%d/%d/%d", h[0], h[1], h[2], h[3], h[4], h[5])
}

func printCrossSummary(w io.Writer, rep *model.CrossCheckReport) {
	fmt.Fprintf(w, "total %d outputs of %d layers\n", rep.Outputs, len(rep.Layers))
	for _, x := range []struct {
		name string
		h    model.ULPHistogram
	}{{"given nunchaku's sums", rep.Given}, {"own sums", rep.Own}} {
		fmt.Fprintf(w, "  %-22s %d differ;", x.name, x.h.Differ())
		for i, b := range model.ULPBuckets {
			fmt.Fprintf(w, " %s ulp: %d", b, x.h[i])
		}
		fmt.Fprintln(w)
	}
	if rep.Passed {
		fmt.Fprintln(w, "passed: bit for bit given nunchaku's sums; every other difference comes from a sum nunchaku's atomics rounded the other way")
	} else {
		fmt.Fprintln(w, "FAILED")
	}
}

package main

import (
	"fmt"
	"io"
	"time"

	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "merge",
		Usage:     "join the parts of a sharded quantization (quantize --shard I/N) into one file",
		ArgsUsage: "PART... --out FILE",
		Description: "Checks that the parts come from the same checkpoint, calibration file, options and svdq\n" +
			"version, that no shard is missing or given twice and that every tensor matches its\n" +
			"SHA-256, then writes the bytes a single `svdq quantize` run writes. Nothing is written\n" +
			"on error. Examples for Kubernetes and Slurm: examples/k8s-indexed-job, examples/slurm-array.\n\n" +
			"Example: svdq merge part-0.safetensors part-1.safetensors part-2.safetensors part-3.safetensors --out q.safetensors",
		// Flags may follow the parts (as in the example), which urfave/cli
		// does not parse: the action reads the arguments itself.
		SkipFlagParsing: true,
		Action:          mergeAction,
	})
}

func mergeAction(c *cli.Context) error {
	a, ok, err := readMergeArgs(c, "merge", "parts", "usage: svdq merge PART... --out FILE", false)
	if !ok {
		return err
	}
	rep, err := model.Merge(model.MergeOptions{Parts: a.paths, Out: a.out})
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "merged %d parts into %s: family %s, %d layers, %d tensors kept 16-bit, %s, in %s\n",
		rep.Shards, a.out, rep.Family, len(rep.Layers), rep.Kept, human(rep.OutBytes),
		time.Duration(rep.Seconds*float64(time.Second)).Round(time.Millisecond))
	return nil
}

// printPart summarises a shard's part:
//
//	wrote part /data/part-1.safetensors: shard 1/4, 95 of 380 layers (3 reused); next: svdq merge PART... --out FILE
func printPart(w io.Writer, rep *model.QuantizeReport, out string) {
	t := rep.Totals
	fmt.Fprintf(w, "\nwrote part %s: shard %s, %d of %d layers (%d reused), %d tensors kept 16-bit, %s\n",
		out, rep.Shard, t.Layers, len(rep.Plan.Layers), rep.Reused, t.Kept, human(t.OutBytes))
	if len(rep.Layers) > 0 {
		fmt.Fprintf(w, "relative error on calibration rows: mean %.4f, max %.4f\n", t.MeanRelError, t.MaxRelError)
	}
	fmt.Fprintf(w, "time: %s\nnext: once all %d parts are written: svdq merge PART... --out FILE\n",
		time.Duration(t.Seconds*float64(time.Second)).Round(time.Millisecond), rep.Shard.N)
}

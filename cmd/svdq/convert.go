package main

import (
	"fmt"
	"strings"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "convert",
		Usage:     "rewrite an SVDQuant file for another engine without re-quantizing",
		ArgsUsage: "IN OUT",
		Description: "Reads an SVDQuant .safetensors file (svdq's, or one made by deepcompressor or nunchaku) and\n" +
			"writes it laid out for --target: the tensor names that engine's loader reads (lora_down/smooth or\n" +
			"proj_down/smooth_factor), a bias only where its module has one, W4A16 scale rows of K/64, one\n" +
			"low-rank rank for every layer where the loader builds all modules with quantization_config's rank\n" +
			"(narrower branches widened with zero columns: exact), the metadata it reads (comfy_config for\n" +
			"ComfyUI FLUX) and, with --dtype or where the loader requires one dtype, 16-bit tensors converted.\n" +
			"Nothing is re-quantized. The output is checked against the target's loader contract: exit 1 when\n" +
			"it still would not load (the reasons are printed), 2 on bad input.\n\n" +
			"Targets: all (every engine that runs the family), " + strings.Join(engine.Engines, ", ") + ".\n\n" +
			"Example: svdq convert --target comfyui flux-int4.safetensors flux-int4-comfy.safetensors",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "target", Value: "all", Usage: "engine to convert for: all, " + strings.Join(engine.Engines, ", ")},
			&cli.StringFlag{Name: "family", Usage: "model family, when neither the svdq metadata nor the layer names tell it"},
			&cli.StringFlag{Name: "dtype", Usage: "convert 16-bit tensors to bf16 or fp16"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		},
		Action: convertAction,
	})
}

func convertAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return fmt.Errorf("convert: want IN OUT, got %d arguments", c.NArg())
	}
	dt, err := parseDType(c.String("dtype"))
	if err != nil {
		return err
	}
	rep, err := model.Convert(model.ConvertOptions{In: c.Args().Get(0), Out: c.Args().Get(1), Target: c.String("target"),
		Family: c.String("family"), DType: dt, Tool: "svdq " + version})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, rep); err != nil {
			return err
		}
	} else {
		w := c.App.Writer
		fmt.Fprintf(w, "wrote %s: family %s, %d quantized layers, %d tensors renamed or added", c.Args().Get(1), rep.Family, rep.Layers, rep.Renamed)
		if rep.Rank > 0 {
			fmt.Fprintf(w, ", rank %d (%d layers widened)", rep.Rank, rep.Padded)
		}
		if len(rep.Added) > 0 {
			fmt.Fprintf(w, ", metadata %s set", strings.Join(rep.Added, ", "))
		}
		fmt.Fprintln(w)
		printVerdicts(w, rep.Verdicts)
	}
	for _, v := range rep.Verdicts {
		if !v.Loads {
			return failed(nil)
		}
	}
	return nil
}

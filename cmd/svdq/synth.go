package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/synth"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "synth",
		Usage:     "write a synthetic checkpoint with a family's real names and shapes, and its calibration file",
		ArgsUsage: " ",
		Description: "Writes DIR/model.safetensors (bf16) and DIR/calib.safetensors (svdq-calib/1) for --arch\n" +
			"at a width --scale (widths rounded to multiples of 128) with --blocks blocks, so every\n" +
			"command can run without downloading a model. Same options, same bytes.\n\n" +
			"--blocks counts each family's main blocks, as its Skeleton in formats/preset documents:\n" +
			"FLUX makes --blocks double and 2×--blocks single blocks (19 and 38 at 0); SDXL puts\n" +
			"--blocks transformer blocks in each 1280-channel attention module.\n\n" +
			"Example: svdq synth --arch flux-dev --scale 0.125 --blocks 2 --out /tmp/flux",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "arch", Required: true, Usage: "model family: " + strings.Join(preset.Names(), ", ")},
			&cli.StringFlag{Name: "out", Required: true, Usage: "output `DIR` (created if missing)"},
			&cli.Float64Flag{Name: "scale", Value: 1, Usage: "width scale in (0, 1]"},
			&cli.IntFlag{Name: "blocks", Usage: "block count `N` (0: the real count; FLUX: N double and 2·N single blocks)"},
			&cli.Uint64Flag{Name: "seed", Usage: "random seed"},
			&cli.StringFlag{Name: "naming", Value: "diffusers", Usage: "tensor names: diffusers, bfl or comfyui (FLUX only)"},
			&cli.StringFlag{Name: "pattern", Value: "aligned", Usage: "outlier pattern: " + strings.Join(synth.Patterns(), ", ") + " (formats/synth doc)"},
			&cli.IntFlag{Name: "shards", Value: 1, Usage: "split the model into `N` files with an index"},
			&cli.IntFlag{Name: "samples", Usage: "calibration rows per module (0: 256)"},
			&cli.IntFlag{Name: "lora", Usage: "also write DIR/lora.safetensors, a PEFT LoRA of rank `R` on the attention projections (to try fuse-lora)"},
		},
		Action: synthAction,
	})
}

func synthAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("synth: unexpected argument %q", c.Args().First())
	}
	scale := c.Float64("scale")
	if !(scale > 0 && scale <= 1) {
		return fmt.Errorf("synth: --scale %v is not in (0, 1]", scale)
	}
	if c.Int("blocks") < 0 || c.Int("shards") < 1 || c.Int("samples") < 0 || c.Int("lora") < 0 {
		return fmt.Errorf("synth: --blocks, --samples, --lora must be ≥ 0 and --shards ≥ 1")
	}
	start := time.Now()
	b := newBar(c.App.Writer, 1, "synth", true)
	opt := synth.Options{
		Arch: c.String("arch"), Out: c.String("out"), Scale: scale, Blocks: c.Int("blocks"),
		Naming: c.String("naming"), Pattern: c.String("pattern"), Seed: c.Uint64("seed"), Shards: c.Int("shards"), Samples: c.Int("samples"),
		Progress: func(done, total int64) {
			b.setTotal(total)
			b.set(done)
		},
	}
	err := synth.Generate(opt)
	b.finish()
	if err != nil {
		return err
	}
	model := filepath.Join(opt.Out, synth.ModelFile)
	if opt.Shards > 1 {
		model = filepath.Join(opt.Out, synth.IndexFile)
	}
	if r := c.Int("lora"); r > 0 {
		if err := synth.GenerateLoRA(opt, r); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "wrote %s (rank %d)\n", filepath.Join(opt.Out, synth.LoRAFile), r)
	}
	fmt.Fprintf(c.App.Writer, "wrote %s and %s in %.1fs\n", model, filepath.Join(opt.Out, synth.CalibFile), time.Since(start).Seconds())
	return nil
}

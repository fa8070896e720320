package main

import (
	"fmt"

	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "unpack",
		Usage:     "write the logical (unpacked) tensors of every quantized layer, to check our packing",
		ArgsUsage: " ",
		Description: "Writes DIR/" + model.UnpackFile + " with, for each W4A4 layer L: L.codes I8 [N,K], L.scales F32 [N,K/G],\n" +
			"L.tensor_scale F32 [1], L.smooth [K], L.lora_down [R,K], L.lora_up [N,R], L.bias [N] (16-bit tensors in the\n" +
			"model dtype); for each weight-only layer (w4a16: G = 64; w4a16g128, nunchaku's T5 W4Linear: G = 128):\n" +
			"L.codes U8 [N,K], L.scales and L.zeros F32 [N,K/G], L.bias [N] (w = codes·scales + zeros).\n" +
			"Metadata \"layers\" lists sizes, precision, group and the unsigned-input flag as JSON.\n" +
			"A layer whose packed bytes differ from the SHA-256 recorded at quantize time is refused (exit 2).\n\n" +
			"Example: svdq unpack --model flux-int4.safetensors --out /tmp/flux-int4-unpacked",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "quantized `Q.safetensors`"},
			&cli.StringFlag{Name: "out", Required: true, Usage: "output `DIR` (created if missing)"},
		},
		Action: unpackAction,
	})
}

func unpackAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	var b *bar
	res, err := model.Unpack(model.UnpackOptions{Model: c.String("model"), Out: c.String("out"),
		OnLayer: func(name string, done, total int) {
			if b == nil {
				b = newBar(c.App.Writer, int64(total), "unpack", false)
			}
			b.println("", 1)
		}})
	if b != nil {
		b.finish()
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "wrote %s: %d layers, %s\n", res.Path, len(res.Layers), human(res.Bytes))
	return nil
}

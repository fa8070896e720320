package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "fuse-lora",
		Usage:     "fuse LoRAs into an SVDQuant checkpoint, or take fused ones out again",
		ArgsUsage: " ",
		Description: "Reads diffusers/PEFT, kohya (BFL or diffusers names), ComfyUI, XLabs, fal/ai-toolkit and Qwen-Image\n" +
			"LoRAs (F32/F16/BF16/F8) and fuses ΔW = strength·(alpha/r)·B·A exactly (text-encoder keys: skipped):\n" +
			"  W4A4 layers   the 16-bit low-rank branch grows: proj_down ← [proj_down | Aᵀ], proj_up ← [proj_up | s·B];\n" +
			"                every W4A4 layer is then stored at one rank, the largest any layer needs (the others\n" +
			"                widened with zero columns, exactly), and quantization_config records it, as nunchaku's\n" +
			"                Python loaders build every module with that rank\n" +
			"  W4A16 layers  an unpacked 16-bit lora_down/lora_up branch, as nunchaku's C++ GEMV_AWQ reads it\n" +
			"                (--w4a16 auto: only when every engine the input loads in reads one; nunchaku-python's\n" +
			"                AWQW4A16Linear does not: for a BF16 FLUX file pass --w4a16 skip, or --w4a16 branch if\n" +
			"                it will run only on the C++ engine; --w4a16 branch warns per engine that then rejects it)\n" +
			"  16-bit layers W ← round16(W + ΔW); the base tensor and the factors go to the sidecar OUT.lora-base\n" +
			"LyCORIS LoHa/LoKr, DoRA (dora_scale, lora_magnitude_vector; --reference gives quantized layers' 16-bit\n" +
			"weights) and full fine-tunes (--delta FT --base BASE: ΔW = W_FT − W_BASE) have a dense ΔW: W4A4 and\n" +
			"W4A16 layers take its truncated SVD at --delta-rank R, or at the fewest singular values keeping a\n" +
			"fraction --delta-energy E of ‖ΔW‖²; each truncation's rank and error (on --calib rows) is reported;\n" +
			"16-bit layers take the full ΔW. BFL control LoRAs' bias deltas and norm scales rewrite the biases and\n" +
			"norm weights they name (listed as 1-D); their 128-feature img_in widens FLUX's x_embedder.\n" +
			"Nothing 4-bit is re-quantized. The output loads in every engine the input loads in (checked against\n" +
			"the loader contract before anything is written). The svdq_loras metadata records each LoRA's file\n" +
			"hash, strength and rank ranges, the base's ranks and the sidecar's name and hash, so --remove NAME\n" +
			"takes one out and --remove-all restores the base file byte for byte. Loading needs only OUT; keep\n" +
			"OUT.lora-base next to it for --remove (copy or rename the two together).\n" +
			"Runtime LoRAs on a fused file: nunchaku V1's set_lora_strength(s) scales every W4A4 rank column past\n" +
			"the first 32 and every W4A16 branch by s; svdq's base branch comes first (rank 32 by default), so s\n" +
			"scales the fused LoRAs too (not their 16-bit merges). ComfyUI-nunchaku never calls it. See docs/lora.md.\n" +
			"Unknown keys or modules that match no layer are an error (--allow-unmatched: a warning); a LoRA\n" +
			"whose shapes do not fit is an error naming the layer and both shapes. Nothing is written on error.\n\n" +
			"Example: svdq fuse-lora --model flux-int4.safetensors --lora style.safetensors:0.8 --out flux-int4-style.safetensors\n" +
			"         svdq fuse-lora --model flux-int4.safetensors --lora lokr.safetensors --delta-energy 0.9 --out flux-int4-lokr.safetensors\n" +
			"         svdq fuse-lora --model flux-int4-style.safetensors --remove style --out flux-int4.safetensors",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "SVDQuant `Q.safetensors` written by svdq (base or already fused)"},
			&cli.StringSliceFlag{Name: "lora", Usage: "LoRA to fuse, `FILE[:STRENGTH]` (strength 1 by default; repeatable)"},
			&cli.StringSliceFlag{Name: "name", Usage: "record `NAME` of the --lora at the same position (default: its file name without extension)"},
			&cli.StringFlag{Name: "out", Required: true, Usage: "output .safetensors `FILE` (not an input; its sidecar is FILE.lora-base)"},
			&cli.StringSliceFlag{Name: "remove", Usage: "take the fused LoRA called `NAME` out (repeatable; done before --lora)"},
			&cli.BoolFlag{Name: "remove-all", Usage: "take every fused LoRA out"},
			&cli.BoolFlag{Name: "allow-unmatched", Usage: "warn about LoRA keys that match no layer instead of failing"},
			&cli.StringFlag{Name: "w4a16", Value: model.W4A16Auto, Usage: "adaLN W4A16 layers: auto (branch where every engine the input loads in reads one), branch or skip"},
			&cli.StringFlag{Name: "kept", Value: model.KeptMerge, Usage: "16-bit layers: merge or skip"},
			&cli.StringFlag{Name: "delta", Usage: "full fine-tune `FINETUNED` (file or checkpoint folder) to fuse as ΔW = W_FINETUNED − W_BASE (needs --base)"},
			&cli.StringFlag{Name: "base", Usage: "the `BASE` checkpoint --delta was fine-tuned from"},
			&cli.IntFlag{Name: "delta-rank", Usage: "rank `R` of the truncated SVD of a dense ΔW (LoHa, LoKr, DoRA, --delta) on W4A4/W4A16 layers"},
			&cli.Float64Flag{Name: "delta-energy", Usage: "instead of --delta-rank: the smallest rank keeping a fraction `E` of ‖ΔW‖²"},
			&cli.StringFlag{Name: "calib", Usage: "calibration `FILE` (svdq-calib/1) to measure each truncation's error on its rows"},
			&cli.StringFlag{Name: "reference", Usage: "16-bit checkpoint `REF` the model was quantized from: DoRA LoRAs normalise its weights"},
			&cli.BoolFlag{Name: "dry-run", Usage: "check and list what would change; write nothing"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as one JSON object"},
		},
		Action: fuseLoRAAction,
	})
}

func fuseLoRAAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("fuse-lora: unexpected argument %q", c.Args().First())
	}
	specs, err := model.ParseLoRASpecs(c.StringSlice("lora"))
	if err != nil {
		return err
	}
	names := c.StringSlice("name")
	nspec := len(specs)
	if c.String("delta") != "" {
		nspec++ // the last --name may name the --delta
	}
	if len(names) > nspec {
		return fmt.Errorf("%d --name values for %d --lora/--delta inputs", len(names), nspec)
	}
	for i, n := range names {
		if i < len(specs) {
			specs[i].Name = n
		}
	}
	for _, s := range specs {
		if st, err := os.Stat(s.Path); err != nil || st.IsDir() {
			return fmt.Errorf("--lora %s: not a file", s.Path)
		}
	}
	if (c.String("delta") == "") != (c.String("base") == "") {
		return fmt.Errorf("--delta and --base go together")
	}
	if d := c.String("delta"); d != "" {
		for _, p := range []string{d, c.String("base")} {
			if _, err := os.Stat(p); err != nil {
				return fmt.Errorf("--delta/--base %s: %v", p, err)
			}
		}
		specs = append(specs, model.LoRASpec{Path: d, Strength: 1, Base: c.String("base")})
		if len(names) > len(specs)-1 {
			specs[len(specs)-1].Name = names[len(specs)-1]
		}
	}
	if err := dirExists(c.String("out")); err != nil {
		return err
	}
	opt := model.FuseOptions{Model: c.String("model"), Out: c.String("out"), LoRAs: specs, Calib: c.String("calib"), Reference: c.String("reference"),
		Trunc:  lora.TruncOptions{Rank: c.Int("delta-rank"), Energy: c.Float64("delta-energy")},
		Remove: c.StringSlice("remove"), RemoveAll: c.Bool("remove-all"), AllowUnmatched: c.Bool("allow-unmatched"),
		W4A16: c.String("w4a16"), Kept: c.String("kept"), DryRun: c.Bool("dry-run"),
		OnWarn: func(s string) { fmt.Fprintln(c.App.ErrWriter, "svdq: warning:", s) }}
	rep, err := model.FuseLoRA(opt)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		data, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintln(c.App.Writer, string(data))
		return nil
	}
	printFuse(c.App.Writer, rep, opt)
	return nil
}

// printFuse prints one line per changed layer and a summary:
//
//	transformer_blocks.0.qkv_proj  w4a4   r16 -> r28 (base r16)
//	x_embedder.weight              kept   merged, LoRA rank 0 -> 4
//	transformer_blocks.0.norm_q.weight  1-D    changed by 1 LoRA (bias delta or norm scale)
func printFuse(w io.Writer, rep *model.FuseReport, opt model.FuseOptions) {
	width := 0
	for _, l := range rep.Layers {
		width = max(width, len(l.Name))
	}
	vectors := map[string]bool{}
	for _, v := range rep.Vectors {
		width = max(width, len(v.Name))
		vectors[v.Name] = true
	}
	for _, l := range rep.Layers {
		change := fmt.Sprintf("r%d -> r%d (base r%d)", l.From, l.Rank, l.Base)
		switch {
		case l.Kind == "kept" && l.Rank == 0:
			change = "base restored"
		case l.Kind == "kept":
			change = fmt.Sprintf("merged, LoRA rank %d -> %d", l.From, l.Rank)
		case l.Kind == "w4a16" && l.Rank == 0:
			change = "branch removed"
		}
		fmt.Fprintf(w, "  %-*s  %-5s  %s\n", width, l.Name, l.Kind, change)
	}
	for _, v := range rep.Vectors {
		change := "base restored"
		if v.Ops > 0 {
			change = fmt.Sprintf("changed by %d LoRA(s) (bias delta or norm scale)", v.Ops)
		}
		fmt.Fprintf(w, "  %-*s  %-5s  %s\n", width, v.Name, "1-D", change)
	}
	for _, a := range rep.Added {
		rank, vecs := 0, 0
		for l, rg := range a.Ranges {
			if vectors[l] {
				vecs++
				continue
			}
			rank += rg[1] - rg[0]
		}
		line := fmt.Sprintf("fused %s: %s, %s, strength %g, %d layers, rank +%d in total", a.Name, a.File, a.Format, a.Strength, len(a.Ranges)-vecs, rank)
		if vecs > 0 {
			line += fmt.Sprintf(", %d biases/norms", vecs)
		}
		fmt.Fprintln(w, line)
	}
	for _, t := range rep.Truncated {
		on := "weights"
		if t.Rows > 0 {
			on = fmt.Sprintf("%d calibration rows", t.Rows)
		}
		fmt.Fprintf(w, "  truncated %s on %-*s  rank %d of %d, energy %.4f, error %.4f (%s)\n", t.LoRA, width, t.Layer, t.Rank, t.Full, t.Energy, t.Error, on)
	}
	if len(rep.Removed) > 0 {
		fmt.Fprintf(w, "removed: %s\n", strings.Join(rep.Removed, ", "))
	}
	fused := "none"
	if len(rep.Fused) > 0 {
		fused = strings.Join(rep.Fused, ", ")
	}
	verb := "wrote"
	if opt.DryRun {
		verb = "dry run: would write"
	}
	fmt.Fprintf(w, "%s %s (fused LoRAs: %s)\n", verb, rep.Out, fused)
	switch {
	case rep.Rank > 0:
		fmt.Fprintf(w, "W4A4 layers stored at one rank, %d (quantization_config); %d untouched layers resized with zero columns\n", rep.Rank, rep.Resized)
	case rep.Resized > 0:
		fmt.Fprintf(w, "W4A4 layers back to the base's ranks (%d untouched layers narrowed)\n", rep.Resized)
	}
	switch {
	case rep.Input > rep.InputFrom:
		fmt.Fprintf(w, "the model now takes %d input channels (x_embedder, config in_channels): the image's latents and a control image's; load it as FLUX.1 Canny/Depth-dev (diffusers FluxControlPipeline, ComfyUI's Canny/Depth workflow)\n", rep.Input)
	case rep.Input > 0:
		fmt.Fprintf(w, "the model takes %d input channels again (x_embedder, config in_channels)\n", rep.Input)
	}
	if rep.Sidecar != "" {
		fmt.Fprintf(w, "sidecar %s: the 16-bit base tensors and factors of the merged layers (keep it next to %s for --remove)\n", rep.Sidecar, filepath.Base(rep.Out))
	}
	var loads, not []string
	for _, v := range rep.Engines {
		if v.Loads {
			loads = append(loads, v.Engine)
		} else {
			not = append(not, v.Engine)
		}
	}
	if len(loads) > 0 {
		fmt.Fprintf(w, "loads in: %s\n", strings.Join(loads, ", "))
	}
	if len(not) > 0 {
		fmt.Fprintf(w, "does not load in: %s (svdq inspect says why)\n", strings.Join(not, ", "))
	}
	if rep.Restored {
		fmt.Fprintln(w, "every LoRA is out: the file is the base checkpoint, byte for byte (sha256 match)")
	}
}

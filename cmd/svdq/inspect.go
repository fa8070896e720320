package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "inspect",
		Usage:     "list a checkpoint's tensors, totals, metadata, model family and quantized layers",
		ArgsUsage: "PATH",
		Description: "PATH is a .safetensors file, a sharded .index.json or a diffusers folder. Only headers are read.\n" +
			"For an SVDQuant file, precision and rank per layer come from the svdq metadata, or from the\n" +
			"tensor suffixes and shapes (padded sizes) when there is none. It says how many layers carry\n" +
			"the SHA-256 of their packed tensors recorded at quantize time; --verify reads the tensors and\n" +
			"checks them (exit status 1 when one differs).\n\n" +
			"Example: svdq inspect flux-int4.safetensors",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object"},
			&cli.BoolFlag{Name: "verify", Usage: "hash every quantized layer's packed tensors and compare with the recorded sha256"},
		},
		Action: inspectAction,
	})
}

func inspectAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("inspect: want one PATH, got %d arguments", c.NArg())
	}
	in, err := model.Inspect(c.Args().First(), model.InspectOptions{Verify: c.Bool("verify")})
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := printJSON(c.App.Writer, in); err != nil {
			return err
		}
	} else {
		printInspection(c.App.Writer, in)
	}
	if len(in.Mismatches) > 0 {
		return failed(nil)
	}
	return nil
}

// printInspection prints the tensor table, totals, metadata, family and
// quantized layers.
func printInspection(w io.Writer, in *model.Inspection) {
	width := len("tensor")
	for _, t := range in.Tensors {
		width = max(width, len(t.Name))
	}
	fmt.Fprintf(w, "%-*s  %-7s  %-18s  %10s\n", width, "tensor", "dtype", "shape", "MiB")
	for _, t := range in.Tensors {
		fmt.Fprintf(w, "%-*s  %-7s  %-18s  %10.3f\n", width, t.Name, t.DType, shapeString(t.Shape), float64(t.Bytes)/(1<<20))
	}
	fmt.Fprintf(w, "\n%s: %d tensors, %d parameters, %s\n", in.Path, in.Count, in.Params, human(in.Bytes))
	if in.Format != "safetensors" || len(in.Components) > 0 || len(in.Dequant) > 0 { // how svdq reads it (formats/source)
		printInput(w, &model.InputSummary{Format: in.Format, Found: in.Found, LeftOut: in.LeftOut(), Dequant: in.Dequant})
	}
	for _, d := range slices.Sorted(maps.Keys(in.ByDType)) {
		fmt.Fprintf(w, "  %-7s %s\n", d, human(in.ByDType[d]))
	}
	if len(in.Metadata) > 0 {
		fmt.Fprintln(w, "metadata:")
		for _, k := range slices.Sorted(maps.Keys(in.Metadata)) {
			v := in.Metadata[k]
			if k == nunchaku.MetaSVDQ || k == model.MetaCalib || k == nunchaku.MetaSVDQLoras {
				v = fmt.Sprintf("(%d bytes of JSON; see --json)", len(v))
			} else if len(v) > 100 {
				v = v[:100] + fmt.Sprintf("… (%d bytes)", len(v))
			}
			fmt.Fprintf(w, "  %s = %s\n", k, strings.ReplaceAll(v, "\n", " "))
		}
	}
	if in.Family != "" {
		fmt.Fprintf(w, "family: %s\n", in.Family)
	} else {
		fmt.Fprintf(w, "family: unknown (%s)\n", in.FamilyNote)
	}
	if len(in.Layers) == 0 {
		fmt.Fprintln(w, "quantized layers: none")
		return
	}
	lw := 0
	count := map[string]int{}
	for _, l := range in.Layers {
		lw = max(lw, len(l.Name))
		form := l.Precision
		if l.Kind == nunchaku.KindW4A16 || l.Kind == nunchaku.KindW4A16G128 {
			form = l.Kind
		}
		count[form]++
	}
	fmt.Fprintf(w, "quantized layers (%d; sizes and rank from %s):\n", len(in.Layers), in.Layers[0].Source)
	for _, l := range in.Layers {
		form := fmt.Sprintf("%s r%d", l.Precision, l.Rank)
		if l.Kind == nunchaku.KindW4A16 || l.Kind == nunchaku.KindW4A16G128 {
			form = l.Kind
		}
		fmt.Fprintf(w, "  %-*s  %-13s  %-9s  %s\n", lw, l.Name, fmt.Sprintf("[%d %d]", l.N, l.K), form, mib(l.Bytes))
	}
	var parts []string
	for _, f := range []string{"int4", "nvfp4", "w4a16", "w4a16g128"} {
		if count[f] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", count[f], f))
		}
	}
	fmt.Fprintf(w, "  total: %s\n", strings.Join(parts, ", "))
	printIntegrity(w, in)
	printEngines(w, in)
	if in.LoRAs != nil { // fuse-lora
		fmt.Fprintf(w, "fused LoRAs (%d; svdq fuse-lora --remove NAME takes one out):\n", len(in.LoRAs.LoRAs))
		for _, line := range in.LoRAs.Summary() {
			fmt.Fprintf(w, "  %s\n", line)
		}
	}
}

// printIntegrity says which layers carry a recorded hash and, after
// --verify, how they compare:
//
//	integrity: 20 of 20 layers record the sha256 of their packed tensors; verified: 20 ok
func printIntegrity(w io.Writer, in *model.Inspection) {
	verified := map[string]int{}
	for _, l := range in.Layers {
		if l.Integrity != "" {
			verified[l.Integrity]++
		}
	}
	line := fmt.Sprintf("integrity: %d of %d layers record the sha256 of their packed tensors", in.Hashed, len(in.Layers))
	switch {
	case len(verified) > 0:
		line += fmt.Sprintf("; verified: %d ok, %d mismatched", verified[model.IntegrityOK], verified[model.IntegrityMismatch])
	case in.Hashed > 0:
		line += " (--verify checks them)"
	}
	fmt.Fprintln(w, line)
	if len(in.Mismatches) > 0 {
		printMismatches(w, in.Mismatches, len(in.Layers), "the file changed after it was written")
	}
}

// printEngines prints where the file loads:
//
//	loads in: nunchaku-cpp (nunchaku NunchakuFluxTransformer2dModel…), comfyui (…)
//	does not load in: nunchaku-python (…) because
//	  - rank differs from quantization_config rank 32 …
func printEngines(w io.Writer, in *model.Inspection) {
	if in.EngineNote != "" {
		fmt.Fprintf(w, "engines: %s\n", in.EngineNote)
		return
	}
	printVerdicts(w, in.Engines)
}

// printVerdicts prints engine verdicts, the engines that load first.
func printVerdicts(w io.Writer, vs []engine.Verdict) {
	var ok []string
	for _, v := range vs {
		if v.Loads {
			ok = append(ok, fmt.Sprintf("%s (%s)", v.Engine, v.Loader))
		}
	}
	if len(ok) > 0 {
		fmt.Fprintf(w, "loads in: %s\n", strings.Join(ok, "; "))
	}
	for _, v := range vs {
		if v.Loads {
			continue
		}
		fmt.Fprintf(w, "does not load in: %s (%s) because\n", v.Engine, v.Loader)
		for _, p := range v.Problems {
			fmt.Fprintf(w, "  - %s\n", p)
		}
	}
}

// shapeString formats a shape as [a b c].
func shapeString(s []int64) string {
	parts := make([]string, len(s))
	for i, d := range s {
		parts[i] = fmt.Sprint(d)
	}
	return "[" + strings.Join(parts, " ") + "]"
}

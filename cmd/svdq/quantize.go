package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "quantize",
		Usage:     "quantize a 16-bit checkpoint to an SVDQuant W4A4 file nunchaku loads",
		ArgsUsage: " ",
		Description: "Streams the checkpoint layer by layer (peak memory: about --workers layers), runs the\n" +
			"SVDQuant pipeline on every layer the model's preset marks W4A4 (adaLN modulation: W4A16; the\n" +
			"t5-xxl text encoder's linears: weight-only, group 128, as nunchaku's T5 W4Linear),\n" +
			"writes each packed layer as soon as it is done and copies 16-bit tensors unchanged.\n" +
			"The same inputs and options give a byte-identical file.\n\n" +
			"Example: svdq quantize --model flux1-dev.safetensors --calib calib.safetensors --out flux1-dev-int4.safetensors",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "16-bit checkpoint: .safetensors, sharded .index.json or diffusers folder"},
			&cli.StringFlag{Name: "calib", Usage: "calibration statistics (svdq-calib/1 `FILE`)"},
			&cli.StringFlag{Name: "out", Usage: "output .safetensors `FILE` (its directory must exist)"},
			&cli.StringFlag{Name: "arch", Value: "auto", Usage: "model family, or auto to detect: " + strings.Join(preset.Names(), ", ")},
			&cli.StringFlag{Name: "precision", Value: "int4", Usage: "4-bit format: int4 or nvfp4"},
			&cli.IntFlag{Name: "rank", Value: quant.DefaultRank, Usage: "rank of the 16-bit low-rank branch (0: none)"},
			&cli.IntFlag{Name: "workers", Value: model.DefaultWorkers(), Usage: "layers quantized at once"},
			&cli.StringFlag{Name: "smooth-search", Value: "fast", Usage: "smoothing search: fast (~15 candidates; full-size FLUX.1-dev in about a quarter of full's time, mean error within 0.6% of it), full (the reference's 39) or off (α = β = 0.5)"},
			&cli.IntFlag{Name: "iters", Value: quant.DefaultIters, Usage: "low-rank refinement iterations at most (0: none)"},
			&cli.BoolFlag{Name: "gptq", Usage: "GPTQ on the W4A4 residual where it beats round-to-nearest, and on W4A16 (adaLN) weights where it wins on held-out calibration rows"},
			&cli.StringSliceFlag{Name: "include", Usage: "generic family: quantize only weights matching `REGEX` (repeatable)"},
			&cli.StringSliceFlag{Name: "exclude", Usage: "generic family: never quantize weights matching `REGEX` (repeatable)"},
			&cli.BoolFlag{Name: "pass-unknown", Usage: "keep tensors the preset does not know 16-bit instead of failing"},
			&cli.BoolFlag{Name: "allow-missing-bias", Usage: "quantize a linear without the bias every real checkpoint of its family has (FLUX, Qwen-Image, SDXL, SANA, PixArt) instead of failing"},
			&cli.StringFlag{Name: "target", Value: "all", Usage: "engine the file must load in: all (every engine that runs the family), " + strings.Join(engine.Engines, ", ")},
			&cli.StringFlag{Name: "dtype", Usage: "16-bit type of the output: bf16 or fp16 (default: the checkpoint's; fp16 for GPUs without BF16)"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the plan and the output size; quantize and write nothing"},
			&cli.StringFlag{Name: "report", Usage: "write per-layer results and totals to `FILE.json`"},
			&cli.StringFlag{Name: "extract-component", Usage: "write component `NAME` of an all-in-one checkpoint (vae, clip_l, t5xxl, …: the summary lists them) to --out as plain safetensors, and quantize nothing"},
			&cli.BoolFlag{Name: "resume", Usage: "continue an interrupted run from the finished layers in OUT.svdq-work (a matching one is reused even without this flag; with it, a missing one is an error)"},
			&cli.StringFlag{Name: "shard", Usage: "quantize shard `I/N` (I from 0) of the layers, balanced by cost, into a part for svdq merge"},
		},
		Action: quantizeAction,
	})
}

// planOptions reads the flags shared by the plan and the job.
func planOptions(c *cli.Context) (model.PlanOptions, error) {
	opt := model.PlanOptions{Model: c.String("model"), Arch: c.String("arch"), Rank: c.Int("rank"),
		PassUnknown: c.Bool("pass-unknown"), AllowMissingBias: c.Bool("allow-missing-bias"), Target: c.String("target")}
	var err error
	if opt.DType, err = parseDType(c.String("dtype")); err != nil {
		return opt, err
	}
	if opt.Precision, err = quant.ParsePrecision(c.String("precision")); err != nil {
		return opt, err
	}
	switch {
	case opt.Rank < 0:
		return opt, fmt.Errorf("--rank %d is negative", opt.Rank)
	case opt.Rank == 0:
		opt.Rank = -1 // no branch
	}
	if opt.Include, err = regexps("include", c.StringSlice("include")); err != nil {
		return opt, err
	}
	if opt.Exclude, err = regexps("exclude", c.StringSlice("exclude")); err != nil {
		return opt, err
	}
	return opt, nil
}

// parseDType reads --dtype: "" (keep), bf16 or fp16.
func parseDType(s string) (quant.Float16, error) {
	switch strings.ToLower(s) {
	case "":
		return 0, nil
	case "bf16", "bfloat16":
		return quant.BF16, nil
	case "fp16", "f16", "float16":
		return quant.F16, nil
	}
	return 0, fmt.Errorf("--dtype %q: want bf16 or fp16", s)
}

// regexps compiles the values of a repeatable regex flag.
func regexps(flag string, vs []string) ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	for _, v := range vs {
		re, err := regexp.Compile(v)
		if err != nil {
			return nil, fmt.Errorf("--%s %q: %v", flag, v, err)
		}
		out = append(out, re)
	}
	return out, nil
}

func quantizeAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("quantize: unexpected argument %q", c.Args().First())
	}
	if name := c.String("extract-component"); name != "" {
		return extractAction(c, name)
	}
	po, err := planOptions(c)
	if err != nil {
		return err
	}
	if c.Bool("dry-run") {
		plan, r, err := model.QuantizePlan(po)
		if err != nil {
			return err
		}
		r.Close()
		printPlan(c.App.Writer, plan)
		vs, err := plan.Verdicts("svdq " + version)
		if err != nil {
			return err
		}
		printVerdicts(c.App.Writer, vs)
		return nil
	}
	for _, f := range []string{"calib", "out"} {
		if c.String(f) == "" {
			return fmt.Errorf("quantize: --%s is required (or pass --dry-run)", f)
		}
	}
	search, err := quant.ParseSearchMode(c.String("smooth-search"))
	if err != nil {
		return err
	}
	iters := c.Int("iters")
	switch {
	case iters < 0:
		return fmt.Errorf("--iters %d is negative", iters)
	case iters == 0:
		iters = -1 // none
	}
	report := c.String("report") // checked with the other paths before the action (files.go)
	opt := model.QuantizeOptions{PlanOptions: po, Calib: c.String("calib"), Out: c.String("out"),
		Search: search, Iters: iters, GPTQ: c.Bool("gptq"), Workers: c.Int("workers"), Tool: "svdq " + version,
		Resume: c.Bool("resume")}
	if sh := c.String("shard"); sh != "" {
		if opt.Shard, err = model.ParseShard(sh); err != nil {
			return err
		}
	}
	plan, r, err := model.QuantizePlan(po) // early errors, the bar's total, the name column
	if err != nil {
		return err
	}
	r.Close()
	width := 0
	for _, l := range plan.Layers {
		width = max(width, len(l.Name))
	}
	workers := opt.Workers
	if workers <= 0 {
		workers = model.DefaultWorkers()
	}
	if d, ok := plan.Expected(search, workers); ok && d >= time.Minute && opt.Shard.N == 0 { // the model is calibrated at full size
		m, _ := model.Measured(search)
		fmt.Fprintf(c.App.Writer, "quantizing %d layers, %d workers: expect about %s here (measured: full-size FLUX.1-dev %d min %d s on a 2-core EPYC; a busy or slower CPU takes longer)\n",
			len(plan.Layers), workers, roundDuration(d), int(m/time.Minute), int(m%time.Minute/time.Second))
	}
	b := newBar(c.App.Writer, int64(plan.ShardLayers(opt.Shard)), "quantize", false)
	opt.OnLayer = func(l model.LayerReport) { b.println(layerLine(l, width), 1) }
	opt.Notes = func(s string) { b.println(s, 0) }
	rep, err := model.Quantize(opt)
	b.finish()
	if err != nil {
		return err
	}
	if rep.Shard != nil {
		printPart(c.App.Writer, rep, opt.Out)
		return writeReport(report, rep)
	}
	printSummary(c.App.Writer, rep, opt.Out)
	if err := printNextStep(c.App.Writer, rep.Plan, opt.Out, opt.Calib); err != nil {
		return err
	}
	return writeReport(report, rep)
}

// writeReport writes v as indented JSON to path ("": nothing).
func writeReport(path string, v any) error {
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(data, '\n'), 0o644)
}

// dirExists checks that the directory of path exists.
func dirExists(path string) error {
	dir := filepath.Dir(path)
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("%s: directory %s does not exist", path, dir)
	}
	return nil
}

// weightOnlyForm reports whether a layer precision is a weight-only form
// (no low-rank branch): w4a16, or w4a16g128 (nunchaku's T5 W4Linear).
func weightOnlyForm(p string) bool { return p == "w4a16" || p == nunchaku.KindW4A16G128 }

// layerLine formats one finished layer:
//
//	[ 12/342] transformer_blocks.0.qkv_proj [9216 3072] bf16 -> int4 r32  err 0.031  54.0 MiB -> 14.6 MiB
func layerLine(l model.LayerReport, width int) string {
	digits := len(fmt.Sprint(l.Total))
	form := l.Precision
	if !weightOnlyForm(l.Precision) {
		form += fmt.Sprintf(" r%d", l.Rank)
	}
	reused := ""
	if l.Reused {
		reused = "  (reused)"
	}
	return fmt.Sprintf("[%*d/%d] %-*s %-13s %s -> %-9s err %.3f  %s -> %s%s",
		digits, l.Index, l.Total, width, l.Name, fmt.Sprintf("[%d %d]", l.Shape[0], l.Shape[1]),
		strings.ToLower(l.DType), form, l.RelError, mib(l.InBytes), mib(l.OutBytes), reused)
}

// printSummary prints sizes, bits per weight, errors, kept tensors by
// reason and time.
func printSummary(w io.Writer, rep *model.QuantizeReport, out string) {
	p, t := rep.Plan, rep.Totals
	form := fmt.Sprintf("%s (rank %d)", p.Precision, p.Rank)
	if !p.HasW4A4() && len(p.Layers) > 0 { // weight-only (t5-xxl): no precision or rank choice
		form = p.Layers[0].Precision
	}
	fmt.Fprintf(w, "\nwrote %s: %d layers %s, %d tensors kept 16-bit\n", out, t.Layers, form, t.Kept)
	fmt.Fprintf(w, "size: %s -> %s (%.2fx smaller); quantized layers %.2f bits per weight\n",
		human(t.InBytes), human(t.OutBytes), float64(t.InBytes)/float64(max(t.OutBytes, 1)), t.BitsPerWeight)
	worst := ""
	for _, l := range rep.Layers {
		if l.RelError == t.MaxRelError {
			worst = l.Name
		}
	}
	fmt.Fprintf(w, "relative error on calibration rows: mean %.4f, max %.4f (%s)\n", t.MeanRelError, t.MaxRelError, worst)
	printKept(w, p)
	printConversions(w, p)
	printInput(w, rep.Input)
	fmt.Fprintf(w, "time: %s\n", time.Duration(t.Seconds*float64(time.Second)).Round(time.Millisecond))
}

// printNextStep says where the written file loads and how to check it:
//
//	loads in: nunchaku-python (nunchaku NunchakuQwenImageTransformer2DModel.from_pretrained)
//	next: svdq check --model q.safetensors --reference model.safetensors --calib calib.safetensors; svdq inspect q.safetensors
func printNextStep(w io.Writer, p *model.Plan, out, calib string) error {
	vs, err := p.Verdicts("svdq " + version)
	if err != nil {
		return err
	}
	if len(vs) == 0 {
		fmt.Fprintf(w, "no nunchaku engine runs family %s: the file is for svdq check and your own loader\n", p.Family)
	} else {
		printVerdicts(w, vs)
	}
	fmt.Fprintf(w, "next: svdq check --model %s --reference %s --calib %s; svdq inspect %s (README: \"Load it\")\n", out, p.Model, calib, out)
	return nil
}

// printConversions says which kept tensors were written in another dtype
// than the checkpoint's (FP8 widened exactly; --dtype; a loader's dtype):
//
//	converted: 2 tensors F8_E4M3 → BF16
func printConversions(w io.Writer, p *model.Plan) {
	c := p.Conversions()
	for _, k := range slices.Sorted(maps.Keys(c)) {
		fmt.Fprintf(w, "converted: %d tensors %s\n", c[k], k)
	}
}

// printKept prints the kept tensors grouped by reason.
func printKept(w io.Writer, p *model.Plan) {
	count, order := p.KeptReasons()
	if len(order) == 0 {
		return
	}
	fmt.Fprintln(w, "kept 16-bit:")
	for _, r := range order {
		fmt.Fprintf(w, "  %4d  %s\n", count[r], r)
	}
}

// printPlan prints a dry run: every layer with role, shape and sources,
// every kept tensor with its reason, and the output size.
func printPlan(w io.Writer, p *model.Plan) {
	fmt.Fprintf(w, "%s: family %s (%s names), %d quantized layers, %d tensors kept 16-bit\n",
		p.Model, p.Family, p.Naming, len(p.Layers), len(p.Kept))
	width := 0
	for _, l := range p.Layers {
		width = max(width, len(l.Name))
	}
	for i, l := range p.Layers {
		form := l.Precision
		if !weightOnlyForm(l.Precision) {
			form += fmt.Sprintf(" r%d", l.R)
		}
		extra := ""
		if l.Shifted && p.Precision == quant.INT4 {
			extra += " shifted"
		}
		if l.SmoothGroup != "" {
			extra += " smooth-group=" + l.SmoothGroup
		}
		if l.Chunks > 0 {
			extra += fmt.Sprintf(" chunks=%d", l.Chunks)
		}
		fmt.Fprintf(w, "[%*d/%d] %-*s %-5s %-13s %-9s %s -> %s%s\n", len(fmt.Sprint(len(p.Layers))), i+1, len(p.Layers),
			width, l.Name, l.Role, fmt.Sprintf("[%d %d]", l.N, l.K), form, mib(l.InBytes), mib(l.OutBytes), extra)
		for _, s := range l.Sources {
			bias := ""
			if s.Bias != "" {
				bias = " + " + s.Bias
			}
			fmt.Fprintf(w, "      rows %-12s <- %s rows %s cols %s%s\n", s.Rows, s.Tensor, s.SrcRows, s.Cols, bias)
		}
	}
	fmt.Fprintln(w, "kept 16-bit:")
	for _, k := range p.Kept {
		how := ""
		if k.Transform != "" {
			how = " (" + k.Transform + ")"
		} else if k.Name != k.Tensor {
			how = " <- " + k.Tensor
		}
		fmt.Fprintf(w, "  %-50s %-5s %v  %s%s\n", k.Name, k.DType, k.Shape, k.Reason, how)
	}
	count, order := p.KeptReasons()
	for _, r := range order {
		fmt.Fprintf(w, "  %4d  %s\n", count[r], r)
	}
	printConversions(w, p)
	printInput(w, p.InputSummary())
	fmt.Fprintf(w, "output: %s -> %s (estimate, header excluded); quantized layers %.2f bits per weight\n",
		human(p.InBytes), human(p.OutBytes), p.BitsPerWeight())
}

// roundDuration prints an estimate with the precision it deserves.
func roundDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d s", int(d.Round(time.Second)/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%d min", int(d.Round(time.Minute)/time.Minute))
	}
	d = d.Round(time.Minute)
	return fmt.Sprintf("%d h %02d min", int(d/time.Hour), int(d%time.Hour/time.Minute))
}

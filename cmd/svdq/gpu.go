package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/svdq/svdq/kernels"
	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/quant/model"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "gpu-check",
		Usage:     "run every quantized layer on the GPU from the file's packed bytes and compare with the emulation",
		ArgsUsage: " ",
		Description: "Uploads each W4A4 layer's tensors exactly as stored and runs the fused CUDA kernels (INT4\n" +
			"and NVFP4, on the tensor cores) on the layer's calibration rows (weight-only layers, w4a16 and\n" +
			"the T5's w4a16g128, are not run: a file with no W4A4 layer is refused). Reports\n" +
			"the max and relative difference against the CPU emulation of the same file, which must agree bit\n" +
			"for bit once it is given the GPU's low-rank down-projection sums (those are checked within their\n" +
			"FP32 bound: the GPU adds them with atomics, in no fixed order), and the error of\n" +
			"the GPU output against the 16-bit reference layer. Exit status 1 when a layer mismatches,\n" +
			"2 on bad input or when no GPU is found.\n\n" +
			"The emulation reads the same bytes as the GPU, so a corrupted file corrupts both alike:\n" +
			"the comparison proves that the kernels read the packed layout as the emulation does. So,\n" +
			"before the GPU is opened, each layer's packed tensors are hashed and compared with the\n" +
			"SHA-256 recorded at quantize time (svdq metadata): a layer whose bytes differ is reported,\n" +
			"nothing runs and the exit status is 1. --flip corrupts one byte of the GPU's copy only,\n" +
			"to see the comparison fail.\n\n" +
			"Example: svdq gpu-check --model flux-int4.safetensors --reference flux1-dev.safetensors --calib calib.safetensors",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "quantized `Q.safetensors`"},
			&cli.StringFlag{Name: "reference", Required: true, Usage: "the 16-bit checkpoint it was made from (`FP_PATH`)"},
			&cli.StringFlag{Name: "calib", Required: true, Usage: "calibration statistics (svdq-calib/1 `FILE`)"},
			&cli.StringFlag{Name: "layers", Usage: "check only layers whose name matches `REGEX`"},
			&cli.IntFlag{Name: "rows", Value: 256, Usage: "calibration rows per layer at most"},
			&cli.IntFlag{Name: "gpu", Usage: "GPU ordinal"},
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"},
			&cli.StringFlag{Name: "flip", Usage: "fault injection: flip one byte of `LAYER.TENSOR[:BYTE]` in the GPU's copy only\n" +
				"(default byte: the middle), to show that the check catches a kernel that misreads it"},
		},
		Action: gpuCheckAction,
	})
	register(&cli.Command{
		Name:      "bench-gpu",
		Usage:     "time the W4A4 kernels (fused, without low-rank, unfused) against cuBLAS BF16 on FLUX.1 shapes",
		ArgsUsage: " ",
		Description: "For N×K in 9216×3072, 3072×3072, 12288×3072, 3072×12288, 3072×15360 and M in 256, 1024, 4096\n" +
			"tokens: the median time (CUDA events, L2 flushed before each run) of the fused W4A4 layer\n" +
			"(activation pass with the low-rank down projection, GEMM with bias and up projection),\n" +
			"the same without the low-rank branch, the unfused variant (separate low-rank passes) and\n" +
			"cuBLAS BF16; TOPS (2·M·N·K) and the ratios. Random data; rank 32.\n\n" +
			"On Hopper (sm_90) the INT4 GEMM is the wgmma kernel (FP8 for BF16 models, INT8 for FP16);\n" +
			"SVDQ_GEMM=mma times the mma.sync kernels instead, to compare. --precision nvfp4 times NVFP4\n" +
			"layers (FP16 mma kernels on every card) instead of INT4; --dtype f16 FP16 layers (on Hopper the\n" +
			"INT8 wgmma) instead of BF16.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"},
			&cli.IntFlag{Name: "iters", Value: 30, Usage: "timed runs per variant (the median is reported)"},
			&cli.IntFlag{Name: "rank", Value: 32, Usage: "low-rank size (a multiple of 16)"},
			&cli.StringSliceFlag{Name: "shape", Usage: "time only `NxK` (repeatable; multiples of 128)"},
			&cli.IntSliceFlag{Name: "tokens", Usage: "token counts `M` (repeatable; default 256, 1024, 4096)"},
			&cli.StringFlag{Name: "precision", Value: "int4", Usage: "layer precision to time: `int4` or nvfp4"},
			&cli.StringFlag{Name: "dtype", Value: "bf16", Usage: "the layers' 16-bit type: `bf16` or f16 (the BF16 baseline stays BF16)"},
			&cli.IntFlag{Name: "gpu", Usage: "GPU ordinal"},
		},
		Action: benchGPUAction,
	})
}

// ---- bench-gpu ----

// benchReport is what bench-gpu --json prints.
type benchReport struct {
	Device  string                `json:"device"`
	PTX     string                `json:"ptx"`
	NVCC    string                `json:"nvcc"`
	BF16    string                `json:"bf16_baseline"`
	Prec    string                `json:"precision"`
	DType   string                `json:"dtype"`
	Results []kernels.BenchResult `json:"results"`
	Targets []benchTarget         `json:"targets"`
}

// benchTarget is one of the goals with where the run stands.
type benchTarget struct {
	Goal  string  `json:"goal"`
	Worst float64 `json:"worst"`
	Met   bool    `json:"met"`
}

func benchGPUAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	opt := kernels.BenchOptions{Iters: c.Int("iters"), Rank: c.Int("rank"), Tokens: c.IntSlice("tokens")}
	var err error
	if opt.Precision, err = quant.ParsePrecision(c.String("precision")); err != nil {
		return fmt.Errorf("--precision %q: want int4 or nvfp4", c.String("precision"))
	}
	switch c.String("dtype") {
	case "bf16":
		opt.DType = quant.BF16
	case "f16":
		opt.DType = quant.F16
	default:
		return fmt.Errorf("--dtype %q: want bf16 or f16", c.String("dtype"))
	}
	for _, s := range c.StringSlice("shape") {
		var sh kernels.Shape
		if _, err := fmt.Sscanf(strings.ReplaceAll(s, "×", "x"), "%dx%d", &sh.N, &sh.K); err != nil ||
			sh.N <= 0 || sh.K <= 0 || sh.N%128 != 0 || sh.K%128 != 0 {
			return fmt.Errorf("--shape %q: want NxK with multiples of 128", s)
		}
		opt.Shapes = append(opt.Shapes, sh)
	}
	d, err := kernels.Open(c.Int("gpu"))
	if err != nil {
		return err
	}
	defer d.Close()
	asJSON, out := c.Bool("json"), c.App.Writer
	if !asJSON {
		fmt.Fprintf(out, "device: %v\nPTX %s (%s)\nprecision: %s, dtype %s\n", d, d.PTX.File, d.PTX.NVCC, c.String("precision"),
			c.String("dtype"))
		fmt.Fprintf(out, "%-12s %5s  %9s %9s %9s %9s  %7s %7s %7s  %8s %8s %8s\n", "N×K", "M", "fused µs", "w4a4 µs",
			"unfused", "bf16 µs", "TOPS", "w4a4", "bf16", "lowrank", "unfused", "vs bf16")
	}
	res, note, err := d.Bench(opt, func(r kernels.BenchResult) {
		if !asJSON {
			fmt.Fprintf(out, "%-12s %5d  %9.1f %9.1f %9.1f %9.1f  %7.0f %7.0f %7.0f  %+7.1f%% %+7.1f%% %7.2f×\n",
				fmt.Sprintf("%d×%d", r.N, r.K), r.M, r.FusedUS, r.W4A4US, r.UnfusedUS, r.BF16US, r.FusedTOPS,
				r.W4A4TOPS, r.BF16TOPS, 100*r.LowRankCost, 100*r.UnfusedCost, r.SpeedupBF16)
		}
	})
	if err != nil {
		return err
	}
	rep := benchReport{Device: d.String(), PTX: d.PTX.File, NVCC: d.PTX.NVCC, BF16: note, Prec: c.String("precision"), DType: c.String("dtype"), Results: res,
		Targets: benchTargets(res)}
	if asJSON {
		return printJSON(out, rep)
	}
	fmt.Fprintln(out, note)
	for _, t := range rep.Targets {
		verdict := "NOT MET"
		if t.Met {
			verdict = "met"
		}
		fmt.Fprintf(out, "target %-55s worst %.3f: %s\n", t.Goal, t.Worst, verdict)
	}
	return nil
}

// benchTargets checks the three goals over all shapes.
func benchTargets(res []kernels.BenchResult) []benchTarget {
	lr := benchTarget{Goal: "fused low-rank branch costs ≤ 15% over W4A4 (max cost)", Worst: -1}
	big := benchTarget{Goal: "M=4096: fused ≥ BF16 speed (min BF16/fused)", Worst: -1}
	small := benchTarget{Goal: "M=256: fused ≥ 2.5× BF16 speed (min BF16/fused)", Worst: -1}
	for _, r := range res {
		lr.Worst = max(lr.Worst, r.LowRankCost)
		if r.BF16US == 0 {
			continue
		}
		switch r.M {
		case 4096:
			if big.Worst < 0 || r.SpeedupBF16 < big.Worst {
				big.Worst = r.SpeedupBF16
			}
		case 256:
			if small.Worst < 0 || r.SpeedupBF16 < small.Worst {
				small.Worst = r.SpeedupBF16
			}
		}
	}
	lr.Met = lr.Worst <= 0.15
	big.Met = big.Worst >= 1
	small.Met = small.Worst >= 2.5
	return []benchTarget{lr, big, small}
}

// ---- gpu-check ----

func gpuCheckAction(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	re, err := layersFlag(c)
	if err != nil {
		return err
	}
	asJSON, out := c.Bool("json"), c.App.Writer
	var b *bar
	width := 0
	opt := model.GPUCheckOptions{Model: c.String("model"), Reference: c.String("reference"), Calib: c.String("calib"),
		Layers: re, Rows: c.Int("rows"), GPU: c.Int("gpu"), Flip: c.String("flip"),
		OnStart: func(s model.GPUCheckStart) {
			if !asJSON {
				fmt.Fprintf(out, "device: %s\nPTX %s (%s)\n", s.Device, s.PTX, s.NVCC)
			}
			for _, n := range s.Layers {
				width = max(width, len(n))
			}
			b = newBar(out, int64(len(s.Layers)), "gpu-check", false)
		},
		OnLayer: func(l model.GPULayer, done, total int) {
			line := ""
			if !asJSON {
				line = formatGPULayer(l, done, total, width)
			}
			b.println(line, 1)
		}}
	rep, err := model.GPUCheck(opt)
	if b != nil {
		b.finish()
	}
	if err != nil {
		return err
	}
	if asJSON {
		if err := printJSON(out, rep); err != nil {
			return err
		}
	} else if len(rep.Mismatches) > 0 {
		printMismatches(out, rep.Mismatches, len(rep.Layers), "nothing was run on the GPU")
	} else {
		printGPUSummary(out, rep)
	}
	if !rep.Passed {
		return failed(nil)
	}
	return nil
}

func formatGPULayer(r model.GPULayer, i, n, width int) string {
	verdict := "ok"
	if !r.OK {
		verdict = "MISMATCH"
		if r.Worst != "" {
			verdict += " (worst: " + r.Worst + ")"
		}
	}
	lr := ""
	if r.LowRankOff > 0 {
		lr = fmt.Sprintf(", %d low-rank sums off", r.LowRankOff)
	}
	return fmt.Sprintf("[%*d/%d] %-*s  %-5s %-9s  %4d rows  max|Δ| %-9.3g rel %-9.3g %d/%d outside%s  vs 16-bit %.4f  %s",
		len(fmt.Sprint(n)), i, n, width, r.Name, r.Precision, r.Kernel, r.Rows, r.MaxAbs, r.RelDiff, r.Outside,
		r.Elements, lr, r.RefError, verdict)
}

func printGPUSummary(w io.Writer, rep *model.GPUCheckReport) {
	bad, worst, worstName, sumRef, exact, elems := 0, 0.0, "", 0.0, 0, 0
	for _, l := range rep.Layers {
		exact += l.Exact
		elems += l.Elements
		if !l.OK {
			bad++
		}
		if l.RelDiff >= worst {
			worst, worstName = l.RelDiff, l.Name
		}
		sumRef += l.RefError
	}
	verdict := "passed"
	if !rep.Passed {
		verdict = "FAILED"
	}
	mean := 0.0
	if len(rep.Layers) > 0 {
		mean = sumRef / float64(len(rep.Layers))
	}
	fmt.Fprintf(w, "%s: %d layers, %d mismatched; %d of %d outputs bit-exact; largest GPU/emulation rel diff %.3g (%s); mean error vs 16-bit %.4f\n",
		verdict, len(rep.Layers), bad, exact, elems, worst, worstName, mean)
}

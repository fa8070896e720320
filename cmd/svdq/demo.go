package main

import (
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/svdq/svdq/examples/tinydit"
	"github.com/svdq/svdq/quant"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:      "demo",
		Usage:     "quantize a tiny FLUX-like DiT end to end and print its final-output error per method (no downloads)",
		ArgsUsage: " ",
		Description: "Builds the tiny diffusion transformer of examples/tinydit (FLUX.1 names and layer graph,\n" +
			"deterministic weights with the outlier structure of real DiTs), writes it as a bf16\n" +
			"checkpoint, runs the calibration pass (forward passes over random latent, text and\n" +
			"timestep inputs, hooks on every linear writing an svdq-calib/1 file), quantizes it with\n" +
			"the quantize job in INT4 and NVFP4, builds the naive W4A4, SmoothQuant W4A4 and W4A16\n" +
			"baselines, runs every variant through the CPU emulation on held-out inputs and prints\n" +
			"the final output's relative error and PSNR against the 16-bit model.\n" +
			"Exit status 1 when SVDQuant INT4 does not beat naive and SmoothQuant W4A4 on PSNR.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Usage: "keep the checkpoint, calibration and quantized files in `DIR` (created if missing)"},
			&cli.StringFlag{Name: "smooth-search", Value: "fast", Usage: "smoothing search `full|fast|off` (full: the reference's 39 candidates, about twice the time)"},
			&cli.IntFlag{Name: "rank", Value: quant.DefaultRank, Usage: "low-rank branch of the SVDQuant variants"},
			&cli.BoolFlag{Name: "exact", Usage: "evaluate with the kernel-exact emulation (16-bit INT4 accumulator) instead of the fast one; several times slower"},
			&cli.IntFlag{Name: "calib-samples", Value: 256, Usage: "calibration samples"},
			&cli.IntFlag{Name: "eval-samples", Value: 32, Usage: "held-out samples"},
			&cli.Uint64Flag{Name: "seed", Usage: "seed of the inputs and the calibration sample"},
			&cli.BoolFlag{Name: "small", Usage: "run the smaller test model (width 128, one block of each kind)"},
		},
		Action: demoAction,
	})
}

func demoAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("demo: unexpected argument %q", c.Args().First())
	}
	search, err := quant.ParseSearchMode(c.String("smooth-search"))
	if err != nil {
		return fmt.Errorf("demo: %v", err)
	}
	if c.Int("rank") < 1 || c.Int("calib-samples") < 1 || c.Int("eval-samples") < 1 {
		return fmt.Errorf("demo: --rank, --calib-samples and --eval-samples must be ≥ 1")
	}
	dir := c.String("dir")
	if dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	} else {
		if dir, err = os.MkdirTemp("", "svdq-demo-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	opt := tinydit.DemoOptions{Dir: dir, Search: search, Rank: c.Int("rank"), Seed: c.Uint64("seed"),
		CalibSamples: c.Int("calib-samples"), EvalSamples: c.Int("eval-samples"),
		Log: func(format string, args ...any) { fmt.Fprintf(c.App.ErrWriter, "svdq demo: "+format+"\n", args...) }}
	if c.Bool("small") {
		opt.Config = tinydit.SmallConfig()
	}
	if c.Bool("exact") {
		opt.Emulation = tinydit.Exact
	}
	rep, err := tinydit.RunDemo(opt)
	if err != nil {
		return err
	}
	printDemo(c.App.Writer, rep, opt.Rank, c.String("dir") != "")
	if ok, why := demoClaim(rep); !ok {
		return failed(fmt.Errorf("demo: %s", why))
	}
	return nil
}

// printDemo prints the setup, the table and the timing.
func printDemo(w io.Writer, rep *tinydit.DemoReport, rank int, kept bool) {
	cfg := rep.Config
	fmt.Fprintf(w, "tiny FLUX-like DiT (examples/tinydit): %d double + %d single blocks, width %d (%d heads × %d), MLP %d,\n",
		cfg.Double, cfg.Single, cfg.Dim, cfg.Heads(), cfg.HeadDim, cfg.MLPDim)
	fmt.Fprintf(w, "  %.2f M parameters (%.2f M in 4-bit layers); %d image + %d text tokens per sample\n",
		float64(rep.Params)/1e6, float64(rep.QuantParams)/1e6, cfg.ImageTokens(), cfg.TextTokens)
	fmt.Fprintf(w, "calibration: %d samples (%d rows per image-stream layer input); quantization: rank %d, smoothing search %s, bf16\n",
		rep.CalibSamples, rep.CalibRows, rank, rep.Search)
	emu := "fast (kernel activation quantization, float32 products)"
	if rep.Emulation == tinydit.Exact {
		emu = "exact (kernel arithmetic, 16-bit INT4 accumulator)"
	}
	fmt.Fprintf(w, "evaluation: %d held-out samples, emulation %s;\n", rep.EvalSamples, emu)
	fmt.Fprintf(w, "  output = predicted velocity [%d tokens × %d]; PSNR peak = range of the 16-bit output (%.2f)\n\n",
		cfg.ImageTokens(), cfg.InChannels, rep.Peak)
	fmt.Fprintf(w, "%-18s %7s %10s %11s %8s %7s\n", "method", "bits/w", "layer err", "output err", "PSNR dB", "time")
	for _, m := range rep.Methods {
		fmt.Fprintf(w, "%-18s %7.2f %10.4f %11.4f %8.2f %6.1fs\n", m.Name, m.Bits, m.LayerError, m.OutputError, m.PSNR, m.Seconds)
	}
	fmt.Fprintf(w, "\nbits/w: packed bits per weight of the quantized layers (nunchaku layout; branch, scales, adaLN W4A16 included)\n")
	fmt.Fprintf(w, "layer err: mean ‖Yq − Y‖/‖XWᵀ‖ of the W4A4 layers on calibration rows; output err: ‖Ŷ − Y‖/‖Y‖ of the final output\n")
	if s, w16 := method(rep, tinydit.MethodSVDQuantINT), method(rep, tinydit.MethodW4A16); s != nil && w16 != nil {
		fmt.Fprintf(w, "SVDQuant INT4 vs W4A16: %+.2f dB PSNR (output error %.4f vs %.4f)\n", s.PSNR-w16.PSNR, s.OutputError, w16.OutputError)
	}
	var quantSecs float64
	for _, m := range rep.Methods {
		quantSecs += m.Seconds
	}
	fmt.Fprintf(w, "total %.1fs (model %.1fs, calibration %.1fs, quantization %.1fs, evaluation %.1fs) on %d CPUs\n",
		rep.TotalSeconds, rep.BuildSeconds, rep.CalibSeconds, quantSecs, rep.EvalSeconds, runtime.NumCPU())
	if kept {
		fmt.Fprintf(w, "files: %s, %s, %s, %s\n", rep.Checkpoint, rep.Calib, rep.INT4, rep.NVFP4)
	}
}

func method(rep *tinydit.DemoReport, name string) *tinydit.DemoMethod {
	for i := range rep.Methods {
		if rep.Methods[i].Name == name {
			return &rep.Methods[i]
		}
	}
	return nil
}

// demoClaim checks the claim the demo exists for: SVDQuant INT4 has a
// higher final-output PSNR than naive and SmoothQuant W4A4.
func demoClaim(rep *tinydit.DemoReport) (bool, string) {
	s := method(rep, tinydit.MethodSVDQuantINT)
	for _, name := range []string{tinydit.MethodNaive, tinydit.MethodSmoothQuant} {
		b := method(rep, name)
		if s == nil || b == nil || !(s.PSNR > b.PSNR) {
			return false, fmt.Sprintf("SVDQuant INT4 does not beat %s on final-output PSNR", name)
		}
	}
	return true, ""
}

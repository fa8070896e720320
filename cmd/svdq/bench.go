package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"time"

	"github.com/svdq/svdq/quant"
	"github.com/svdq/svdq/svd"
	"github.com/svdq/svdq/svd/openblas"
	"github.com/urfave/cli/v2"
)

func init() {
	register(&cli.Command{
		Name:  "bench",
		Usage: "measure the speed of this machine's quantization kernels",
		Subcommands: []*cli.Command{{
			Name:      "cpu",
			Usage:     "GEMM GFLOP/s (ours, gonum, OpenBLAS if built in), randomized SVD and per-layer seconds on FLUX.1 shapes",
			ArgsUsage: " ",
			Description: "Measures, with random data and the best of repeated runs:\n" +
				"  - svd.Gemm (float32, the CPU's best kernel set) and gonum's float64 mat.Dense.Mul, in GFLOP/s,\n" +
				"    on M×N×K = 3072×3072×3072, 256×3072×3072 (calibration rows × a weight) and 3072×40×12288\n" +
				"    (the randomized SVD's range finder); gemm_gflops and gonum_gflops are the 3072³ figures;\n" +
				"  - OpenBLAS sgemm on the same shapes when svdq is built with -tags openblas (cgo,\n" +
				"    Debian libopenblas-dev; unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE to let it pick its kernels);\n" +
				"  - the rank-32 randomized SVD of a 3072×12288 matrix (default options), in seconds;\n" +
				"  - the seconds to quantize one synthetic FLUX-like 3072×3072 layer (INT4, rank 32, 256 rows)\n" +
				"    with the fast and the full smoothing search.\n" +
				"--size scales every dimension (3072 → size) for a quick run. Takes about a minute at full size.\n\n" +
				"Example: svdq bench cpu --json",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"},
				&cli.IntFlag{Name: "size", Value: 3072, Usage: "base dimension `N` (3072: FLUX.1's width)"},
				&cli.DurationFlag{Name: "min-time", Value: time.Second, Usage: "least time spent on each GEMM measurement"},
			},
			Action: benchCPUAction,
		}},
	})
}

// benchShape is one GEMM shape of the benchmark: C [M, N] = A [M, K]·B [K, N].
type benchShape struct {
	Name     string  `json:"name"` // "MxNxK"
	M        int     `json:"m"`
	N        int     `json:"n"`
	K        int     `json:"k"`
	Ours     float64 `json:"gflops"`
	Gonum    float64 `json:"gonum_gflops"`
	OpenBLAS float64 `json:"openblas_gflops,omitempty"`
}

// benchCPU is the `svdq bench cpu --json` object.
type benchCPU struct {
	GOARCH         string             `json:"goarch"`
	CPUs           int                `json:"cpus"`
	Kernel         string             `json:"kernel"` // svd.KernelName()
	GemmGFLOPS     float64            `json:"gemm_gflops"`
	GonumGFLOPS    float64            `json:"gonum_gflops"`
	OpenBLASGFLOPS *float64           `json:"openblas_gflops,omitempty"`
	Shapes         []benchShape       `json:"shapes"`
	RSVDShape      [3]int             `json:"rsvd_shape"` // M, N, rank
	RSVDSeconds    float64            `json:"rsvd_seconds"`
	LayerShape     [2]int             `json:"layer_shape"` // N, K
	LayerSeconds   map[string]float64 `json:"layer_seconds"`
	LayerError     map[string]float64 `json:"layer_rel_error"`
	LayerWork      map[string][2]int  `json:"layer_candidates_iters"`
}

func benchCPUAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("bench cpu: unexpected argument %q", c.Args().First())
	}
	n := c.Int("size")
	if n < 64 || n > 1<<15 {
		return fmt.Errorf("bench cpu: --size %d is not in [64, 32768]", n)
	}
	minTime := c.Duration("min-time")
	out := c.App.Writer
	progress := func(format string, a ...any) {
		if !c.Bool("json") {
			fmt.Fprintf(c.App.ErrWriter, format, a...)
		}
	}
	res := benchCPU{GOARCH: runtime.GOARCH, CPUs: runtime.NumCPU(), Kernel: svd.KernelName(),
		LayerSeconds: map[string]float64{}, LayerError: map[string]float64{}, LayerWork: map[string][2]int{}}
	for _, s := range [][3]int{{n, n, n}, {256 * n / 3072, n, n}, {n, 40, 4 * n}} {
		sh := benchShape{Name: fmt.Sprintf("%dx%dx%d", s[0], s[1], s[2]), M: s[0], N: s[1], K: s[2]}
		progress("gemm %s ...\n", sh.Name)
		sh.Ours = svd.BenchGemm(sh.M, sh.N, sh.K, minTime)
		sh.Gonum = svd.BenchGonumDgemm(sh.M, sh.N, sh.K, minTime)
		if openblas.BuiltIn {
			sh.OpenBLAS = openblas.Bench(sh.M, sh.N, sh.K, minTime)
		}
		res.Shapes = append(res.Shapes, sh)
	}
	res.GemmGFLOPS, res.GonumGFLOPS = res.Shapes[0].Ours, res.Shapes[0].Gonum
	if openblas.BuiltIn {
		v := res.Shapes[0].OpenBLAS
		res.OpenBLASGFLOPS = &v
	}
	res.RSVDShape = [3]int{n, 4 * n, 32}
	progress("randomized SVD %dx%d rank 32 ...\n", n, 4*n)
	res.RSVDSeconds = svd.BenchRandomized(n, 4*n, 32, minTime).Seconds()
	res.LayerShape = [2]int{n, n}
	for _, mode := range []quant.SearchMode{quant.SearchFast, quant.SearchFull} {
		progress("layer %dx%d, %s search ...\n", n, n, mode)
		lb, err := quant.BenchLayer(n, n, mode)
		if err != nil {
			return err
		}
		res.LayerSeconds[mode.String()] = lb.Seconds
		res.LayerError[mode.String()] = lb.RelError
		res.LayerWork[mode.String()] = [2]int{lb.Evaluated, lb.Iters}
	}
	if c.Bool("json") {
		b, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(b))
		return nil
	}
	printBenchCPU(c, &res)
	return nil
}

// printBenchCPU prints the table of `svdq bench cpu`.
func printBenchCPU(c *cli.Context, r *benchCPU) {
	out := c.App.Writer
	fmt.Fprintf(out, "%s, %d CPUs, svd kernel set %s\n\n", r.GOARCH, r.CPUs, r.Kernel)
	ob := "OpenBLAS: build with -tags openblas"
	if r.OpenBLASGFLOPS != nil {
		ob = "OpenBLAS sgemm"
	}
	fmt.Fprintf(out, "GEMM GFLOP/s  %-16s %10s %14s   %s\n", "M×N×K", "svd.Gemm", "gonum float64", ob)
	for _, s := range r.Shapes {
		line := fmt.Sprintf("              %-16s %10.1f %14.1f", s.Name, s.Ours, s.Gonum)
		if r.OpenBLASGFLOPS != nil {
			line += fmt.Sprintf("   %.1f (ours/OpenBLAS %.2f)", s.OpenBLAS, s.Ours/s.OpenBLAS)
		}
		fmt.Fprintln(out, line)
	}
	fmt.Fprintf(out, "\nsvd.Gemm / gonum at %s: %.1f×\n", r.Shapes[0].Name, r.GemmGFLOPS/r.GonumGFLOPS)
	fmt.Fprintf(out, "randomized SVD %d×%d rank %d: %.3f s\n", r.RSVDShape[0], r.RSVDShape[1], r.RSVDShape[2], r.RSVDSeconds)
	for _, m := range []string{"fast", "full"} {
		w := r.LayerWork[m]
		fmt.Fprintf(out, "layer %d×%d, %s search: %.2f s (error %.4f, %d candidates, %d refinement iterations)\n",
			r.LayerShape[0], r.LayerShape[1], m, r.LayerSeconds[m], r.LayerError[m], w[0], w[1])
	}
}

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
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
		Description: "Uploads each W4A4 layer's tensors exactly as stored and runs the CUDA kernels (INT4: the fused\n" +
			"tensor-core kernel; NVFP4: the reference kernel) on the layer's calibration rows. Reports\n" +
			"the max and relative difference against the CPU emulation of the same file (tolerance:\n" +
			"2 ulps of the model dtype, after checking the low-rank sums within their FP32 bound), and the error of\n" +
			"the GPU output against the 16-bit reference layer. Exit status 1 when a layer mismatches,\n" +
			"2 on bad input or when no GPU is found.\n\n" +
			"The emulation reads the same bytes as the GPU, so a corrupted file corrupts both alike:\n" +
			"the check proves that the kernels read the packed layout as the emulation does. --flip\n" +
			"corrupts one byte of the GPU's copy only, to see the check fail.\n\n" +
			"Example: svdq gpu-check --model flux-int4.safetensors --reference flux1-dev.safetensors --calib calib.safetensors",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "model", Required: true, Usage: "quantized `Q.safetensors` (with its svdq metadata)"},
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
			"cuBLAS BF16; TOPS (2·M·N·K) and the ratios. Random data; rank 32.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print one JSON object instead of the table"},
			&cli.IntFlag{Name: "iters", Value: 30, Usage: "timed runs per variant (the median is reported)"},
			&cli.IntFlag{Name: "rank", Value: 32, Usage: "low-rank size (a multiple of 16)"},
			&cli.StringSliceFlag{Name: "shape", Usage: "time only `NxK` (repeatable; multiples of 128)"},
			&cli.IntSliceFlag{Name: "tokens", Usage: "token counts `M` (repeatable; default 256, 1024, 4096)"},
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
	if c.NArg() > 0 {
		return fmt.Errorf("bench-gpu: unexpected argument %q", c.Args().First())
	}
	opt := kernels.BenchOptions{Iters: c.Int("iters"), Rank: c.Int("rank"), Tokens: c.IntSlice("tokens")}
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
		fmt.Fprintf(out, "device: %v\nPTX %s (%s)\n", d, d.PTX.File, d.PTX.NVCC)
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
	rep := benchReport{Device: d.String(), PTX: d.PTX.File, NVCC: d.PTX.NVCC, BF16: note, Results: res,
		Targets: benchTargets(res)}
	if asJSON {
		data, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(data))
		return nil
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

// gpuLayer is one checked layer of gpu-check.
type gpuLayer struct {
	Name       string  `json:"name"`
	Precision  string  `json:"precision"`
	Kernel     string  `json:"kernel"`
	Rows       int     `json:"rows"`
	MaxAbs     float64 `json:"max_abs_diff"`
	RelDiff    float64 `json:"rel_diff"`    // ‖gpu − emulation‖ / ‖emulation‖
	Outside    int     `json:"outside"`     // elements outside the tolerance
	LowRankOff int     `json:"lowrank_off"` // down-projection sums outside their FP32 bound
	Elements   int     `json:"elements"`    // elements compared
	RefError   float64 `json:"ref_rel_err"` // ‖gpu − reference‖ / ‖reference‖ (bias left out of both)
	OK         bool    `json:"ok"`
}

type gpuCheckReport struct {
	Device string     `json:"device"`
	PTX    string     `json:"ptx"`
	Layers []gpuLayer `json:"layers"`
	Passed bool       `json:"passed"`
}

func gpuCheckAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("gpu-check: unexpected argument %q", c.Args().First())
	}
	var re *regexp.Regexp
	if s := c.String("layers"); s != "" {
		var err error
		if re, err = regexp.Compile(s); err != nil {
			return fmt.Errorf("--layers %q: %v", s, err)
		}
	}
	if c.Int("rows") < 1 {
		return fmt.Errorf("--rows %d must be ≥ 1", c.Int("rows"))
	}
	job, err := openGPUCheck(c.String("model"), c.String("reference"), c.String("calib"), re)
	if err != nil {
		return err
	}
	if job.flip, err = parseFlip(c.String("flip"), job); err != nil {
		job.close()
		return err
	}
	defer job.close()
	d, err := kernels.Open(c.Int("gpu"))
	if err != nil {
		return err
	}
	defer d.Close()
	rep := gpuCheckReport{Device: d.String(), PTX: d.PTX.File, Passed: true}
	asJSON, out := c.Bool("json"), c.App.Writer
	if !asJSON {
		fmt.Fprintf(out, "device: %v\nPTX %s (%s)\n", d, d.PTX.File, d.PTX.NVCC)
	}
	b := newBar(out, int64(len(job.layers)), "gpu-check", false)
	for i := range job.layers {
		row, err := job.run(d, &job.layers[i], c.Int("rows"))
		if err != nil {
			b.finish()
			return err
		}
		rep.Layers = append(rep.Layers, row)
		rep.Passed = rep.Passed && row.OK
		line := ""
		if !asJSON {
			line = formatGPULayer(row, i+1, len(job.layers), job.width)
		}
		b.println(line, 1)
	}
	b.finish()
	if asJSON {
		data, err := json.Marshal(rep)
		if err != nil {
			return err
		}
		fmt.Fprintln(out, string(data))
	} else {
		printGPUSummary(out, &rep)
	}
	if !rep.Passed {
		return failed(nil)
	}
	return nil
}

func formatGPULayer(r gpuLayer, i, n, width int) string {
	verdict := "ok"
	if !r.OK {
		verdict = "MISMATCH"
	}
	lr := ""
	if r.LowRankOff > 0 {
		lr = fmt.Sprintf(", %d low-rank sums off", r.LowRankOff)
	}
	return fmt.Sprintf("[%*d/%d] %-*s  %-5s %-9s  %4d rows  max|Δ| %-9.3g rel %-9.3g %d/%d outside%s  vs 16-bit %.4f  %s",
		len(fmt.Sprint(n)), i, n, width, r.Name, r.Precision, r.Kernel, r.Rows, r.MaxAbs, r.RelDiff, r.Outside,
		r.Elements, lr, r.RefError, verdict)
}

func printGPUSummary(w io.Writer, rep *gpuCheckReport) {
	bad, worst, worstName, sumRef := 0, 0.0, "", 0.0
	for _, l := range rep.Layers {
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
	fmt.Fprintf(w, "%s: %d layers, %d mismatched; largest GPU/emulation rel diff %.3g (%s); mean error vs 16-bit %.4f\n",
		verdict, len(rep.Layers), bad, worst, worstName, mean)
}

// gpuCheck holds the open files of a gpu-check run.
type gpuCheck struct {
	model, reference, calibPath string
	q, ref                      safetensors.Reader
	cf                          *calib.File
	layers                      []nunchaku.LayerMeta
	calibRefs                   map[string]model.CalibRef
	width                       int
	flip                        *flip
}

// flip is a fault injected into the GPU's copy of one tensor.
type flip struct {
	layer, suffix string
	byte          int // -1: the middle
}

// parseFlip reads --flip LAYER.TENSOR[:BYTE]; the layer must be checked.
func parseFlip(s string, j *gpuCheck) (*flip, error) {
	if s == "" {
		return nil, nil
	}
	f := &flip{byte: -1}
	name, off, hasOff := strings.Cut(s, ":")
	if hasOff {
		if _, err := fmt.Sscanf(off, "%d", &f.byte); err != nil || f.byte < 0 {
			return nil, fmt.Errorf("--flip %q: byte offset %q is not a non-negative integer", s, off)
		}
	}
	i := strings.LastIndex(name, ".")
	if i < 0 {
		return nil, fmt.Errorf("--flip %q: want LAYER.TENSOR, e.g. transformer_blocks.0.qkv_proj.qweight", s)
	}
	f.layer, f.suffix = name[:i], name[i+1:]
	for _, lm := range j.layers {
		if lm.Name == f.layer {
			if _, ok := j.q.Info(name); !ok {
				return nil, fmt.Errorf("--flip %q: %s has no tensor %s", s, j.model, name)
			}
			return f, nil
		}
	}
	return nil, fmt.Errorf("--flip %q: layer %s is not among the layers checked", s, f.layer)
}

// apply returns get with the fault applied to the GPU's copy.
func (f *flip) apply(get kernels.Getter, layer string) (kernels.Getter, error) {
	if f == nil || layer != f.layer {
		return get, nil
	}
	dt, sh, data, ok := get(f.suffix)
	if !ok {
		return nil, fmt.Errorf("--flip: layer %s has no tensor %s", layer, f.suffix)
	}
	at := f.byte
	if at < 0 {
		at = len(data) / 2
	}
	if at >= len(data) {
		return nil, fmt.Errorf("--flip: %s.%s has %d bytes, no byte %d", layer, f.suffix, len(data), at)
	}
	bad := append([]byte(nil), data...)
	bad[at] ^= 0xFF
	return func(suffix string) (string, []int64, []byte, bool) {
		if suffix == f.suffix {
			return dt, sh, bad, true
		}
		return get(suffix)
	}, nil
}

// openGPUCheck opens the three files and lists the W4A4 layers to check.
// The quantized file must carry the svdq and svdq_calib metadata that
// svdq quantize writes.
func openGPUCheck(modelPath, refPath, calibPath string, re *regexp.Regexp) (*gpuCheck, error) {
	j := &gpuCheck{model: modelPath, reference: refPath, calibPath: calibPath}
	var err error
	if j.q, err = safetensors.OpenCheckpoint(modelPath); err != nil {
		return nil, err
	}
	fail := func(err error) (*gpuCheck, error) { j.close(); return nil, err }
	md := j.q.Metadata()
	s, ok := md[nunchaku.MetaSVDQ]
	if !ok {
		return fail(fmt.Errorf("%s: no %q metadata (gpu-check needs the layer records svdq quantize writes)", modelPath, nunchaku.MetaSVDQ))
	}
	meta, err := nunchaku.ParseMeta(s)
	if err != nil {
		return fail(fmt.Errorf("%s: %v", modelPath, err))
	}
	cs, ok := md[model.MetaCalib]
	if !ok {
		return fail(fmt.Errorf("%s: no %q metadata naming each layer's calibration rows", modelPath, model.MetaCalib))
	}
	if err := json.Unmarshal([]byte(cs), &j.calibRefs); err != nil {
		return fail(fmt.Errorf("%s: metadata %s: %v", modelPath, model.MetaCalib, err))
	}
	for _, lm := range meta.Layers {
		if lm.Kind == nunchaku.KindW4A4 && (re == nil || re.MatchString(lm.Name)) {
			j.layers = append(j.layers, lm)
			j.width = max(j.width, len(lm.Name))
		}
	}
	if len(j.layers) == 0 {
		return fail(fmt.Errorf("%s: no W4A4 layer matches --layers %v", modelPath, re))
	}
	if j.ref, err = safetensors.OpenCheckpoint(refPath); err != nil {
		return fail(err)
	}
	if j.cf, err = calib.Open(calibPath); err != nil {
		return fail(err)
	}
	return j, nil
}

func (j *gpuCheck) close() {
	for _, c := range []io.Closer{j.q, j.ref} {
		if c != nil {
			c.Close()
		}
	}
	if j.cf != nil {
		j.cf.Close()
	}
}

// getter serves the tensors of one layer of the quantized file; the first
// read error is kept in *errp.
func (j *gpuCheck) getter(layer string) (nunchaku.Getter, *error) {
	var first error
	return func(suffix string) (string, []int64, []byte, bool) {
		info, ok := j.q.Info(layer + "." + suffix)
		if !ok {
			return "", nil, nil, false
		}
		b, err := j.q.Bytes(info.Name)
		if err != nil {
			if first == nil {
				first = err
			}
			return "", nil, nil, false
		}
		return string(info.DType), info.Shape, b, true
	}, &first
}

// run checks one layer: the emulation of the file's layer and the GPU on
// the same rows, then both against the 16-bit reference layer.
func (j *gpuCheck) run(d *kernels.Device, lm *nunchaku.LayerMeta, maxRows int) (gpuLayer, error) {
	row := gpuLayer{Name: lm.Name, Precision: lm.Precision}
	get, errp := j.getter(lm.Name)
	ql, err := nunchaku.UnpackW4A4(get, lm.W4A4Options(j.model))
	if err == nil {
		err = *errp
	}
	if err != nil {
		return row, err
	}
	gpuGet, err := j.flip.apply(kernels.Getter(get), lm.Name)
	if err != nil {
		return row, err
	}
	p, err := kernels.PackedFromTensors(gpuGet, lm.N, lm.K, lm.Shifted)
	if err == nil {
		err = *errp
	}
	if err != nil {
		return row, fmt.Errorf("%s: layer %s: %v", j.model, lm.Name, err)
	}
	x, m, err := j.rows(lm, maxRows)
	if err != nil {
		return row, err
	}
	row.Rows = m
	v := kernels.Fused
	if ql.Precision == quant.NVFP4 {
		v = kernels.Reference
	}
	row.Kernel = v.String()
	gl, err := d.Upload(p)
	if err != nil {
		return row, fmt.Errorf("layer %s: %w", lm.Name, err)
	}
	res, err := gl.Run(x, m, v)
	if ferr := gl.Free(); err == nil {
		err = ferr
	}
	if err != nil {
		return row, fmt.Errorf("layer %s: %w", lm.Name, err)
	}
	diff := kernels.Verify(ql, x, m, res)
	row.MaxAbs, row.RelDiff, row.Outside, row.Elements, row.OK = diff.MaxAbs, diff.RelFro, diff.Mismatches, diff.N, diff.OK()
	row.LowRankOff = diff.LowRankMismatches
	got := res.Y

	w, bias, err := j.referenceWeight(lm)
	if err != nil {
		return row, err
	}
	yref := make([]float64, m*lm.N)
	quant.RefOutput(yref, x, m, lm.K, w, lm.N, nil)
	for i := 0; i < m; i++ { // compare the products without the shared bias
		for n := 0; n < lm.N; n++ {
			got[i*lm.N+n] -= bias[n]
		}
	}
	row.RefError = quant.RelError(got, yref)
	return row, nil
}

// rows returns up to maxRows calibration rows [m, K] of the layer's input
// (evenly spaced over the file's samples).
func (j *gpuCheck) rows(lm *nunchaku.LayerMeta, maxRows int) ([]float32, int, error) {
	ref, ok := j.calibRefs[lm.Name]
	if !ok {
		return nil, 0, fmt.Errorf("%s: metadata %s has no entry for layer %s", j.model, model.MetaCalib, lm.Name)
	}
	st, err := j.cf.Layer(ref.Key)
	if err != nil {
		return nil, 0, err
	}
	if ref.Cols[0] != 0 || ref.Cols[1] != st.K {
		if ref.Cols[0] < 0 || ref.Cols[1] > st.K || ref.Cols[1]-ref.Cols[0] != lm.K {
			return nil, 0, fmt.Errorf("%s: tensor %q: width %d has no columns %v for layer %s (K=%d)",
				j.calibPath, ref.Key+".input_samples", st.K, ref.Cols, lm.Name, lm.K)
		}
		st = st.Cols(ref.Cols[0], ref.Cols[1])
	}
	if st.K != lm.K || st.S == 0 {
		return nil, 0, fmt.Errorf("%s: %s: %d samples of width %d, layer %s needs width %d",
			j.calibPath, ref.Key, st.S, st.K, lm.Name, lm.K)
	}
	m := min(st.S, maxRows)
	x := make([]float32, m*lm.K)
	for i := 0; i < m; i++ {
		copy(x[i*lm.K:(i+1)*lm.K], st.Row(i*st.S/m))
	}
	return x, m, nil
}

// referenceWeight assembles the layer's 16-bit weight [N, K] and bias [N]
// from the reference checkpoint through the metadata's sources.
func (j *gpuCheck) referenceWeight(lm *nunchaku.LayerMeta) (w, bias []float32, err error) {
	n, k := lm.N, lm.K
	w, bias = make([]float32, n*k), make([]float32, n)
	if len(lm.Sources) == 0 {
		return nil, nil, fmt.Errorf("%s: layer %s has no recorded sources", j.model, lm.Name)
	}
	for _, s := range lm.Sources {
		info, ok := j.ref.Info(s.Tensor)
		if !ok {
			return nil, nil, fmt.Errorf("%s: no tensor %q (source of %s)", j.reference, s.Tensor, lm.Name)
		}
		if len(info.Shape) != 2 {
			return nil, nil, fmt.Errorf("%s: tensor %q: shape %v is not a matrix", j.reference, s.Tensor, info.Shape)
		}
		rows, cols := int(info.Shape[0]), int(info.Shape[1])
		nr := s.SrcRows[1] - s.SrcRows[0]
		if s.SrcRows[0] < 0 || s.SrcRows[1] > rows || s.SrcCols[0] < 0 || s.SrcCols[1] > cols ||
			s.SrcCols[1]-s.SrcCols[0] != k || s.Rows[1]-s.Rows[0] != nr || s.Rows[0] < 0 || s.Rows[1] > n {
			return nil, nil, fmt.Errorf("%s: tensor %q [%d %d]: rows %v cols %v do not fit rows %v of layer %s [%d %d]",
				j.reference, s.Tensor, rows, cols, s.SrcRows, s.SrcCols, s.Rows, lm.Name, n, k)
		}
		raw, err := j.ref.Bytes(s.Tensor)
		if err != nil {
			return nil, nil, err
		}
		size := info.DType.Size()
		for i := 0; i < nr; i++ {
			off := ((s.SrcRows[0]+i)*cols + s.SrcCols[0]) * size
			dst := w[(s.Rows[0]+i)*k : (s.Rows[0]+i+1)*k]
			if err := quant.Decode(dst, string(info.DType), raw[off:off+k*size]); err != nil {
				return nil, nil, fmt.Errorf("%s: tensor %q: %v", j.reference, s.Tensor, err)
			}
		}
		if s.Bias == "" {
			continue
		}
		binfo, ok := j.ref.Info(s.Bias)
		if !ok || binfo.Elems() < int64(s.SrcRows[1]) {
			return nil, nil, fmt.Errorf("%s: bias %q of %s missing or shorter than row %d", j.reference, s.Bias, s.Tensor, s.SrcRows[1])
		}
		braw, err := j.ref.Bytes(s.Bias)
		if err != nil {
			return nil, nil, err
		}
		bsize := binfo.DType.Size()
		if err := quant.Decode(bias[s.Rows[0]:s.Rows[1]], string(binfo.DType),
			braw[s.SrcRows[0]*bsize:s.SrcRows[1]*bsize]); err != nil {
			return nil, nil, fmt.Errorf("%s: bias %q: %v", j.reference, s.Bias, err)
		}
	}
	return w, bias, nil
}

package model

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/kernels"
	"github.com/svdq/svdq/quant"
)

// GPUCheckOptions configure GPUCheck.
type GPUCheckOptions struct {
	Model     string // the quantized checkpoint
	Reference string // the 16-bit checkpoint it was made from
	Calib     string // svdq-calib/1 file
	// Layers, when set, selects the W4A4 layers checked by name.
	Layers *regexp.Regexp
	Rows   int // calibration rows per layer at most (≥ 1)
	GPU    int // GPU ordinal
	// Flip injects a fault: "LAYER.TENSOR[:BYTE]" flips (XOR 0xFF) one byte
	// (default: the middle one) of that tensor in the GPU's copy only, to
	// show that the comparison catches a kernel that misreads it.
	Flip string
	// OnStart, when set, is called once the GPU is open, before the first
	// layer runs.
	OnStart func(GPUCheckStart)
	// OnLayer, when set, is called after each layer, in order.
	OnLayer func(l GPULayer, done, total int)
}

// GPUCheckStart is what GPUCheck tells OnStart.
type GPUCheckStart struct {
	Device string   // kernels.Device.String()
	PTX    string   // embedded PTX file the driver compiled
	NVCC   string   // the nvcc that built it
	Layers []string // the layers to run, in order
}

// GPULayer is one layer of a gpu-check report.
type GPULayer struct {
	Name       string  `json:"name"`
	Precision  string  `json:"precision"`
	Kernel     string  `json:"kernel"`
	Rows       int     `json:"rows"`
	MaxAbs     float64 `json:"max_abs_diff"`
	RelDiff    float64 `json:"rel_diff"`    // ‖gpu − emulation‖ / ‖emulation‖
	Outside    int     `json:"outside"`     // elements outside the tolerance
	LowRankOff int     `json:"lowrank_off"` // down-projection sums outside their FP32 bound
	Exact      int     `json:"exact"`       // outputs equal to the emulation's, bit for bit
	Elements   int     `json:"elements"`    // elements compared
	RefError   float64 `json:"ref_rel_err"` // ‖gpu − reference‖ / ‖reference‖ (bias left out of both)
	// Integrity is the layer's packed bytes against the hash recorded when
	// the file was written: IntegrityOK, IntegrityMismatch or
	// IntegrityAbsent.
	Integrity string `json:"integrity"`
	// OK: the bytes match their record (or none is recorded) and the GPU
	// agrees with the emulation. A layer that was not run is not OK.
	OK bool `json:"ok"`
	// Worst names the element furthest outside the tolerance (mismatched
	// layers only).
	Worst string `json:"worst,omitempty"`
}

// GPUCheckReport is the result of GPUCheck; its JSON form is what `svdq
// gpu-check --json` prints.
type GPUCheckReport struct {
	Device string     `json:"device"` // "" when the GPU was not opened (integrity mismatch)
	PTX    string     `json:"ptx"`
	Layers []GPULayer `json:"layers"`
	Passed bool       `json:"passed"`
	// Mismatches details the layers whose packed bytes differ from their
	// record; when there are any, no layer ran on the GPU.
	Mismatches []LayerIntegrity `json:"-"`
}

// GPUCheck runs every selected W4A4 layer of opt.Model on the GPU from
// the file's packed bytes (kernels: INT4 the fused tensor-core kernel,
// NVFP4 the reference kernel) on up to opt.Rows of its calibration rows,
// and compares the output with the CPU emulation of the same file
// (kernels.Verify: low-rank sums within their FP32 bound, then 2 ulps of
// the model dtype) and with the 16-bit reference layer.
//
// The emulation reads the same bytes as the GPU, so the comparison cannot
// see a corrupted file. Before the GPU is opened, every selected layer's
// bytes are therefore verified against the SHA-256 recorded in the svdq
// metadata: when one differs, GPUCheck returns a failed report listing
// every selected layer's integrity (Mismatches: which differ), and nothing
// runs. Layers and their calibration rows are found as Check finds them.
// Errors (exit status 2 for the CLI): bad input as for Check, a bad Flip,
// no usable GPU (wrapping kernels.ErrNoDriver), a CUDA failure.
func GPUCheck(opt GPUCheckOptions) (*GPUCheckReport, error) {
	if opt.Rows < 1 {
		return nil, fmt.Errorf("--rows %d must be ≥ 1", opt.Rows)
	}
	in, err := openCheckInputs(opt.Model, opt.Reference, opt.Calib, opt.Layers, "W4A4 layer",
		func(lm *nunchaku.LayerMeta) bool { return lm.Kind == nunchaku.KindW4A4 })
	if err != nil {
		return nil, err
	}
	defer in.Close()
	fl, err := parseFlip(opt.Flip, in)
	if err != nil {
		return nil, err
	}
	ints, err := in.verify()
	if err != nil {
		return nil, err
	}
	rep := &GPUCheckReport{Passed: true, Mismatches: Mismatches(ints)}
	if len(rep.Mismatches) > 0 {
		rep.Passed = false
		for i := range in.layers {
			lm := &in.layers[i].meta
			rep.Layers = append(rep.Layers, GPULayer{Name: lm.Name, Precision: lm.Precision, Integrity: ints[i].Status})
		}
		return rep, nil
	}

	d, err := kernels.Open(opt.GPU)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	rep.Device, rep.PTX = d.String(), d.PTX.File
	if opt.OnStart != nil {
		names := make([]string, len(in.layers))
		for i := range in.layers {
			names[i] = in.layers[i].meta.Name
		}
		opt.OnStart(GPUCheckStart{Device: rep.Device, PTX: d.PTX.File, NVCC: d.PTX.NVCC, Layers: names})
	}
	for i := range in.layers {
		row, err := in.gpuLayer(d, i, opt.Rows, fl)
		if err != nil {
			return nil, err
		}
		row.Integrity = ints[i].Status
		rep.Layers = append(rep.Layers, row)
		rep.Passed = rep.Passed && row.OK
		if opt.OnLayer != nil {
			opt.OnLayer(row, i+1, len(in.layers))
		}
	}
	return rep, nil
}

// flip is a fault injected into the GPU's copy of one tensor.
type flip struct {
	layer, suffix string
	byte          int // -1: the middle
}

// parseFlip reads LAYER.TENSOR[:BYTE] ("": no fault); the layer must be
// among those checked and the tensor in the file.
func parseFlip(s string, in *checkInputs) (*flip, error) {
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
	for _, l := range in.layers {
		if l.meta.Name == f.layer {
			if _, ok := in.f.r.Info(name); !ok {
				return nil, fmt.Errorf("--flip %q: %s has no tensor %s", s, in.model, name)
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

// gpuLayer checks layer i: the emulation of the file's layer and the GPU
// on the same rows, then both against the 16-bit reference layer.
func (in *checkInputs) gpuLayer(d *kernels.Device, i, maxRows int, fl *flip) (GPULayer, error) {
	lm := &in.layers[i].meta
	row := GPULayer{Name: lm.Name, Precision: lm.Precision}
	cl, err := in.packedLayer(i, maxRows, fl)
	if err != nil {
		return row, err
	}
	ql, p, x, m := cl.ql, cl.p, cl.x, cl.m
	row.Rows = m
	v := kernels.Fused
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
	row.Exact = diff.Exact
	if diff.Mismatches > 0 && diff.Worst >= 0 {
		row.Worst = fmt.Sprintf("row %d column %d: GPU %.7g, emulation %.7g", diff.Worst/lm.N, diff.Worst%lm.N, diff.WorstGot, diff.WorstWant)
	}
	got := res.Y

	w, bias, _, err := in.referenceWeight(lm)
	if err != nil {
		return row, err
	}
	yref := make([]float64, m*lm.N)
	quant.RefOutput(yref, x, m, lm.K, w, lm.N, nil)
	subtractBias(got, bias, m) // compare the products without the shared bias
	row.RefError = quant.RelError(got, yref)
	return row, nil
}

package model

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/kernels"
	"github.com/svdq/svdq/quant"
)

// The cross-check against nunchaku's own kernels (scripts/nunchaku-crosscheck):
// CrossCheckExport writes each INT4 W4A4 layer's stored tensors and its
// calibration rows for scripts/nunchaku-crosscheck/crosscheck.cu, which runs
// nunchaku's kernels on them; CrossCheckCompare reads nunchaku's outputs back
// and holds the emulation (quant.Layer) against them bit for bit.

// CrossCheckOptions selects the file, its reference and calibration (as for
// Check), the layers, the rows per layer and the work directory.
type CrossCheckOptions struct {
	Model, Reference, Calib string
	Layers                  *regexp.Regexp
	Rows                    int
	Dir                     string
}

// crossInputs opens the inputs with the layers the cross-check runs: INT4
// W4A4 (nunchaku's NVFP4 kernels need sm_120).
func crossInputs(opt CrossCheckOptions) (*checkInputs, error) {
	if opt.Rows < 1 {
		return nil, fmt.Errorf("--rows %d must be ≥ 1", opt.Rows)
	}
	return openCheckInputs(opt.Model, opt.Reference, opt.Calib, opt.Layers, "INT4 W4A4 layer",
		func(lm *nunchaku.LayerMeta) bool {
			return lm.Kind == nunchaku.KindW4A4 && lm.Precision == quant.INT4.String()
		})
}

// packedRows is one layer's emulation, stored tensors and calibration rows.
type packedRows struct {
	name string
	ql   *quant.Layer
	p    *kernels.Packed
	x    []float32 // [m, K]
	m    int
}

// packedLayer reads layer i as gpu-check and the cross-check run it: the
// emulation of the stored bytes, the stored bytes for the GPU (with fl's
// fault injected, nil: none) and at most rows calibration rows.
func (in *checkInputs) packedLayer(i, rows int, fl *flip) (*packedRows, error) {
	lm := &in.layers[i].meta
	get, errp := in.f.getter(lm.Name)
	ql, err := nunchaku.UnpackW4A4(get, lm.W4A4Options(in.model))
	if err == nil {
		err = *errp
	}
	if err != nil {
		return nil, err
	}
	gpuGet, err := fl.apply(kernels.Getter(get), lm.Name)
	if err != nil {
		return nil, err
	}
	p, err := kernels.PackedFromTensors(gpuGet, lm.N, lm.K, lm.Shifted)
	if err == nil {
		err = *errp
	}
	if err != nil {
		return nil, fmt.Errorf("%s: layer %s: %v", in.model, lm.Name, err)
	}
	cal, err := loadCalib(in.cf, in.refs[i])
	if err != nil {
		return nil, err
	}
	x, m := sampleRows(cal, lm.K, rows)
	if m == 0 {
		return nil, fmt.Errorf("%s: %s: no samples for layer %s", in.calib, in.refs[i].Key, lm.Name)
	}
	return &packedRows{name: lm.Name, ql: ql, p: p, x: x, m: m}, nil
}

// crossLayer is packedLayer for the cross-check, which needs a low-rank
// branch (nunchaku's launcher runs the up projection only with one).
func (in *checkInputs) crossLayer(i, rows int) (*packedRows, error) {
	l, err := in.packedLayer(i, rows, nil)
	if err == nil && l.p.R == 0 {
		err = fmt.Errorf("%s: layer %s has no low-rank branch, which nunchaku's launcher requires here", in.model, l.name)
	}
	return l, err
}

// CrossCheckExport writes DIR/layers.txt and DIR/IDX/*.bin for crosscheck.cu
// and returns the number of layers.
func CrossCheckExport(opt CrossCheckOptions) (int, error) {
	in, err := crossInputs(opt)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	if err := os.MkdirAll(opt.Dir, 0o755); err != nil {
		return 0, err
	}
	var list strings.Builder
	for i := range in.layers {
		l, err := in.crossLayer(i, opt.Rows)
		if err != nil {
			return 0, err
		}
		p := l.p
		d := filepath.Join(opt.Dir, strconv.Itoa(i))
		if err := os.MkdirAll(d, 0o755); err != nil {
			return 0, err
		}
		kp, np := p.KPad(), p.NPad()
		xp := make([]float32, l.m*kp) // the rows zero-padded to KPad
		for r := 0; r < l.m; r++ {
			copy(xp[r*kp:], l.x[r*p.K:(r+1)*p.K])
		}
		x := p.DType.Encode(xp)
		bias := p.Bias
		if bias == nil {
			bias = make([]byte, 2*np)
		}
		for _, f := range []struct {
			name string
			b    []byte
		}{{"x", x}, {"qweight", p.QWeight}, {"wscales", p.WScales}, {"smooth", p.Smooth}, {"down", p.Down}, {"up", p.Up}, {"bias", bias}} {
			if err := os.WriteFile(filepath.Join(d, f.name+".bin"), f.b, 0o644); err != nil {
				return 0, err
			}
		}
		bf, uns := 0, 0
		if p.DType == quant.BF16 {
			bf = 1
		}
		if p.Unsigned {
			uns = 1
		}
		fmt.Fprintf(&list, "%d %s %d %d %d %d %d %d\n", i, l.name, bf, uns, l.m, np, kp, p.R)
	}
	return len(in.layers), os.WriteFile(filepath.Join(opt.Dir, "layers.txt"), []byte(list.String()), 0o644)
}

// ULPHistogram counts outputs by their distance in units in the last place
// of the 16-bit type: 0, 1, 2, 3–4, 5–8, more than 8 (NaN or Inf against a
// number included there).
type ULPHistogram [6]int

// ULPBuckets names the buckets of ULPHistogram.
var ULPBuckets = [6]string{"0", "1", "2", "3-4", "5-8", ">8"}

// add counts the pair and returns its distance.
func (h *ULPHistogram) add(dt quant.Float16, a, b float32) int {
	d := ulpDistance(dt, a, b)
	switch {
	case d == 0:
		h[0]++
	case d == 1:
		h[1]++
	case d == 2:
		h[2]++
	case d <= 4:
		h[3]++
	case d <= 8:
		h[4]++
	default:
		h[5]++
	}
	return d
}

// Differ is the number of outputs at a nonzero distance.
func (h ULPHistogram) Differ() int { return h[1] + h[2] + h[3] + h[4] + h[5] }

func (h *ULPHistogram) merge(o ULPHistogram) {
	for i := range h {
		h[i] += o[i]
	}
}

// ulpDistance is the number of 16-bit values between a and b (both values
// of dt); +0 and -0 are one value; NaN is infinitely far from a number.
func ulpDistance(dt quant.Float16, a, b float32) int {
	if a == b || a != a && b != b {
		return 0
	}
	if a != a || b != b {
		return math.MaxInt
	}
	ord := func(v float32) int {
		u := int(dt.Bits(v))
		if u&0x8000 != 0 {
			return -(u & 0x7fff)
		}
		return u
	}
	d := ord(a) - ord(b)
	return max(d, -d)
}

// CrossLayer is one layer's comparison with nunchaku's kernels.
type CrossLayer struct {
	Name     string `json:"name"`
	Rows     int    `json:"rows"`
	Unsigned bool   `json:"unsigned"`
	// Given: the emulation fed nunchaku's own low-rank down-projection sums
	// (quant.Layer.ForwardLoRA) against nunchaku's outputs: must be all 0.
	Given ULPHistogram `json:"given_sums"`
	// Own: the emulation with its own sums (quant.Layer.Forward).
	Own ULPHistogram `json:"own_sums"`
	// SumsDiffer counts down-projection sums (float32) that differ from
	// nunchaku's; Sums16Differ those that differ after the rounding to 16
	// bits that the up projection applies; OwnRowsUnexplained the rows
	// where Own differs although every sum of the row rounds alike.
	Sums, SumsDiffer, Sums16Differ int
	OwnRowsUnexplained             int `json:"own_rows_unexplained"`
}

// CrossCheckReport is the whole comparison.
type CrossCheckReport struct {
	Layers  []CrossLayer `json:"layers"`
	Given   ULPHistogram `json:"given_sums"`
	Own     ULPHistogram `json:"own_sums"`
	Outputs int          `json:"outputs"`
	Passed  bool         `json:"passed"`
}

// CrossCheckCompare reads DIR/IDX/y_nk.bin and lora_nk.bin written by
// crosscheck.cu and compares. Passed: every output equal given nunchaku's
// sums, and every difference with the emulation's own sums explained by a
// sum whose 16-bit rounding differs (nunchaku adds the 128-column block sums
// with atomics, in an order it does not fix).
func CrossCheckCompare(opt CrossCheckOptions, onLayer func(CrossLayer)) (*CrossCheckReport, error) {
	in, err := crossInputs(opt)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	want, err := readCrossList(filepath.Join(opt.Dir, "layers.txt"))
	if err != nil {
		return nil, err
	}
	if len(want) != len(in.layers) {
		return nil, fmt.Errorf("%s lists %d layers, %s has %d to check: export again", opt.Dir, len(want), opt.Model, len(in.layers))
	}
	rep := &CrossCheckReport{Passed: true}
	for i := range in.layers {
		l, err := in.crossLayer(i, opt.Rows)
		if err != nil {
			return nil, err
		}
		if want[i] != l.name {
			return nil, fmt.Errorf("%s: layer %d is %s, the file's is %s: export again", opt.Dir, i, want[i], l.name)
		}
		ql, p, m := l.ql, l.p, l.m
		d := filepath.Join(opt.Dir, strconv.Itoa(i))
		yb, err := readExact(filepath.Join(d, "y_nk.bin"), 2*m*p.NPad())
		if err != nil {
			return nil, err
		}
		lb, err := readExact(filepath.Join(d, "lora_nk.bin"), 4*m*p.R)
		if err != nil {
			return nil, err
		}
		// The emulation's rank is the logical R ≤ the stored (padded) one.
		lora := make([]float32, m*ql.R)
		for r := 0; r < m; r++ {
			for j := 0; j < ql.R; j++ {
				lora[r*ql.R+j] = math.Float32frombits(binary.LittleEndian.Uint32(lb[4*(r*p.R+j):]))
			}
		}
		// own is Forward: the emulation's own down-projection sums, computed once.
		mine := ql.LowRankSums(l.x, m)
		given, own := make([]float32, m*ql.N), make([]float32, m*ql.N)
		ql.ForwardLoRA(given, l.x, m, lora, ql.R)
		ql.ForwardLoRA(own, l.x, m, mine, ql.R)
		got := make([]float32, m*p.NPad())
		if err := quant.Decode(got, p.DType.String(), yb); err != nil {
			return nil, fmt.Errorf("%s: %v", filepath.Join(d, "y_nk.bin"), err)
		}
		row := CrossLayer{Name: l.name, Rows: m, Unsigned: p.Unsigned, Sums: m * ql.R}
		for r := 0; r < m; r++ {
			sums16Same := true
			for j := 0; j < ql.R; j++ {
				a, b := lora[r*ql.R+j], mine[r*ql.R+j]
				if math.Float32bits(a) != math.Float32bits(b) {
					row.SumsDiffer++
				}
				if ql.DType.Round(a) != ql.DType.Round(b) {
					row.Sums16Differ++
					sums16Same = false
				}
			}
			ownDiffers := false
			for n := 0; n < ql.N; n++ {
				g := got[r*p.NPad()+n]
				row.Given.add(p.DType, given[r*ql.N+n], g)
				ownDiffers = row.Own.add(p.DType, own[r*ql.N+n], g) != 0 || ownDiffers
			}
			if ownDiffers && sums16Same {
				row.OwnRowsUnexplained++
			}
		}
		rep.Layers = append(rep.Layers, row)
		rep.Given.merge(row.Given)
		rep.Own.merge(row.Own)
		rep.Outputs += m * ql.N
		rep.Passed = rep.Passed && row.Given.Differ() == 0 && row.OwnRowsUnexplained == 0
		if onLayer != nil {
			onLayer(row)
		}
	}
	return rep, nil
}

func readExact(path string, n int) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%v (did crosscheck.cu run?)", err)
	}
	if len(b) != n {
		return nil, fmt.Errorf("%s: %d bytes, want %d", path, len(b), n)
	}
	return b, nil
}

func readCrossList(path string) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) != 8 || fs[0] != strconv.Itoa(len(names)) {
			return nil, fmt.Errorf("%s: bad line %q", path, s.Text())
		}
		names = append(names, fs[1])
	}
	return names, s.Err()
}

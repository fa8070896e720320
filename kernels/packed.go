package kernels

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// Packed is one W4A4 layer's tensors as a nunchaku checkpoint stores them:
// raw little-endian bytes, never re-derived from the logical layer, so that
// running them on the GPU checks the file itself.
//
// N and K are the logical output and input sizes; the tensors hold the
// padded sizes NPad = roundUp(N, 128), KPad = roundUp(K, 128). R is the
// stored (padded, multiple of 16) rank, 0 for no low-rank branch.
//
//	QWeight  int8 [NPad, KPad/2]
//	WScales  INT4: 16-bit [KPad/64, NPad]; NVFP4: E4M3 [KPad/16, NPad]
//	Bias     16-bit [NPad]        Smooth 16-bit [KPad]
//	Down     16-bit [KPad, R]     Up     16-bit [NPad, R]
//
// 16-bit tensors are in DType. WTScale is NVFP4's per-tensor weight scale
// (1 for INT4). Unsigned marks an INT4 layer whose input is the shifted GELU
// output (quantized unsigned after adding quant.ShiftINT4).
type Packed struct {
	Precision quant.Precision
	DType     quant.Float16
	N, K, R   int
	Unsigned  bool
	QWeight   []byte
	WScales   []byte
	WTScale   float32
	Bias      []byte
	Smooth    []byte
	Down      []byte
	Up        []byte
}

// NPad and KPad are the stored (padded) sizes.
func (p *Packed) NPad() int { return roundUp(p.N, 128) }

// KPad is the stored input size, a multiple of 128.
func (p *Packed) KPad() int { return roundUp(p.K, 128) }

// Validate checks the shape parameters and that every byte slice has the
// length its shape implies; the error names the first tensor that does not.
func (p *Packed) Validate() error {
	if p.Precision != quant.INT4 && p.Precision != quant.NVFP4 {
		return fmt.Errorf("kernels: bad precision %v", p.Precision)
	}
	if p.DType != quant.BF16 && p.DType != quant.F16 {
		return fmt.Errorf("kernels: bad 16-bit dtype %v", p.DType)
	}
	if p.N <= 0 || p.K <= 0 || p.R < 0 || p.R%16 != 0 {
		return fmt.Errorf("kernels: bad layer shape N=%d K=%d R=%d (R must be a multiple of 16)", p.N, p.K, p.R)
	}
	if p.Unsigned && p.Precision != quant.INT4 {
		return fmt.Errorf("kernels: unsigned activations exist only for INT4")
	}
	if w := p.WTScale; w <= 0 || math.IsInf(float64(w), 0) || w != w {
		return fmt.Errorf("kernels: bad wtscale %v", w)
	}
	for _, c := range p.sizes() {
		if c.got != c.want {
			return fmt.Errorf("kernels: %s has %d bytes, want %d (N=%d K=%d R=%d, padded %d×%d, %v)",
				c.name, c.got, c.want, p.N, p.K, p.R, p.NPad(), p.KPad(), p.Precision)
		}
	}
	return nil
}

type sizeCheck struct {
	name      string
	got, want int
}

// sizes lists each tensor's byte length against the one its shape implies.
func (p *Packed) sizes() []sizeCheck {
	n, k, r := p.NPad(), p.KPad(), p.R
	ws := k / 64 * n * 2
	if p.Precision == quant.NVFP4 {
		ws = k / 16 * n
	}
	return []sizeCheck{
		{"qweight", len(p.QWeight), n * k / 2},
		{"wscales", len(p.WScales), ws},
		{"bias", len(p.Bias), n * 2},
		{"smooth", len(p.Smooth), k * 2},
		{"lora_down", len(p.Down), k * r * 2},
		{"lora_up", len(p.Up), n * r * 2},
	}
}

// Getter looks up one tensor of a layer by its suffix ("qweight",
// "wscales", ...) and returns its safetensors dtype name, shape and raw
// bytes; ok is false when the layer has no such tensor. A
// formats/nunchaku.Getter is one.
type Getter func(suffix string) (dtype string, shape []int64, data []byte, ok bool)

// pythonNames are the newer nunchaku Python names accepted for the C++ ones.
var pythonNames = map[string]string{
	"smooth":    "smooth_factor",
	"lora_down": "proj_down",
	"lora_up":   "proj_up",
}

type tensor struct {
	name  string
	dtype string
	shape []int64
	data  []byte
}

// PackedFromTensors assembles a Packed from a layer's stored tensors:
// qweight, wscales, smooth (or smooth_factor) required; bias absent means
// zeros; lora_down / lora_up (proj_down / proj_up) both present or both
// absent (R = 0); NVFP4 wtscale absent means 1; wcscales, if present, must
// be all ones (the kernels have no per-channel scale). n and k are the
// logical sizes (0: the padded sizes stored). The dtypes and shapes are
// checked against the nunchaku layout; errors name the tensor. The returned
// Packed shares the tensors' bytes.
func PackedFromTensors(get Getter, n, k int, unsigned bool) (*Packed, error) {
	find := func(suffix string) (tensor, bool) {
		for _, name := range []string{suffix, pythonNames[suffix]} {
			if name == "" {
				continue
			}
			if dt, sh, data, ok := get(name); ok {
				return tensor{name, dt, sh, data}, true
			}
		}
		return tensor{}, false
	}
	need := func(suffix string) (tensor, error) {
		t, ok := find(suffix)
		if !ok {
			return tensor{}, fmt.Errorf("no %s tensor", suffix)
		}
		return t, nil
	}
	qw, err := need("qweight")
	if err != nil {
		return nil, err
	}
	ws, err := need("wscales")
	if err != nil {
		return nil, err
	}
	if qw.dtype != "I8" && qw.dtype != "U8" || len(qw.shape) != 2 || qw.shape[0] <= 0 || qw.shape[1] <= 0 ||
		qw.shape[0]%128 != 0 || qw.shape[1]%64 != 0 {
		return nil, fmt.Errorf("qweight: dtype %s shape %v, want int8 [N, K/2] with N, K multiples of 128", qw.dtype, qw.shape)
	}
	npad, kpad := int(qw.shape[0]), int(qw.shape[1])*2
	if n == 0 {
		n = npad
	}
	if k == 0 {
		k = kpad
	}
	p := &Packed{N: n, K: k, Unsigned: unsigned, WTScale: 1, QWeight: qw.data, WScales: ws.data}
	if npad != p.NPad() || kpad != p.KPad() {
		return nil, fmt.Errorf("qweight: shape %v does not match logical N=%d K=%d (padded %d, %d)", qw.shape, n, k, p.NPad(), p.KPad())
	}
	switch ws.dtype {
	case "BF16", "F16":
		p.Precision = quant.INT4
		if !shapeIs(ws.shape, kpad/64, npad) {
			return nil, fmt.Errorf("wscales: shape %v, want [%d, %d]", ws.shape, kpad/64, npad)
		}
	case "F8_E4M3":
		p.Precision = quant.NVFP4
		if !shapeIs(ws.shape, kpad/16, npad) {
			return nil, fmt.Errorf("wscales: shape %v, want [%d, %d]", ws.shape, kpad/16, npad)
		}
	default:
		return nil, fmt.Errorf("wscales: dtype %s, want BF16/F16 (INT4) or F8_E4M3 (NVFP4)", ws.dtype)
	}
	sm, err := need("smooth")
	if err != nil {
		return nil, err
	}
	if sm.dtype != "BF16" && sm.dtype != "F16" || !shapeIs(sm.shape, kpad) {
		return nil, fmt.Errorf("%s: dtype %s shape %v, want 16-bit [%d]", sm.name, sm.dtype, sm.shape, kpad)
	}
	dt := sm.dtype
	p.Smooth = sm.data
	p.DType = quant.BF16
	if dt == "F16" {
		p.DType = quant.F16
	}
	if p.Precision == quant.INT4 && ws.dtype != dt {
		return nil, fmt.Errorf("wscales: dtype %s differs from smooth's %s", ws.dtype, dt)
	}
	if b, ok := find("bias"); ok {
		if b.dtype != dt || !shapeIs(b.shape, npad) {
			return nil, fmt.Errorf("bias: dtype %s shape %v, want %s [%d]", b.dtype, b.shape, dt, npad)
		}
		p.Bias = b.data
	} else {
		p.Bias = make([]byte, 2*npad) // zero in both 16-bit types
	}
	down, okd := find("lora_down")
	up, oku := find("lora_up")
	switch {
	case okd != oku:
		return nil, fmt.Errorf("lora_down and lora_up must be both present or both absent")
	case okd:
		if down.dtype != dt || up.dtype != dt || len(down.shape) != 2 || len(up.shape) != 2 ||
			down.shape[0] != int64(kpad) || up.shape[0] != int64(npad) || down.shape[1] != up.shape[1] {
			return nil, fmt.Errorf("%s %s %v / %s %s %v: want %s [%d, R] and [%d, R]",
				down.name, down.dtype, down.shape, up.name, up.dtype, up.shape, dt, kpad, npad)
		}
		p.R, p.Down, p.Up = int(down.shape[1]), down.data, up.data
	}
	if p.Precision == quant.NVFP4 {
		if t, ok := find("wtscale"); ok {
			if p.WTScale, err = scalar(t); err != nil {
				return nil, fmt.Errorf("wtscale: %v", err)
			}
		}
	}
	if t, ok := find("wcscales"); ok {
		if t.dtype != dt || !shapeIs(t.shape, npad) {
			return nil, fmt.Errorf("wcscales: dtype %s shape %v, want %s [%d]", t.dtype, t.shape, dt, npad)
		}
		// One power of two c everywhere (svdq's SDXL NVFP4 files carry
		// their tensor scale so): the kernel's 16-bit output times c equals
		// the accumulator scaled by c·wtscale, so it folds into WTScale.
		for i := 2; i+1 < len(t.data); i += 2 {
			if t.data[i] != t.data[0] || t.data[i+1] != t.data[1] {
				return nil, fmt.Errorf("wcscales: element %d differs from element 0 (per-channel scales are not supported)", vec1dInverse(i/2))
			}
		}
		c := make([]float32, 1)
		if err := quant.Decode(c, dt, t.data[:2]); err != nil {
			return nil, fmt.Errorf("wcscales: %v", err)
		}
		if fr, _ := math.Frexp(float64(c[0])); fr != 0.5 {
			return nil, fmt.Errorf("wcscales: uniform value %g is not a power of two (per-channel scales are not supported)", c[0])
		}
		p.WTScale *= c[0]
	}
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// vec1dInverse maps a position of a packed 1-D vector back to its element.
func vec1dInverse(pos int) int {
	for i := pos &^ 127; i < pos&^127+128; i++ {
		if vec1dPos(i) == pos {
			return i
		}
	}
	return pos
}

func shapeIs(s []int64, dims ...int) bool {
	if len(s) != len(dims) {
		return false
	}
	for i, d := range dims {
		if s[i] != int64(d) {
			return false
		}
	}
	return true
}

// scalar decodes a one-element F32, BF16 or F16 tensor.
func scalar(t tensor) (float32, error) {
	n := int64(1)
	for _, d := range t.shape {
		n *= d
	}
	if n != 1 {
		return 0, fmt.Errorf("shape %v, want one element", t.shape)
	}
	switch {
	case t.dtype == "F32" && len(t.data) == 4:
		return math.Float32frombits(binary.LittleEndian.Uint32(t.data)), nil
	case t.dtype == "BF16" && len(t.data) == 2:
		return quant.BF16ToF32(binary.LittleEndian.Uint16(t.data)), nil
	case t.dtype == "F16" && len(t.data) == 2:
		return quant.F16ToF32(binary.LittleEndian.Uint16(t.data)), nil
	}
	return 0, fmt.Errorf("dtype %s with %d bytes, want one F32, BF16 or F16", t.dtype, len(t.data))
}

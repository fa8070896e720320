package nunchaku

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// e4m3One is 1.0 in FP8 E4M3, the padding of NVFP4 micro-scales.
const e4m3One = 0x38

// PackW4A4 returns the tensors of one SVDQuant W4A4 layer in nunchaku's
// layout, in the order qweight, wscales, [wtscale,] bias, smooth,
// smooth_orig, lora_down, lora_up:
//
//	qweight      I8 [Np, Kp/2]
//	wscales      INT4: model dtype [Kp/64, Np]; NVFP4: F8_E4M3 [Kp/16, Np]
//	wtscale      NVFP4 only: F32 [1] (l.TensorScale, exact; deepcompressor
//	             writes the model dtype, src/Linear.cpp reads F32, BF16 or F16)
//	bias         model dtype [Np] (padding 0)
//	smooth       model dtype [Kp] (padding 1)
//	smooth_orig  same bytes as smooth
//	lora_down    model dtype [Kp, Rp] (l.Down [R, K], packed low-rank)
//	lora_up      model dtype [Np, Rp] (l.Up [N, R], packed low-rank)
//
// with Np, Kp = N, K rounded up to multiples of 128 and Rp = R rounded up to
// a multiple of 16; codes and low-rank padding are zeros, scale padding is 1.
// The public converters disagree on the other paddings: deepcompressor's
// first nunchaku converter pads bias and smooth with 0, its later one (via
// pad_scale) pads both with 1. We pad bias with 0 (padded output rows are
// never read) and smooth with 1 (the kernel divides the input by it, and
// padded input channels are 0, so 1 keeps them finite).
// A rank-0 layer gets lora tensors of shape [Kp, 0] and [Np, 0]. wcscales
// is never written (nunchaku defaults it to ones). The shifted-input flag
// (l.Unsigned) is not stored in the tensors: the engine infers it from the
// layer's position, and the svdq metadata records it.
//
// Pack does no arithmetic: it returns an error, naming the field and index,
// when l is malformed (Validate), a code is out of range (INT4 -8..7, NVFP4
// 0..15), a 16-bit value is not exactly of l.DType, an NVFP4 scale is not an
// E4M3 value, or an INT4 layer has TensorScale ≠ 1.
func PackW4A4(l *quant.Layer) ([]Tensor, error) {
	if err := checkW4A4(l); err != nil {
		return nil, err
	}
	N, K, R := l.N, l.K, l.R
	np, kp, rp := ceilTo(N, tileN), ceilTo(K, tileK), ceilTo(R, rankTile)
	dt := l.DType
	mdt := dt.String()
	G := l.Groups()

	qweight := make([]byte, np*kp/2)
	packNibbles(qweight, l.Codes, N, K, np, kp)
	out := []Tensor{{SuffixQWeight, dtI8, shape64(np, kp/2), qweight}}

	if l.Precision == quant.INT4 {
		gp := kp / 64
		ws := make([]byte, 2*np*gp)
		fill16(ws, 1, dt)
		for n := 0; n < N; n++ {
			for g := 0; g < G; g++ {
				put16(ws[2*scaleIndex(n, g, gp):], l.Scales[n*G+g], dt)
			}
		}
		out = append(out, Tensor{SuffixWScales, mdt, shape64(gp, np), ws})
	} else {
		gp := kp / 16
		ws := make([]byte, np*gp)
		for i := range ws {
			ws[i] = e4m3One
		}
		for n := 0; n < N; n++ {
			for g := 0; g < G; g++ {
				ws[microIndex(n, g, gp)] = quant.F32ToE4M3(l.Scales[n*G+g])
			}
		}
		ts := make([]byte, 4)
		binary.LittleEndian.PutUint32(ts, math.Float32bits(l.TensorScale))
		out = append(out,
			Tensor{SuffixWScales, dtE4M3, shape64(gp, np), ws},
			Tensor{SuffixWTScale, dtF32, shape64(1), ts})
	}

	bias := make([]byte, 2*np) // zero is 0x0000 in both 16-bit types
	for n := 0; n < N; n++ {
		put16(bias[2*scaleIndex(n, 0, 1):], l.Bias[n], dt)
	}
	smooth := make([]byte, 2*kp)
	fill16(smooth, 1, dt)
	for k := 0; k < K; k++ {
		put16(smooth[2*scaleIndex(k, 0, 1):], l.Smooth[k], dt)
	}
	down := make([]byte, 2*kp*rp)
	for r := 0; r < R; r++ {
		for k := 0; k < K; k++ {
			put16(down[2*lowrankIndex(r, k, rp, kp, true):], l.Down[r*K+k], dt)
		}
	}
	up := make([]byte, 2*np*rp)
	for n := 0; n < N; n++ {
		for r := 0; r < R; r++ {
			put16(up[2*lowrankIndex(n, r, np, rp, false):], l.Up[n*R+r], dt)
		}
	}
	out = append(out,
		Tensor{SuffixBias, mdt, shape64(np), bias},
		Tensor{SuffixSmooth, mdt, shape64(kp), smooth},
		Tensor{SuffixSmoothOrig, mdt, shape64(kp), append([]byte(nil), smooth...)},
		Tensor{SuffixLoraDown, mdt, shape64(kp, rp), down},
		Tensor{SuffixLoraUp, mdt, shape64(np, rp), up})
	return out, nil
}

// checkW4A4 validates a layer for packing (see PackW4A4).
func checkW4A4(l *quant.Layer) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("nunchaku: %w", err)
	}
	if l.DType != quant.BF16 && l.DType != quant.F16 {
		return fmt.Errorf("nunchaku: bad model dtype %d", l.DType)
	}
	lo, hi := int8(-8), int8(7)
	if l.Precision == quant.NVFP4 {
		lo, hi = 0, 15
	}
	for i, c := range l.Codes {
		if c < lo || c > hi {
			return fmt.Errorf("nunchaku: codes[%d] (row %d, col %d) = %d outside %d..%d for %v", i, i/l.K, i%l.K, c, lo, hi, l.Precision)
		}
	}
	if l.Unsigned && l.Precision != quant.INT4 {
		return fmt.Errorf("nunchaku: the shifted unsigned input is INT4 only, layer is %v", l.Precision)
	}
	if l.Precision == quant.INT4 {
		if l.TensorScale != 1 {
			return fmt.Errorf("nunchaku: INT4 layer has tensor scale %g, want 1 (no wtscale tensor)", l.TensorScale)
		}
		if err := checkRepresentable(l.Scales, l.DType, "scales"); err != nil {
			return err
		}
	} else {
		for i, s := range l.Scales {
			if math.Float32bits(quant.E4M3ToF32(quant.F32ToE4M3(s))) != math.Float32bits(s) {
				return fmt.Errorf("nunchaku: scales[%d] = %g is not an E4M3 value", i, s)
			}
		}
		if t := l.TensorScale; t != t || math.IsInf(float64(t), 0) {
			return fmt.Errorf("nunchaku: tensor scale %g is not finite", t)
		}
	}
	for _, f := range []struct {
		v    []float32
		name string
	}{{l.Bias, "bias"}, {l.Smooth, "smooth"}, {l.Down, "down"}, {l.Up, "up"}} {
		if err := checkRepresentable(f.v, l.DType, f.name); err != nil {
			return err
		}
	}
	return nil
}

// W4A4Options tells UnpackW4A4 what the tensors alone do not: the logical
// (unpadded) sizes and the shifted-input flag, normally from the layer's
// svdq metadata entry (LayerMeta.W4A4Options).
type W4A4Options struct {
	// Name prefixes error messages; give the file and the layer, e.g.
	// "flux-int4.safetensors: transformer_blocks.0.qkv_proj".
	Name string
	// N, K, R are the logical sizes; 0 takes the padded size stored in the
	// file. A nonzero size must round up to the stored padded size.
	N, K, R int
	// Precision, when nonzero, must match the one the wscales dtype implies.
	Precision quant.Precision
	// Unsigned is copied to Layer.Unsigned (shifted GELU input, INT4 only).
	Unsigned bool
}

// UnpackW4A4 reads one W4A4 layer through get and returns it in logical form,
// the exact inverse of PackW4A4: for any layer l that PackW4A4 accepts,
// UnpackW4A4(MapGetter(PackW4A4(l)), {N: l.N, K: l.K, R: l.R, Unsigned:
// l.Unsigned}) equals l value for value (bit for bit), and packing the result
// again reproduces the same bytes.
//
// Required: qweight, wscales, smooth; bias absent means zeros; lora_down and
// lora_up must both be present or both absent (R = 0); wtscale absent means
// 1 (NVFP4); wcscales, if present, must be all ones (a per-channel scale has
// no place in quant.Layer). The precision follows the wscales dtype
// (F8_E4M3: NVFP4, BF16/F16: INT4), the model dtype the smooth dtype; the
// Python names smooth_factor, smooth_factor_orig, proj_down, proj_up are
// accepted for the C++ ones. Padding values are not checked. Errors name
// opts.Name, the tensor and the mismatch.
func UnpackW4A4(get Getter, opts W4A4Options) (*quant.Layer, error) {
	name := opts.Name
	qn, qdt, qsh, qd, ok := lookup(get, SuffixQWeight)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixQWeight)
	}
	if len(qsh) != 2 || qsh[0] <= 0 || qsh[1] <= 0 || qsh[0]%tileN != 0 || (2*qsh[1])%tileK != 0 {
		return nil, fmt.Errorf("nunchaku: %s.%s: shape %v, want [N, K/2] with N, K multiples of 128", name, qn, qsh)
	}
	np, kp := int(qsh[0]), int(2*qsh[1])
	if err := checkTensor(name, qn, qdt, qsh, qd, dtI8, np, kp/2); err != nil {
		return nil, err
	}
	N, err := logical(name, "N", opts.N, np, tileN)
	if err != nil {
		return nil, err
	}
	K, err := logical(name, "K", opts.K, kp, tileK)
	if err != nil {
		return nil, err
	}

	sn, sdt, ssh, sd, ok := lookup(get, SuffixSmooth)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixSmooth)
	}
	dt, ok := float16Of(sdt)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s.%s: dtype %s, want BF16 or F16", name, sn, sdt)
	}
	mdt := dt.String()
	if err := checkTensor(name, sn, sdt, ssh, sd, mdt, kp); err != nil {
		return nil, err
	}

	wn, wdt, wsh, wd, ok := lookup(get, SuffixWScales)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixWScales)
	}
	prec := quant.INT4
	if wdt == dtE4M3 {
		prec = quant.NVFP4
	}
	if opts.Precision != 0 && opts.Precision != prec {
		return nil, fmt.Errorf("nunchaku: %s.%s: dtype %s means %v, but the layer is %v", name, wn, wdt, prec, opts.Precision)
	}
	if opts.Unsigned && prec != quant.INT4 {
		return nil, fmt.Errorf("nunchaku: %s: shifted unsigned input requested for an %v layer (INT4 only)", name, prec)
	}
	l := &quant.Layer{Precision: prec, N: N, K: K, DType: dt, TensorScale: 1, Unsigned: opts.Unsigned}
	G := l.Groups()
	l.Scales = make([]float32, N*G)
	if prec == quant.INT4 {
		gp := kp / 64
		if err := checkTensor(name, wn, wdt, wsh, wd, mdt, gp, np); err != nil {
			return nil, err
		}
		for n := 0; n < N; n++ {
			for g := 0; g < G; g++ {
				l.Scales[n*G+g] = get16(wd[2*scaleIndex(n, g, gp):], dt)
			}
		}
	} else {
		gp := kp / 16
		if err := checkTensor(name, wn, wdt, wsh, wd, dtE4M3, gp, np); err != nil {
			return nil, err
		}
		for n := 0; n < N; n++ {
			for g := 0; g < G; g++ {
				l.Scales[n*G+g] = quant.E4M3ToF32(wd[microIndex(n, g, gp)])
			}
		}
		if tn, tdt, tsh, td, ok := lookup(get, SuffixWTScale); ok {
			if l.TensorScale, err = readScalar(name, tn, tdt, tsh, td); err != nil {
				return nil, err
			}
		}
		if cn, cdt, csh, cd, ok := lookup(get, SuffixWCScales); ok {
			c, err := uniformScale(name, cn, cdt, csh, cd, np)
			if err != nil {
				return nil, err
			}
			l.TensorScale *= c // a power of two: exact
		}
	}

	l.Codes = make([]int8, N*K)
	unpackNibbles(l.Codes, qd, N, K, np, kp, prec == quant.INT4)

	l.Smooth = make([]float32, K)
	for k := 0; k < K; k++ {
		l.Smooth[k] = get16(sd[2*scaleIndex(k, 0, 1):], dt)
	}
	l.Bias = make([]float32, N)
	if bn, bdt, bsh, bd, ok := lookup(get, SuffixBias); ok {
		if err := checkTensor(name, bn, bdt, bsh, bd, mdt, np); err != nil {
			return nil, err
		}
		for n := 0; n < N; n++ {
			l.Bias[n] = get16(bd[2*scaleIndex(n, 0, 1):], dt)
		}
	}

	dn, ddt, dsh, dd, dok := lookup(get, SuffixLoraDown)
	un, udt, ush, ud, uok := lookup(get, SuffixLoraUp)
	if dok != uok {
		return nil, fmt.Errorf("nunchaku: %s: %s present = %v but %s present = %v", name, dn, dok, un, uok)
	}
	rp := 0
	if dok {
		if len(dsh) != 2 || dsh[1] < 0 || dsh[1]%rankTile != 0 {
			return nil, fmt.Errorf("nunchaku: %s.%s: shape %v, want [K, R] with R a multiple of 16", name, dn, dsh)
		}
		rp = int(dsh[1])
		if err := checkTensor(name, dn, ddt, dsh, dd, mdt, kp, rp); err != nil {
			return nil, err
		}
		if err := checkTensor(name, un, udt, ush, ud, mdt, np, rp); err != nil {
			return nil, err
		}
	}
	R := rp
	if opts.R != 0 {
		if opts.R < 0 || ceilTo(opts.R, rankTile) != rp {
			return nil, fmt.Errorf("nunchaku: %s: logical R = %d pads to %d, but %s stores rank %d", name, opts.R, ceilTo(opts.R, rankTile), dn, rp)
		}
		R = opts.R
	}
	l.R = R
	l.Down = make([]float32, R*K)
	for r := 0; r < R; r++ {
		for k := 0; k < K; k++ {
			l.Down[r*K+k] = get16(dd[2*lowrankIndex(r, k, rp, kp, true):], dt)
		}
	}
	l.Up = make([]float32, N*R)
	for n := 0; n < N; n++ {
		for r := 0; r < R; r++ {
			l.Up[n*R+r] = get16(ud[2*lowrankIndex(n, r, np, rp, false):], dt)
		}
	}
	return l, nil
}

// logical resolves a logical size against the stored padded one.
func logical(name, what string, want, padded, tile int) (int, error) {
	if want == 0 {
		return padded, nil
	}
	if want < 0 || ceilTo(want, tile) != padded {
		return 0, fmt.Errorf("nunchaku: %s: logical %s = %d does not pad to the stored %d (multiple of %d)", name, what, want, padded, tile)
	}
	return want, nil
}

// readScalar reads a one-element F32, BF16 or F16 tensor of shape [] or [1]
// (the dtypes src/Linear.cpp accepts for wtscale).
func readScalar(layer, name, dtype string, shape []int64, data []byte) (float32, error) {
	if len(shape) > 1 || (len(shape) == 1 && shape[0] != 1) {
		return 0, fmt.Errorf("nunchaku: %s.%s: shape %v, want [] or [1]", layer, name, shape)
	}
	switch dtype {
	case dtF32:
		if len(data) == 4 {
			return math.Float32frombits(binary.LittleEndian.Uint32(data)), nil
		}
	case dtBF16, dtF16:
		if len(data) == 2 {
			t, _ := float16Of(dtype)
			return get16(data, t), nil
		}
	default:
		return 0, fmt.Errorf("nunchaku: %s.%s: dtype %s, want F32, BF16 or F16", layer, name, dtype)
	}
	return 0, fmt.Errorf("nunchaku: %s.%s: %d bytes for one %s", layer, name, len(data), dtype)
}

// uniformScale reads NVFP4 per-channel scales (wcscales) that are all one
// power of two c — what svdq writes for loaders without wtscale (nunchaku's
// SDXL), the tensor scale moved there — and returns c. The kernel
// multiplies its 16-bit output by wcscales[n]; by a power of two that is
// the same as scaling the FP32 accumulator first, so the layer's tensor
// scale is c times wtscale. Other values are refused.
func uniformScale(layer, name, dtype string, shape []int64, data []byte, np int) (float32, error) {
	var v []float32
	switch dtype {
	case dtBF16, dtF16, dtE4M3, dtF32:
		if err := checkTensor(layer, name, dtype, shape, data, dtype, np); err != nil {
			return 0, err
		}
		v = make([]float32, np)
		if err := quant.Decode(v, dtype, data); err != nil {
			return 0, fmt.Errorf("nunchaku: %s.%s: %v", layer, name, err)
		}
	default:
		return 0, fmt.Errorf("nunchaku: %s.%s: dtype %s, want a float type", layer, name, dtype)
	}
	for i, f := range v {
		if f != v[0] {
			return 0, fmt.Errorf("nunchaku: %s.%s[%d] = %g, [0] = %g: per-channel weight scales that differ are not supported", layer, name, i, f, v[0])
		}
	}
	if fr, _ := math.Frexp(float64(v[0])); fr != 0.5 {
		return 0, fmt.Errorf("nunchaku: %s.%s = %g: a uniform per-channel scale must be a power of two", layer, name, v[0])
	}
	return v[0], nil
}

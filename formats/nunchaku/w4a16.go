package nunchaku

import (
	"fmt"
	"math"

	"github.com/svdq/svdq/quant"
)

// W4A16 (AWQ-style weight-only) layers: nunchaku runs the adaLN modulation
// linears (FLUX norm1.linear, norm1_context.linear, single norm.linear) with
// its GEMV_AWQ kernel. The layout is deepcompressor's
// convert_to_nunchaku_w4x16_linear_weight and tinychat pack_w4.

// interleaveSrc returns the checkpoint row stored at packed row r of an
// n-row layer with c chunks of m = n/c rows: new row j·c + s holds old row
// s·m + j.
func interleaveSrc(r, n, c int) int { return (r%c)*(n/c) + r/c }

// chunkDelta is what the packer adds to the bias of packed row r: 1 for the
// rows of chunk 1 and chunk c−2 (chunk = r mod c), else 0; nothing when
// c < 2. The engine applies x·scale where diffusers applies x·(1 + scale).
func chunkDelta(r, c int) float32 {
	if c < 2 {
		return 0
	}
	if s := r % c; s == 1 || s == c-2 {
		return 1
	}
	return 0
}

// PackW4A16 returns the tensors qweight, wscales, wzeros, bias of a W4A16
// layer whose N output rows split into `chunks` equal chunks (6 for FLUX
// double-block norm1.linear / norm1_context.linear, 3 for single-block
// norm.linear; 1 for a plain layer: no interleave, no bias change; with 2
// both chunks get the +1, as deepcompressor's delta[1] = delta[-2] = 1 does):
//
//	qweight  I32 [N/4, K/2]  (16-bit words, see the package doc)
//	wscales  model dtype [K/64, N] (the loaders' shape; deepcompressor pads
//	         the rows to a multiple of 16, which Unpack accepts)
//	wzeros   model dtype [K/64, N]
//	bias     model dtype [N]
//
// all in interleaved row order, with 1 added to the bias of chunks 1 and
// chunks−2 (rounded to the model dtype, as deepcompressor's in-place add
// does). w.Codes, w.Scales, w.Zeros, w.Bias are in the checkpoint's order.
// It returns an error when the shapes do not fit the kernel (K a multiple
// of 64, N of 4 and of chunks), a code exceeds 15, or a value is not exactly
// of w.DType.
func PackW4A16(w *quant.WeightOnly, chunks int) ([]Tensor, error) {
	if err := checkW4A16(w, chunks); err != nil {
		return nil, err
	}
	N, K, dt := w.N, w.K, w.DType
	G, gp := K/64, K/64
	mdt := dt.String()

	q := make([]byte, N*K/2)
	ws := make([]byte, 2*gp*N)
	wz := make([]byte, 2*gp*N)
	bias := make([]byte, 2*N)
	for r := 0; r < N; r++ {
		src := interleaveSrc(r, N, chunks)
		row := w.Codes[src*K : (src+1)*K]
		for k, c := range row {
			off, sh := w4a16Offset(r, k, K)
			q[off] |= (c & 0xF) << sh
		}
		for g := 0; g < G; g++ {
			put16(ws[2*(g*N+r):], w.Scales[src*G+g], dt)
			put16(wz[2*(g*N+r):], w.Zeros[src*G+g], dt)
		}
		put16(bias[2*r:], dt.Round(w.Bias[src]+chunkDelta(r, chunks)), dt)
	}
	return []Tensor{
		{SuffixQWeight, dtI32, shape64(N/4, K/2), q},
		{SuffixWScales, mdt, shape64(gp, N), ws},
		{SuffixWZeros, mdt, shape64(gp, N), wz},
		{SuffixBias, mdt, shape64(N), bias},
	}, nil
}

func checkW4A16(w *quant.WeightOnly, chunks int) error {
	N, K := w.N, w.K
	switch {
	case N <= 0 || K <= 0:
		return fmt.Errorf("nunchaku: bad W4A16 shape N=%d K=%d", N, K)
	case K%64 != 0:
		return fmt.Errorf("nunchaku: W4A16 in-features K=%d is not a multiple of 64", K)
	case N%4 != 0:
		return fmt.Errorf("nunchaku: W4A16 out-features N=%d is not a multiple of 4", N)
	case chunks < 1 || N%chunks != 0:
		return fmt.Errorf("nunchaku: W4A16 out-features N=%d do not split into %d chunks", N, chunks)
	case w.DType != quant.BF16 && w.DType != quant.F16:
		return fmt.Errorf("nunchaku: bad model dtype %d", w.DType)
	}
	G := K / 64
	for _, c := range []struct {
		name      string
		got, want int
	}{{"codes", len(w.Codes), N * K}, {"scales", len(w.Scales), N * G}, {"zeros", len(w.Zeros), N * G}, {"bias", len(w.Bias), N}} {
		if c.got != c.want {
			return fmt.Errorf("nunchaku: W4A16 %s has %d values, want %d (N=%d K=%d)", c.name, c.got, c.want, N, K)
		}
	}
	for i, c := range w.Codes {
		if c > 15 {
			return fmt.Errorf("nunchaku: W4A16 codes[%d] (row %d, col %d) = %d > 15", i, i/K, i%K, c)
		}
	}
	for _, f := range []struct {
		v    []float32
		name string
	}{{w.Scales, "scales"}, {w.Zeros, "zeros"}, {w.Bias, "bias"}} {
		if err := checkRepresentable(f.v, w.DType, f.name); err != nil {
			return err
		}
	}
	return nil
}

// W4A16Options tells UnpackW4A16 the chunk count (from the svdq metadata or
// the model preset) and, optionally, the expected sizes.
type W4A16Options struct {
	Name   string // prefixes errors: file and layer
	Chunks int    // ≥ 1, as given to PackW4A16
	N, K   int    // 0: taken from the qweight shape; else must match it
}

// UnpackW4A16 reads a W4A16 layer through get and returns it in checkpoint
// row order, undoing the interleave and the +1 PackW4A16 added. It is the
// exact inverse of PackW4A16 for the codes, scales and zeros; for the bias
// of the shifted chunks the file holds y = round(b+1), which loses the low
// bits of b (the format's loss, not the unpacker's): unpack returns the
// value b' nearest y−1 with round(b'+1) = y — b itself whenever b+1 is
// exact, and always one that packs back to the file's bytes. wscales/wzeros may have K/64 rows (nunchaku's
// loaders) or K/64 rounded up to 16 (deepcompressor, PackW4A16); extra rows
// are ignored. An absent bias reads as stored zeros.
func UnpackW4A16(get Getter, opts W4A16Options) (*quant.WeightOnly, error) {
	name := opts.Name
	qn, qdt, qsh, qd, ok := lookup(get, SuffixQWeight)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixQWeight)
	}
	if len(qsh) != 2 || qsh[0] <= 0 || qsh[1] <= 0 || (2*qsh[1])%64 != 0 {
		return nil, fmt.Errorf("nunchaku: %s.%s: shape %v, want [N/4, K/2] with K a multiple of 64", name, qn, qsh)
	}
	N, K := int(4*qsh[0]), int(2*qsh[1])
	if err := checkTensor(name, qn, qdt, qsh, qd, dtI32, N/4, K/2); err != nil {
		return nil, err
	}
	if (opts.N != 0 && opts.N != N) || (opts.K != 0 && opts.K != K) {
		return nil, fmt.Errorf("nunchaku: %s.%s: shape %v holds N=%d K=%d, want N=%d K=%d", name, qn, qsh, N, K, opts.N, opts.K)
	}
	c := opts.Chunks
	if c < 1 || N%c != 0 {
		return nil, fmt.Errorf("nunchaku: %s: N=%d does not split into %d chunks", name, N, c)
	}
	G := K / 64

	sn, sdt, ssh, sd, ok := lookup(get, SuffixWScales)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixWScales)
	}
	dt, ok := float16Of(sdt)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s.%s: dtype %s, want BF16 or F16", name, sn, sdt)
	}
	mdt := dt.String()
	rows := G
	if len(ssh) == 2 && ssh[0] == int64(w4a16ScaleRows(K)) {
		rows = w4a16ScaleRows(K)
	}
	if err := checkTensor(name, sn, sdt, ssh, sd, mdt, rows, N); err != nil {
		return nil, err
	}
	zn, zdt, zsh, zd, ok := lookup(get, SuffixWZeros)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixWZeros)
	}
	if err := checkTensor(name, zn, zdt, zsh, zd, mdt, rows, N); err != nil {
		return nil, err
	}
	bn, bdt, bsh, bd, hasBias := lookup(get, SuffixBias)
	if hasBias {
		if err := checkTensor(name, bn, bdt, bsh, bd, mdt, N); err != nil {
			return nil, err
		}
	}

	w := &quant.WeightOnly{N: N, K: K, DType: dt,
		Codes:  make([]uint8, N*K),
		Scales: make([]float32, N*G),
		Zeros:  make([]float32, N*G),
		Bias:   make([]float32, N),
	}
	for r := 0; r < N; r++ {
		src := interleaveSrc(r, N, c)
		row := w.Codes[src*K : (src+1)*K]
		for k := range row {
			off, sh := w4a16Offset(r, k, K)
			row[k] = (qd[off] >> sh) & 0xF
		}
		for g := 0; g < G; g++ {
			w.Scales[src*G+g] = get16(sd[2*(g*N+r):], dt)
			w.Zeros[src*G+g] = get16(zd[2*(g*N+r):], dt)
		}
		var b float32
		if hasBias {
			b = get16(bd[2*r:], dt)
		}
		if d := chunkDelta(r, c); d != 0 {
			b = unshift(b, dt)
		}
		w.Bias[src] = b
	}
	return w, nil
}

// unshift returns the 16-bit value b of type dt nearest to y − 1 with
// round(b + 1) = y, the bias PackW4A16 stored as y. Plain round(y − 1) is
// that value except near binade edges: bf16 y = −256 can only come from
// b = −258 (−257 ties to −256), while round(−257) = −256 would repack as
// −255. The search looks a few representable steps either side of
// round(y − 1); a y that no b maps to (not written by PackW4A16) gives
// round(y − 1).
func unshift(y float32, dt quant.Float16) float32 {
	first := dt.Round(y - 1)
	if dt.Round(first+1) == y {
		return first
	}
	target := float64(y) - 1
	lo, hi := first, first
	for step := 0; step < 8; step++ {
		lo, hi = next16(lo, dt, false), next16(hi, dt, true)
		okLo, okHi := dt.Round(lo+1) == y, dt.Round(hi+1) == y
		switch {
		case okLo && okHi:
			if math.Abs(float64(hi)-target) < math.Abs(float64(lo)-target) {
				return hi
			}
			return lo
		case okLo:
			return lo
		case okHi:
			return hi
		}
	}
	return first
}

// next16 returns the neighbour of the dt value f towards +∞ (up) or −∞.
func next16(f float32, dt quant.Float16, up bool) float32 {
	var b [2]byte
	put16(b[:], f, dt)
	h := uint16(b[0]) | uint16(b[1])<<8
	sign, mag := h&0x8000, h&0x7FFF
	switch {
	case mag == 0 && up:
		h = 0x0001
	case mag == 0:
		h = 0x8001
	case (sign != 0) == up:
		h = sign | (mag - 1)
	default:
		h = sign | (mag + 1)
	}
	b[0], b[1] = byte(h), byte(h>>8)
	return get16(b[:], dt)
}

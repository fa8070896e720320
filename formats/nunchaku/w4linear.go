package nunchaku

import (
	"fmt"

	"github.com/svdq/svdq/quant"
)

// W4Linear layers: nunchaku's 4-bit T5 text encoder
// (nunchaku/models/text_encoders/t5_encoder.py NunchakuT5EncoderModel)
// replaces every nn.Linear whose "<name>.qweight" the file holds by a
// W4Linear (text_encoders/linear.py), TinyChat's weight-only layout, built
// with group_size 128 (from_pretrained) and loaded strictly. Its buffers:
//
//	qweight       I16 [N/4, K]        4-bit codes, tinychat_utils.py pack_w4
//	scales        dtype [G', N]       G' = ceil_num_groups(K, group)
//	scaled_zeros  dtype [G', N]       rows past K/group zero
//	bias          dtype [N]           only when the nn.Linear had one
//
// with dtype the model's (torch_dtype, fp16 or bf16; load_state_dict
// casts). convert_to_tinychat_w4x16y16_linear_weight quantizes
// q = round((w + zero)/scale) and stores scales = scale, scaled_zeros =
// −zero, so w = q·scales + scaled_zeros — the form of quant.WeightOnly
// (Zeros = scaled_zeros), which the kernels compute with one fused
// multiply-add (gemm_awq.cu, gemv_awq.cu: __hfma2(w, scale, zero)).
//
// pack_w4 turns each row's 32-code blocks into 8 int16 words
// q[j] | q[j+8]<<4 | q[j+16]<<8 | q[j+24]<<12 and lays the [N, K/4] word
// matrix out as view(N/4, 4, K/64, 16).permute(0, 2, 1, 3): rows 4t+u,
// 16-word chunks, memory order t, chunk, u, word. Those are the bytes
// PackW4A16 writes for a one-chunk layer (deepcompressor's W4A16 uses the
// same pack_w4), there viewed as I32 [N/4, K/2]; here the int16 view.

// W4LinearScaleRows is the row count of a W4Linear's scales and
// scaled_zeros for in-features k and a group size (tinychat_utils.py
// ceil_num_groups): k/group rounded up to a multiple of 8 for groups ≥ 128
// (16 for 64, 32 for 32). An error when TinyChat has no such layout (the
// group sizes it accepts: 32, 64 and any group of at least 128).
func W4LinearScaleRows(k, group int) (int, error) {
	if group <= 0 || k%group != 0 {
		return 0, fmt.Errorf("in-features %d are not a multiple of the group size %d", k, group)
	}
	factor := 0
	switch {
	case group >= 128:
		factor = 1
	case group == 64:
		factor = 2
	case group == 32:
		factor = 4
	default:
		return 0, fmt.Errorf("group size %d: TinyChat supports 32, 64 or ≥ 128", group)
	}
	packs := (k/group + 7) / 8                     // ceil_divide(num_groups, pack_size = 32 // 4)
	packs = (packs + factor - 1) / factor * factor // a multiple of num_packs_factor
	return packs * 8, nil
}

// PackW4Linear returns the tensors qweight, scales, scaled_zeros and, when
// bias is true, bias of a W4Linear layer holding w (group w.GroupSize();
// nunchaku's T5 builds 128). Rows are not interleaved and nothing is added
// to the bias. With bias false, w.Bias must be all zero (the module has no
// bias to hold it). It returns an error when the shapes do not fit the
// module (K a multiple of the group and of 64, N of 8; a TinyChat group
// size), a code exceeds 15, or a value is not exactly of w.DType.
func PackW4Linear(w *quant.WeightOnly, bias bool) ([]Tensor, error) {
	rows, err := checkW4Linear(w)
	if err != nil {
		return nil, err
	}
	if !bias {
		for i, b := range w.Bias {
			if b != 0 {
				return nil, fmt.Errorf("nunchaku: W4Linear without a bias, but bias[%d] = %g", i, b)
			}
		}
	}
	N, K, G, dt := w.N, w.K, w.Groups(), w.DType
	mdt := dt.String()
	q := make([]byte, N*K/2)
	sc := make([]byte, 2*rows*N)
	sz := make([]byte, 2*rows*N)
	for r := 0; r < N; r++ {
		for k, c := range w.Codes[r*K : (r+1)*K] {
			off, sh := w4a16Offset(r, k, K)
			q[off] |= (c & 0xF) << sh
		}
		for g := 0; g < G; g++ {
			put16(sc[2*(g*N+r):], w.Scales[r*G+g], dt)
			put16(sz[2*(g*N+r):], w.Zeros[r*G+g], dt)
		}
	}
	ts := []Tensor{
		{SuffixQWeight, dtI16, shape64(N/4, K), q},
		{SuffixScales, mdt, shape64(rows, N), sc},
		{SuffixScaledZeros, mdt, shape64(rows, N), sz},
	}
	if bias {
		b := make([]byte, 2*N)
		for r, v := range w.Bias {
			put16(b[2*r:], v, dt)
		}
		ts = append(ts, Tensor{SuffixBias, mdt, shape64(N), b})
	}
	return ts, nil
}

// checkW4Linear validates w for PackW4Linear and returns the scale rows.
func checkW4Linear(w *quant.WeightOnly) (int, error) {
	N, K := w.N, w.K
	if N <= 0 || K <= 0 || w.Group < 0 {
		return 0, fmt.Errorf("nunchaku: bad W4Linear shape N=%d K=%d group %d", N, K, w.Group)
	}
	rows, err := W4LinearScaleRows(K, w.GroupSize())
	switch {
	case err != nil:
		return 0, fmt.Errorf("nunchaku: W4Linear: %v", err)
	case K%64 != 0:
		return 0, fmt.Errorf("nunchaku: W4Linear in-features K=%d is not a multiple of 64 (pack_w4's 16-word chunks)", K)
	case N%8 != 0:
		return 0, fmt.Errorf("nunchaku: W4Linear out-features N=%d is not a multiple of 8", N)
	case w.DType != quant.BF16 && w.DType != quant.F16:
		return 0, fmt.Errorf("nunchaku: bad model dtype %d", w.DType)
	}
	G := w.Groups()
	for _, c := range []struct {
		name      string
		got, want int
	}{{"codes", len(w.Codes), N * K}, {"scales", len(w.Scales), N * G}, {"zeros", len(w.Zeros), N * G}, {"bias", len(w.Bias), N}} {
		if c.got != c.want {
			return 0, fmt.Errorf("nunchaku: W4Linear %s has %d values, want %d (N=%d K=%d group %d)", c.name, c.got, c.want, N, K, w.GroupSize())
		}
	}
	for i, c := range w.Codes {
		if c > 15 {
			return 0, fmt.Errorf("nunchaku: W4Linear codes[%d] (row %d, col %d) = %d > 15", i, i/K, i%K, c)
		}
	}
	for _, f := range []struct {
		v    []float32
		name string
	}{{w.Scales, "scales"}, {w.Zeros, "zeros"}, {w.Bias, "bias"}} {
		if err := checkRepresentable(f.v, w.DType, f.name); err != nil {
			return 0, err
		}
	}
	return rows, nil
}

// W4LinearGroup is the group size nunchaku's T5 builds every W4Linear with
// (t5_encoder.py from_pretrained: W4Linear.from_linear(module,
// group_size=128, ...)); gemm_awq is compiled for it alone.
const W4LinearGroup = 128

// W4LinearOptions tell UnpackW4Linear the group size and, optionally, the
// expected sizes.
type W4LinearOptions struct {
	Name  string // prefixes errors: file and layer
	Group int    // the layer's group size; 0: W4LinearGroup
	N, K  int    // 0: taken from the qweight shape; else must match it
}

// UnpackW4Linear reads a W4Linear layer through get: the exact inverse of
// PackW4Linear. The scale rows past K/group must be zero (as
// convert_to_tinychat_w4x16y16_linear_weight leaves them); an absent bias
// reads as zeros. The result's Group is the group size read with.
func UnpackW4Linear(get Getter, opts W4LinearOptions) (*quant.WeightOnly, error) {
	name := opts.Name
	qn, qdt, qsh, qd, ok := lookup(get, SuffixQWeight)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixQWeight)
	}
	if len(qsh) != 2 || qsh[0] <= 0 || qsh[1] <= 0 || qsh[1]%64 != 0 {
		return nil, fmt.Errorf("nunchaku: %s.%s: shape %v, want [N/4, K] with K a multiple of 64", name, qn, qsh)
	}
	N, K := int(4*qsh[0]), int(qsh[1])
	if err := checkTensor(name, qn, qdt, qsh, qd, dtI16, N/4, K); err != nil {
		return nil, err
	}
	if (opts.N != 0 && opts.N != N) || (opts.K != 0 && opts.K != K) {
		return nil, fmt.Errorf("nunchaku: %s.%s: shape %v holds N=%d K=%d, want N=%d K=%d", name, qn, qsh, N, K, opts.N, opts.K)
	}
	if N%8 != 0 {
		return nil, fmt.Errorf("nunchaku: %s.%s: N=%d is not a multiple of 8", name, qn, N)
	}
	group := opts.Group
	if group == 0 {
		group = W4LinearGroup
	}
	rows, err := W4LinearScaleRows(K, group)
	if err != nil {
		return nil, fmt.Errorf("nunchaku: %s: %v", name, err)
	}
	w := &quant.WeightOnly{N: N, K: K, Group: group}
	G := w.Groups()

	sn, sdt, ssh, sd, ok := lookup(get, SuffixScales)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixScales)
	}
	dt, ok := float16Of(sdt)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s.%s: dtype %s, want BF16 or F16", name, sn, sdt)
	}
	mdt := dt.String()
	if err := checkTensor(name, sn, sdt, ssh, sd, mdt, rows, N); err != nil {
		return nil, err
	}
	zn, zdt, zsh, zd, ok := lookup(get, SuffixScaledZeros)
	if !ok {
		return nil, fmt.Errorf("nunchaku: %s: no %s tensor", name, SuffixScaledZeros)
	}
	if err := checkTensor(name, zn, zdt, zsh, zd, mdt, rows, N); err != nil {
		return nil, err
	}
	for _, t := range []struct {
		name string
		d    []byte
	}{{sn, sd}, {zn, zd}} {
		for i, b := range t.d[2*G*N:] {
			if b != 0 {
				return nil, fmt.Errorf("nunchaku: %s.%s: padding row %d (past in-features/%d = %d) is not zero",
					name, t.name, G+i/(2*N), group, G)
			}
		}
	}
	bn, bdt, bsh, bd, hasBias := lookup(get, SuffixBias)
	if hasBias {
		if err := checkTensor(name, bn, bdt, bsh, bd, mdt, N); err != nil {
			return nil, err
		}
	}
	w.DType = dt
	w.Codes = make([]uint8, N*K)
	w.Scales = make([]float32, N*G)
	w.Zeros = make([]float32, N*G)
	w.Bias = make([]float32, N)
	for r := 0; r < N; r++ {
		row := w.Codes[r*K : (r+1)*K]
		for k := range row {
			off, sh := w4a16Offset(r, k, K)
			row[k] = (qd[off] >> sh) & 0xF
		}
		for g := 0; g < G; g++ {
			w.Scales[r*G+g] = get16(sd[2*(g*N+r):], dt)
			w.Zeros[r*G+g] = get16(zd[2*(g*N+r):], dt)
		}
		if hasBias {
			w.Bias[r] = get16(bd[2*r:], dt)
		}
	}
	return w, nil
}

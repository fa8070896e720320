package quant

import "fmt"

// Precision is the 4-bit format of a W4A4 layer.
type Precision uint8

const (
	INT4  Precision = iota + 1 // signed int4, group 64, bf16/fp16 scales: 4.25 bits per weight
	NVFP4                      // E2M1, group 16, FP8 E4M3 scales, one FP32 tensor scale: 4.5 bits per weight
)

// String returns "int4" or "nvfp4".
func (p Precision) String() string {
	switch p {
	case INT4:
		return "int4"
	case NVFP4:
		return "nvfp4"
	}
	return fmt.Sprintf("Precision(%d)", uint8(p))
}

// GroupSize is the number of consecutive input channels sharing one scale.
func (p Precision) GroupSize() int {
	if p == NVFP4 {
		return 16
	}
	return 64
}

// ParsePrecision accepts "int4" or "nvfp4".
func ParsePrecision(s string) (Precision, error) {
	switch s {
	case "int4":
		return INT4, nil
	case "nvfp4":
		return NVFP4, nil
	}
	return 0, fmt.Errorf("unknown precision %q (want int4 or nvfp4)", s)
}

// ShiftINT4 is the constant nunchaku adds to a GELU output before quantizing
// it as unsigned INT4 (the MLP's second linear).
const ShiftINT4 = 0.171875

// Layer is one SVDQuant W4A4 linear layer in logical (unpacked, unpadded)
// form, every value exactly as it is stored in the file: 16-bit values are
// already rounded to the model's Float16 type, NVFP4 scales to E4M3. The
// kernel computes, for an input row x of length K:
//
//	y = deq(Q_act((x + Shift) / Smooth) · Codesᵀ) + (x · Downᵀ) · Upᵀ + Bias
//
// Shapes (row-major): Codes [N, K]; Scales [N, G] with G = ceil(K/GroupSize),
// the last group zero-padded when K is not a multiple of the group size;
// Smooth [K]; Down [R, K] (= L_down · diag(1/λ): it multiplies the raw,
// unsmoothed input); Up [N, R]; Bias [N].
//
// INT4 weight w[n,k] = Codes[n,k] · Scales[n,k/64], codes in -8..7.
// NVFP4 weight w[n,k] = e2m1(Codes[n,k]) · Scales[n,k/16] · TensorScale,
// codes 0..15 with bit 3 the sign.
type Layer struct {
	Precision   Precision
	N, K, R     int
	Codes       []int8
	Scales      []float32
	TensorScale float32 // NVFP4 per-tensor weight scale (wtscale); 1 for INT4
	Smooth      []float32
	Down        []float32
	Up          []float32
	Bias        []float32
	// Unsigned marks the shifted GELU input of an INT4 MLP second linear:
	// activations are (x + ShiftINT4)/λ quantized unsigned (max/15, codes
	// 0..15), and Bias already holds the correction −Ŵres·(ShiftINT4/λ).
	Unsigned bool
	// DType is the 16-bit type of Smooth, Down, Up, Bias and INT4 Scales.
	DType Float16
}

// Groups returns the number of scale groups per output row.
func (l *Layer) Groups() int { g := l.Precision.GroupSize(); return (l.K + g - 1) / g }

// Validate checks that every slice has the length its shape implies; it
// returns an error naming the first one that does not.
func (l *Layer) Validate() error {
	if l.Precision != INT4 && l.Precision != NVFP4 {
		return fmt.Errorf("quant: bad precision %v", l.Precision)
	}
	if l.N <= 0 || l.K <= 0 || l.R < 0 {
		return fmt.Errorf("quant: bad layer shape N=%d K=%d R=%d", l.N, l.K, l.R)
	}
	check := []struct {
		name string
		got  int
		want int
	}{
		{"codes", len(l.Codes), l.N * l.K},
		{"scales", len(l.Scales), l.N * l.Groups()},
		{"smooth", len(l.Smooth), l.K},
		{"down", len(l.Down), l.R * l.K},
		{"up", len(l.Up), l.N * l.R},
		{"bias", len(l.Bias), l.N},
	}
	for _, c := range check {
		if c.got != c.want {
			return fmt.Errorf("quant: %s has %d values, want %d (N=%d K=%d R=%d)", c.name, c.got, c.want, l.N, l.K, l.R)
		}
	}
	return nil
}

// WeightOnly is a W4A16 layer (adaLN modulation, T5 linears) in logical
// form: unsigned codes with a scale and zero per group of G = GroupSize()
// input channels (64, or Group when set), w[n,k] = Codes[n,k]·Scales[n,k/G]
// + Zeros[n,k/G]; activations stay 16-bit. Codes [N, K] in 0..15; Scales,
// Zeros [N, ceil(K/G)]; Bias [N]. Rows are in the checkpoint's order (the
// nunchaku packer interleaves them).
type WeightOnly struct {
	N, K int
	// Group is the number of input channels per scale and zero; 0 means 64
	// (Int4Group), the value of every layer written before the field.
	Group  int
	Codes  []uint8
	Scales []float32
	Zeros  []float32
	Bias   []float32
	DType  Float16
}

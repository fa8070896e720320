package quant

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"unsafe"
)

// One suite over every 4-bit format (llama.cpp test-quantize-fns style):
// codes in range, round-trip error, nearest grid point, odd and partial
// group lengths, all-zero groups, determinism, non-finite inputs. Every
// tolerance lives in the formatCases table.

type formatCase struct {
	name   string
	group  int
	lo, hi int8 // code range
	// quant fills codes [rows, k] and scales [rows, ceil(k/group)].
	quant func(codes []int8, scales []float32, v []float32, rows, k int)
	// value of one code times its group's stored scale (tensor scale included).
	value func(code int8, scale float32, v []float32) float64
	// grid lists the code values (before scaling) for the nearest-point check.
	grid []float64
	// qmax is the largest code magnitude the unrounded scale maps absmax to.
	qmax float64
	// Tolerances: |v − deq| ≤ errStep·S + scaleErr·|S − amax/qmax|
	// + max(0, amax − qmax·S) + 1e-6·amax, S the stored group scale times the
	// tensor scale: half the widest grid gap, the effect of computing codes
	// with the unrounded scale (kernel), and clamping when rounding made the
	// scale smaller than amax/qmax.
	errStep, scaleErr float64
	nearest           bool // codes are the nearest grid point for the stored scale
	nonNeg            bool // the format is fed non-negative data
	in16              bool // inputs are 16-bit (bf16) values, as the kernel sees them
	panicsOnNaN       bool // NaN/Inf input is a programmer error (else it propagates)
	tscale            func(v []float32) float32
}

var int4Grid, uint4Grid, e2m1Grid []float64

func init() {
	for c := -8; c <= 7; c++ {
		int4Grid = append(int4Grid, float64(c))
	}
	for c := 0; c <= 15; c++ {
		uint4Grid = append(uint4Grid, float64(c))
		e2m1Grid = append(e2m1Grid, float64(e2m1Values[c]))
	}
}

func rowWise(rows, k int, f func(codes []int8, scales []float32, v []float32), g int) func([]int8, []float32, []float32, int, int) {
	return func(codes []int8, scales []float32, v []float32, _, _ int) {
		ng := (k + g - 1) / g
		for r := 0; r < rows; r++ {
			f(codes[r*k:(r+1)*k], scales[r*ng:(r+1)*ng], v[r*k:(r+1)*k])
		}
	}
}

func formatCases() []formatCase {
	intVal := func(c int8, s float32, _ []float32) float64 { return float64(c) * float64(s) }
	return []formatCase{
		{name: "int4/f32", group: 64, lo: -8, hi: 7, grid: int4Grid, qmax: 7, errStep: 0.5, nearest: true, panicsOnNaN: true,
			quant: func(c []int8, s, v []float32, r, k int) { QuantizeInt4(c, s, v, r, k, nil) }, value: intVal},
		{name: "int4/bf16", group: 64, lo: -8, hi: 7, grid: int4Grid, qmax: 7, errStep: 0.5, nearest: true, panicsOnNaN: true,
			quant: func(c []int8, s, v []float32, r, k int) { QuantizeInt4(c, s, v, r, k, RoundBF16) }, value: intVal},
		{name: "int4/fp16", group: 64, lo: -8, hi: 7, grid: int4Grid, qmax: 7, errStep: 0.5, nearest: true, panicsOnNaN: true,
			quant: func(c []int8, s, v []float32, r, k int) { QuantizeInt4(c, s, v, r, k, RoundF16) }, value: intVal},
		{name: "uint4/bf16", group: 64, lo: 0, hi: 15, grid: uint4Grid, qmax: 15, errStep: 0.5, nearest: true, nonNeg: true, panicsOnNaN: true,
			quant: func(c []int8, s, v []float32, r, k int) { QuantizeUint4(c, s, v, r, k, RoundBF16) }, value: intVal},
		{name: "nvfp4/weight", group: 16, lo: 0, hi: 15, grid: e2m1Grid, qmax: 6, errStep: 1, nearest: true, panicsOnNaN: true,
			tscale: NVFP4TensorScale,
			quant:  func(c []int8, s, v []float32, r, k int) { QuantizeNVFP4(c, s, v, r, k, NVFP4TensorScale(v[:r*k])) },
			value: func(c int8, s float32, v []float32) float64 {
				return float64(E2M1(c)) * float64(s*NVFP4TensorScale(v))
			}},
		{name: "nvfp4/act-ref", group: 16, lo: 0, hi: 15, grid: e2m1Grid, qmax: 6, errStep: 1, nearest: true, panicsOnNaN: true,
			quant: func(c []int8, s, v []float32, r, k int) { QuantizeNVFP4(c, s, v, r, k, 1) },
			value: func(c int8, s float32, _ []float32) float64 { return float64(E2M1(c)) * float64(s) }},
		{name: "int4/kernel-act", group: 64, lo: -8, hi: 7, grid: int4Grid, qmax: 7, errStep: 0.5, scaleErr: 9, in16: true,
			value: intVal},
		{name: "uint4/kernel-act", group: 64, lo: 0, hi: 15, grid: uint4Grid, qmax: 15, errStep: 0.5, scaleErr: 16, in16: true, nonNeg: true,
			value: intVal},
		{name: "nvfp4/kernel-act", group: 16, lo: 0, hi: 15, grid: e2m1Grid, qmax: 6, errStep: 1, scaleErr: 7, in16: true,
			value: func(c int8, s float32, _ []float32) float64 { return float64(E2M1(c)) * float64(s) }},
	}
}

// kernelQuant returns the row-wise quantizer of a kernel-act case.
func (fc formatCase) kernelQuant(rows, k int) func([]int8, []float32, []float32, int, int) {
	switch fc.name {
	case "int4/kernel-act":
		return rowWise(rows, k, func(c []int8, s, v []float32) { QuantizeActInt4(c, s, v, false, BF16) }, 64)
	case "uint4/kernel-act":
		return rowWise(rows, k, func(c []int8, s, v []float32) { QuantizeActInt4(c, s, v, true, BF16) }, 64)
	case "nvfp4/kernel-act":
		return rowWise(rows, k, func(c []int8, s, v []float32) { QuantizeActNVFP4(c, s, v) }, 16)
	}
	return fc.quant
}

// testMatrix returns [rows, k] values: Gaussian groups with magnitudes over
// three and a half decades, plus an all-zero group, a one-hot group, a constant group
// and a one-sided group when k allows.
func testMatrix(rng *rand.Rand, rows, k, group int, nonNeg, in16 bool) []float32 {
	v := make([]float32, rows*k)
	for r := 0; r < rows; r++ {
		for b := 0; b < k; b += group {
			e := min(b+group, k)
			mag := math.Pow(10, rng.Float64()*3.5-2) // amax/6 stays below 448
			kind := (r*7 + b/group) % 6
			for i := b; i < e; i++ {
				x := rng.NormFloat64() * mag
				switch kind {
				case 1:
					x = 0
				case 2:
					if i != b+(e-b)/2 {
						x = 0
					}
				case 3:
					x = mag
				case 4:
					x = -math.Abs(x)
				}
				if rng.IntN(50) == 0 {
					x *= 10 // outlier
				}
				if nonNeg {
					x = math.Abs(x)
				}
				v[r*k+i] = float32(x)
			}
		}
	}
	if in16 {
		BF16.RoundAll(v)
	}
	return v
}

func TestFormats(t *testing.T) {
	lengths := []int{1, 7, 15, 16, 17, 63, 64, 65, 100, 128, 130, 200}
	for _, fc := range formatCases() {
		for _, k := range lengths {
			t.Run(fmt.Sprintf("%s/k=%d", fc.name, k), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(uint64(k), 7))
				const rows = 6
				v := testMatrix(rng, rows, k, fc.group, fc.nonNeg, fc.in16)
				checkFormat(t, fc, v, rows, k)
			})
		}
	}
}

func checkFormat(t *testing.T, fc formatCase, v []float32, rows, k int) {
	t.Helper()
	ng := (k + fc.group - 1) / fc.group
	codes := make([]int8, rows*k)
	scales := make([]float32, rows*ng)
	q := fc.kernelQuant(rows, k)
	q(codes, scales, v, rows, k)

	codes2 := make([]int8, rows*k)
	scales2 := make([]float32, rows*ng)
	q(codes2, scales2, v, rows, k)
	for i := range codes {
		if codes[i] != codes2[i] {
			t.Fatalf("not deterministic at %d", i)
		}
	}
	ts := 1.0
	if fc.tscale != nil {
		ts = float64(fc.tscale(v))
	}
	for r := 0; r < rows; r++ {
		for j := 0; j < ng; j++ {
			b, e := j*fc.group, min((j+1)*fc.group, k)
			s := scales[r*ng+j]
			if !(s >= 0) || math.IsInf(float64(s), 0) {
				t.Fatalf("row %d group %d: scale %v", r, j, s)
			}
			var amax float64
			for _, x := range v[r*k+b : r*k+e] {
				amax = max(amax, math.Abs(float64(x)))
			}
			if amax == 0 && s != 0 {
				t.Errorf("row %d group %d: all-zero group has scale %v", r, j, s)
			}
			S := float64(s) * ts
			tol := fc.errStep*S + fc.scaleErr*math.Abs(S-amax/fc.qmax) + max(0, amax-fc.qmax*S) + 1e-6*amax
			if S == 0 {
				tol = amax // codes 0
			}
			for i := b; i < e; i++ {
				c := codes[r*k+i]
				if c < fc.lo || c > fc.hi {
					t.Fatalf("row %d col %d: code %d outside %d..%d", r, i, c, fc.lo, fc.hi)
				}
				if amax == 0 && c != 0 {
					t.Errorf("row %d col %d: all-zero group has code %d", r, i, c)
				}
				x := float64(v[r*k+i])
				d := fc.value(c, s, v)
				if err := math.Abs(x - d); err > tol {
					t.Errorf("row %d col %d: |%g − %g| = %g > %g (scale %g, amax %g)", r, i, x, d, err, tol, S, amax)
				}
				if fc.nearest && S > 0 {
					best := math.Inf(1)
					for _, gv := range fc.grid {
						best = min(best, math.Abs(x-gv*S))
					}
					if math.Abs(x-d) > best+1e-6*amax {
						t.Errorf("row %d col %d: %g quantized to %g, a grid point is %g away", r, i, x, d, best)
					}
				}
			}
		}
	}
}

func TestFormatsNonFinite(t *testing.T) {
	for _, fc := range formatCases() {
		for _, bad := range []float32{float32(math.NaN()), float32(math.Inf(1)), float32(math.Inf(-1))} {
			t.Run(fmt.Sprintf("%s/%v", fc.name, bad), func(t *testing.T) {
				const k = 40
				v := testMatrix(rand.New(rand.NewPCG(1, 2)), 1, k, fc.group, fc.nonNeg, fc.in16)
				v[k/2+1] = bad
				codes, scales := make([]int8, k), make([]float32, (k+fc.group-1)/fc.group)
				if fc.panicsOnNaN {
					mustPanic(t, "quant: ", func() { fc.quant(codes, scales, v, 1, k) })
					return
				}
				fc.kernelQuant(1, k)(codes, scales, v, 1, k)
				if s := scales[(k/2+1)/fc.group]; s == s && !math.IsInf(float64(s), 0) && bad != bad {
					t.Errorf("NaN input gave scale %v; it should propagate", s)
				}
				for _, c := range codes {
					if c < fc.lo || c > fc.hi {
						t.Errorf("code %d out of range", c)
					}
				}
			})
		}
	}
}

func TestFormatsShortSlices(t *testing.T) {
	v := make([]float32, 130)
	mustPanic(t, "quant: QuantizeInt4", func() { QuantizeInt4(make([]int8, 130), make([]float32, 2), v, 1, 130, nil) })
	mustPanic(t, "quant: QuantizeUint4", func() { QuantizeUint4(make([]int8, 129), make([]float32, 3), v, 1, 130, nil) })
	mustPanic(t, "quant: QuantizeNVFP4", func() { QuantizeNVFP4(make([]int8, 130), make([]float32, 8), v, 1, 130, 1) })
	mustPanic(t, "quant: QuantizeNVFP4", func() { QuantizeNVFP4(make([]int8, 130), make([]float32, 9), v, 1, 130, 0) })
	mustPanic(t, "quant: QuantizeActInt4", func() { QuantizeActInt4(make([]int8, 130), make([]float32, 2), v, false, BF16) })
	mustPanic(t, "quant: QuantizeActNVFP4", func() { QuantizeActNVFP4(make([]int8, 100), make([]float32, 9), v) })
	mustPanic(t, "quant: E2M1", func() { E2M1(16) })
	mustPanic(t, "quant: E2M1", func() { E2M1(-1) })
}

func TestBlockSizes(t *testing.T) {
	if int4BlockBytes != 34 || nvfp4BlockBytes != 9 {
		t.Errorf("block constants %d, %d", int4BlockBytes, nvfp4BlockBytes)
	}
	if got := unsafe.Sizeof(int4Block{}); got != int4BlockBytes {
		t.Errorf("int4 block is %d bytes, want 34 (4.25 bits per weight)", got)
	}
	if got := unsafe.Sizeof(nvfp4Block{}); got != nvfp4BlockBytes {
		t.Errorf("nvfp4 block is %d bytes, want 9 (4.5 bits per weight)", got)
	}
}

func TestE2M1(t *testing.T) {
	want := []float32{0, 0.5, 1, 1.5, 2, 3, 4, 6}
	for c := int8(0); c < 16; c++ {
		v := E2M1(c)
		w := want[c&7]
		if c >= 8 {
			w = -w
		}
		if v != w || math.Signbit(float64(v)) != (c >= 8) {
			t.Errorf("E2M1(%d) = %v, want %v", c, v, w)
		}
		if got := NearestE2M1(v); got != c {
			t.Errorf("NearestE2M1(%v) = %d, want %d", v, got, c)
		}
	}
	// Ties go to the even code, beyond 6 saturates, NaN gives 0.
	for _, tc := range []struct {
		x    float32
		want int8
	}{
		{0.25, 0}, {0.2500001, 1}, {0.75, 2}, {0.7499999, 1}, {1.25, 2}, {1.2500001, 3},
		{1.75, 4}, {2.5, 4}, {2.5000002, 5}, {3.5, 6}, {5, 6}, {5.0000005, 7}, {7, 7}, {1e30, 7},
		{-0.25, 8}, {-0.1, 8}, {-0.75, 10}, {-5, 14}, {-100, 15},
		{float32(math.Inf(1)), 7}, {float32(math.Inf(-1)), 15}, {float32(math.NaN()), 0},
	} {
		if got := NearestE2M1(tc.x); got != tc.want {
			t.Errorf("NearestE2M1(%v) = %d, want %d", tc.x, got, tc.want)
		}
	}
}

// TestInt4HandExample checks codes and scales computed by hand.
func TestInt4HandExample(t *testing.T) {
	// Group 0: absmax 7 → scale 1; group 1 (partial, 2 values): absmax 3 → 3/7.
	v := make([]float32, 66)
	copy(v, []float32{7, -7, 3.5, 2.5, -0.5, 0.4, 6.6})
	v[64], v[65] = 3, -1.5
	codes, scales := make([]int8, 66), make([]float32, 2)
	QuantizeInt4(codes, scales, v, 1, 66, nil)
	want := []int8{7, -7, 4, 2, 0, 0, 7} // ties to even: 3.5→4, 2.5→2, −0.5→0
	for i, w := range want {
		if codes[i] != w {
			t.Errorf("code %d = %d, want %d", i, codes[i], w)
		}
	}
	if scales[0] != 1 || scales[1] != float32(3)/7 {
		t.Errorf("scales %v", scales)
	}
	if codes[64] != 7 || codes[65] != -4 { // −1.5/(3/7) = −3.5 → −4
		t.Errorf("partial group codes %d %d", codes[64], codes[65])
	}
	// The bf16-rounded scale is the one the codes are computed with.
	QuantizeInt4(codes, scales, v, 1, 66, RoundBF16)
	if s := scales[1]; s != RoundBF16(float32(3)/7) {
		t.Errorf("bf16 scale %v", s)
	}
	if want := int8(math.RoundToEven(float64(float32(-1.5) / scales[1]))); codes[65] != want {
		t.Errorf("code with rounded scale %d, want %d", codes[65], want)
	}
	// Unsigned: negatives clamp to 0, max/15.
	u := []float32{15, 7.5, 0.5, -3}
	uc, us := make([]int8, 4), make([]float32, 1)
	QuantizeUint4(uc, us, u, 1, 4, nil)
	if us[0] != 1 || uc[0] != 15 || uc[1] != 8 || uc[2] != 0 || uc[3] != 0 {
		t.Errorf("uint4 codes %v scale %v", uc, us)
	}
}

func TestNVFP4HandExample(t *testing.T) {
	v := make([]float32, 32)
	copy(v, []float32{12, -6, 1, 0.5, 5, -9}) // group 0: absmax 12 → scale 2
	v[16] = 2688                              // group 1: absmax 2688 → scale 448
	ts := NVFP4TensorScale(v)
	if ts != 1 {
		t.Fatalf("tensor scale %v, want 2688/2688 = 1", ts)
	}
	codes, scales := make([]int8, 32), make([]float32, 2)
	QuantizeNVFP4(codes, scales, v, 1, 32, ts)
	if scales[0] != 2 || scales[1] != 448 {
		t.Errorf("scales %v", scales)
	}
	// 12/2=6→7, −6/2=−3→13, 1/2=0.5→1, 0.5/2=0.25→0 (tie to even), 5/2=2.5→4 (tie), −4.5→−4 (14)
	want := []int8{7, 13, 1, 0, 4, 14}
	for i, w := range want {
		if codes[i] != w {
			t.Errorf("code %d = %d, want %d", i, codes[i], w)
		}
	}
	if got := NVFP4TensorScale(make([]float32, 5)); got != 1 {
		t.Errorf("all-zero tensor scale %v", got)
	}
	if got := NVFP4TensorScale([]float32{-5376, 1}); got != 2 {
		t.Errorf("tensor scale %v, want 2", got)
	}
	// A tensor scale of 2 halves the E4M3 group scales.
	QuantizeNVFP4(codes, scales, v, 1, 32, 2)
	if scales[0] != 1 || scales[1] != 224 {
		t.Errorf("scales with tensor scale 2: %v", scales)
	}
	mustPanic(t, "quant: NVFP4TensorScale", func() { NVFP4TensorScale([]float32{1, float32(math.NaN())}) })
}

// TestKernelActRounding checks what sets the kernel's activation quantizer
// apart from the weight quantizers: codes from the unrounded scale, the
// stored scale rounded, the ftz reciprocal and NVFP4 saturation.
func TestKernelActRounding(t *testing.T) {
	// amax 1.0: float32 scale 1/7; bf16 scale rounds it. x = 0.5 → 0.5·7 = 3.5 → 4.
	x := []float32{1, 0.5, -1, 0.0703125}
	codes, scales := make([]int8, 4), make([]float32, 1)
	QuantizeActInt4(codes, scales, x, false, BF16)
	if scales[0] != RoundBF16(recip7) {
		t.Errorf("stored scale %v, want bf16(1/7) %v", scales[0], RoundBF16(recip7))
	}
	// The GPU's rcp.approx of float32(1/7) is exactly 7 (measured, see
	// kernel_rcp_test.go), where the correctly rounded reciprocal is
	// 6.9999995: 0.5·7 = 3.5 is a tie and goes to the even code 4 (3 with
	// the correctly rounded reciprocal).
	r := float32(7)
	if kernelRecip(recip7) != r {
		t.Fatalf("kernelRecip(1/7) = %v, want 7", kernelRecip(recip7))
	}
	if codes[1] != 4 {
		t.Errorf("code of 0.5 = %d, want 4", codes[1])
	}
	for i, v := range x {
		if want := int8(math.RoundToEven(float64(v * r))); codes[i] != want {
			t.Errorf("code %d = %d, want %d", i, codes[i], want)
		}
	}
	// Subnormal float32 scale: the kernel's rcp.approx.ftz gives Inf, so the
	// nonzero values saturate.
	tiny := []float32{0x1p-127, -0x1p-128, 0}
	c3, s3 := make([]int8, 3), make([]float32, 1)
	QuantizeActInt4(c3, s3, tiny, false, BF16)
	if c3[0] != 7 || c3[1] != -8 || c3[2] != 0 {
		t.Errorf("ftz codes %v", c3)
	}
	QuantizeActInt4(c3, s3, tiny, true, BF16)
	if c3[0] != 15 || c3[1] != 0 || c3[2] != 0 {
		t.Errorf("ftz unsigned codes %v", c3)
	}
	// NVFP4: amax 2688·2 → scale clamps to 448, values beyond 6·448 saturate.
	big := []float32{5376, -2688, 448}
	c4, s4 := make([]int8, 3), make([]float32, 1)
	QuantizeActNVFP4(c4, s4, big)
	if s4[0] != 448 || c4[0] != 7 || c4[1] != 15 || c4[2] != 2 {
		t.Errorf("saturated NVFP4 codes %v scale %v", c4, s4)
	}
	// NVFP4 codes use 1/unrounded scale: amax 6.6 → s = 1.1 (E4M3 1.125);
	// 3.3/1.1 = 3 exactly (code 5) though 3.3/1.125 = 2.93 would also give 5;
	// 1.925/1.1 = 1.75 → tie → code 4 (2.0); 1.925/1.125 = 1.711 → code 3.
	y := []float32{6.6, 1.925}
	BF16.RoundAll(y)
	c5, s5 := make([]int8, 2), make([]float32, 1)
	QuantizeActNVFP4(c5, s5, y)
	s := y[0] * recip6
	if s5[0] != E4M3ToF32(F32ToE4M3Sat(s)) {
		t.Errorf("E4M3 scale %v", s5[0])
	}
	if want := NearestE2M1(y[1] * kernelRecip(s)); c5[1] != want {
		t.Errorf("code from unrounded scale %d, want %d", c5[1], want)
	}
}

func TestExact16BitArithmetic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < 200000; i++ {
		f := math.Float32frombits(rng.Uint32())
		if f != f {
			continue
		}
		if got, want := roundTo(BF16, float64(f)), RoundBF16(f); math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("roundTo(BF16, %g) = %g, want %g", f, got, want)
		}
		if got, want := roundTo(F16, float64(f)), RoundF16(f); math.Float32bits(got) != math.Float32bits(want) {
			t.Fatalf("roundTo(F16, %g) = %g, want %g", f, got, want)
		}
	}
	// A double-rounding trap: 1 + 2⁻⁸ is a bf16 tie; the tiny addend must
	// push it up, which rounding through float64 would lose.
	if got := fma16(BF16, 1, 1+0x1p-8, 0x1p-80); got != 1+0x1p-7 {
		t.Errorf("fma16 tie broken wrongly: %g", got)
	}
	if got := fma16(BF16, 1, 1+0x1p-8, -0x1p-80); got != 1 {
		t.Errorf("fma16 tie broken wrongly below: %g", got)
	}
	if got := add16(F16, 2048, 1); got != 2048 { // tie at fp16 2048+1 → even 2048
		t.Errorf("add16 tie: %g", got)
	}
	if got := add16(F16, 2048, 1+0x1p-20); got != 2050 {
		t.Errorf("add16 above tie: %g", got)
	}
	if got := mul16(F16, 300, 300); !math.IsInf(float64(got), 1) {
		t.Errorf("fp16 overflow: %g", got)
	}
	// Random fma16 against an exact big.Float-free check: a·b + c with small
	// integers is exact in float32 and then rounded once.
	for i := 0; i < 10000; i++ {
		a, b, c := float32(rng.IntN(4096)-2048), float32(rng.IntN(256)), float32(rng.IntN(1<<20)-1<<19)
		if got, want := fma16(BF16, a, b, c), RoundBF16(a*b+c); got != want {
			t.Fatalf("fma16(%g, %g, %g) = %g, want %g", a, b, c, got, want)
		}
	}
}

func mustPanic(t *testing.T, prefix string, f func()) {
	t.Helper()
	defer func() {
		t.Helper()
		r := recover()
		if r == nil {
			t.Errorf("no panic, want one starting %q", prefix)
			return
		}
		if s := fmt.Sprint(r); len(s) < len(prefix) || s[:len(prefix)] != prefix {
			t.Errorf("panic %q, want prefix %q", s, prefix)
		}
	}()
	f()
}

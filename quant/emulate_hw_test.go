package quant

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// Hardware check of the emulation's arithmetic against an NVIDIA GPU
// (testdata/hwcheck.cu performs the same operations with the CUDA
// intrinsics nunchaku's kernels use). Run in two steps, not in the default
// test run:
//
//	SVDQ_HWCHECK_WRITE=dir go test ./quant -run TestHardwareCases   # write inputs
//	nvcc -O2 -arch=sm_90 quant/testdata/hwcheck.cu -o hwcheck && ./hwcheck dir   # on the GPU
//	SVDQ_HWCHECK_RESULTS=dir go test ./quant -run TestHardwareCases # compare
//
// Sections: (A) the INT4 16-bit accumulator chain acc = __hfma(int→half(p),
// __hmul(as, ws), acc) over 48 groups then __hadd(acc, bias); (B) the
// kernel's INT4 activation quantization of one group (half max, float32
// scale·(1/7), half scale, rcp.approx.ftz, cvt.rni, cvt.pack.sat); (C) the
// NVFP4 activation scale cvt.rn.satfinite.e4m3x2.f32(min(max·(1/6), 448));
// (D) h2div: float→half(__fdividef(x, λ)); (E) __hadd(x, 0.171875). Every
// section must match bit for bit (B and D through the measured
// rcp.approx of kernel_rcp.go; before it, B differed in 41 of 262144 codes).
// Last run: H100, 2026-12-07 (see NOTES.md).

const (
	hwChains = 2048 // section A chains
	hwG      = 48   // groups per chain
	hwGroups = 2048 // section B groups of 64
	hwFP4    = 4096 // section C groups of 16
	hwPairs  = 1 << 16
)

// hwCases generates every section's inputs from a fixed seed.
type hwCases struct {
	// A, per dtype: p [chains·G] int32, as, ws [chains·G], bias [chains] (16-bit patterns)
	p          []int32
	as, ws     [2][]float32
	bias       [2][]float32
	xB         [2][]float32 // B: [groups·64] 16-bit values per dtype
	xC         []float32    // C: [groups·16] bf16 values
	xD, lD, xE [2][]float32 // D: numerators and λ; E: inputs
}

var hwTypes = [2]Float16{BF16, F16}

func newHWCases() *hwCases {
	rng := rand.New(rand.NewPCG(2024, 11))
	c := &hwCases{p: make([]int32, hwChains*hwG)}
	for i := range c.p {
		if i%3 == 0 {
			c.p[i] = int32(rng.IntN(7681)) // unsigned activations: up to 15·8·64
		} else {
			c.p[i] = int32(rng.IntN(6273) - 3136)
		}
	}
	logU := func(lo, hi float64) float32 { return float32(math.Pow(10, lo+(hi-lo)*rng.Float64())) }
	for t, dt := range hwTypes {
		hi := 0.0
		if dt == F16 {
			hi = -1 // keep fp16 products of scales in range most of the time
		}
		c.as[t] = make([]float32, hwChains*hwG)
		c.ws[t] = make([]float32, hwChains*hwG)
		for i := range c.as[t] {
			c.as[t][i] = dt.Round(logU(-3, hi+1) / 7)
			c.ws[t][i] = dt.Round(logU(-4, -1) / 7)
		}
		c.bias[t] = make([]float32, hwChains)
		for i := range c.bias[t] {
			c.bias[t][i] = dt.Round(float32(rng.NormFloat64()))
		}
		c.xB[t] = make([]float32, hwGroups*64)
		for g := 0; g < hwGroups; g++ {
			mag := float64(logU(-3, 2))
			for i := 0; i < 64; i++ {
				v := rng.NormFloat64() * mag
				if g%2 == 1 {
					v = math.Abs(v) // for the unsigned quantizer
				}
				if g%17 == 0 && i%9 == 0 { // values on the quantization grid: ties
					v = math.Round(v*2) / 2
				}
				c.xB[t][g*64+i] = dt.Round(float32(v))
			}
		}
		c.xD[t] = make([]float32, hwPairs)
		c.lD[t] = make([]float32, hwPairs)
		c.xE[t] = make([]float32, hwPairs)
		for i := 0; i < hwPairs; i++ {
			c.xD[t][i] = dt.Round(float32(rng.NormFloat64() * float64(logU(-2, 2))))
			c.lD[t][i] = dt.Round(logU(-1.5, 1.5))
			c.xE[t][i] = dt.Round(float32(rng.NormFloat64() * float64(logU(-3, 1))))
		}
	}
	c.xC = make([]float32, hwFP4*16)
	for g := 0; g < hwFP4; g++ {
		mag := float64(logU(-4, 4)) // past 6·448 = 2688: the 448 clamp
		for i := 0; i < 16; i++ {
			c.xC[g*16+i] = RoundBF16(float32(rng.NormFloat64() * mag))
		}
	}
	return c
}

func bits16(dt Float16, v []float32) []uint16 {
	out := make([]uint16, len(v))
	for i, x := range v {
		if dt == F16 {
			out[i] = F32ToF16(x)
		} else {
			out[i] = F32ToBF16(x)
		}
	}
	return out
}

func from16(dt Float16, h uint16) float32 {
	if dt == F16 {
		return F16ToF32(h)
	}
	return BF16ToF32(h)
}

func writeLE(t *testing.T, path string, data any) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := binary.Write(f, binary.LittleEndian, data); err != nil {
		t.Fatal(err)
	}
}

func readLE(t *testing.T, path string, data any) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := binary.Read(f, binary.LittleEndian, data); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func TestHardwareCases(t *testing.T) {
	wdir, rdir := os.Getenv("SVDQ_HWCHECK_WRITE"), os.Getenv("SVDQ_HWCHECK_RESULTS")
	if wdir == "" && rdir == "" {
		t.Skip("set SVDQ_HWCHECK_WRITE or SVDQ_HWCHECK_RESULTS (see the file comment)")
	}
	c := newHWCases()
	names := [2]string{"bf16", "f16"}
	if wdir != "" {
		if err := os.MkdirAll(wdir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeLE(t, filepath.Join(wdir, "a_p.bin"), c.p)
		for i, dt := range hwTypes {
			n := names[i]
			writeLE(t, filepath.Join(wdir, "a_as_"+n+".bin"), bits16(dt, c.as[i]))
			writeLE(t, filepath.Join(wdir, "a_ws_"+n+".bin"), bits16(dt, c.ws[i]))
			writeLE(t, filepath.Join(wdir, "a_bias_"+n+".bin"), bits16(dt, c.bias[i]))
			writeLE(t, filepath.Join(wdir, "b_x_"+n+".bin"), bits16(dt, c.xB[i]))
			writeLE(t, filepath.Join(wdir, "d_x_"+n+".bin"), bits16(dt, c.xD[i]))
			writeLE(t, filepath.Join(wdir, "d_l_"+n+".bin"), bits16(dt, c.lD[i]))
			writeLE(t, filepath.Join(wdir, "e_x_"+n+".bin"), bits16(dt, c.xE[i]))
		}
		writeLE(t, filepath.Join(wdir, "c_x.bin"), bits16(BF16, c.xC))
		return
	}
	for i, dt := range hwTypes {
		n := names[i]
		// A: accumulator chains, exact.
		got := make([]uint16, hwChains)
		readLE(t, filepath.Join(rdir, "a_out_"+n+".bin"), got)
		bad := 0
		for ch := 0; ch < hwChains; ch++ {
			var acc float32
			for g := 0; g < hwG; g++ {
				j := ch*hwG + g
				acc = fma16(dt, roundTo(dt, float64(c.p[j])), mul16(dt, c.as[i][j], c.ws[i][j]), acc)
			}
			acc = add16(dt, acc, c.bias[i][ch])
			if g := from16(dt, got[ch]); math.Float32bits(g) != math.Float32bits(acc) && !(g != g && acc != acc) {
				if bad++; bad <= 5 {
					t.Errorf("A %s chain %d: GPU %v, emulation %v", n, ch, g, acc)
				}
			}
		}
		t.Logf("A %s: %d/%d accumulator chains differ", n, bad, hwChains)
		// B: activation quantization, signed (even groups) and unsigned (odd).
		codes := make([]int8, hwGroups*64)
		scales := make([]uint16, hwGroups)
		readLE(t, filepath.Join(rdir, "b_codes_"+n+".bin"), codes)
		readLE(t, filepath.Join(rdir, "b_scale_"+n+".bin"), scales)
		badS, badC := 0, 0
		ec, es := make([]int8, 64), make([]float32, 1)
		for g := 0; g < hwGroups; g++ {
			QuantizeActInt4(ec, es, c.xB[i][g*64:(g+1)*64], g%2 == 1, dt)
			if from16(dt, scales[g]) != es[0] {
				badS++
			}
			for k := 0; k < 64; k++ {
				if codes[g*64+k] != ec[k] {
					if badC++; badC <= 5 {
						t.Logf("B %s group %d col %d: GPU code %d, emulation %d (x %v)", n, g, k, codes[g*64+k], ec[k], c.xB[i][g*64+k])
					}
				}
			}
		}
		if badS > 0 || badC > 0 {
			t.Errorf("B %s: %d scales and %d of %d codes differ", n, badS, badC, hwGroups*64)
		}
		t.Logf("B %s: %d scales and %d/%d codes differ", n, badS, badC, hwGroups*64)
		// D: x/λ through __fdividef, then rounded: exact.
		dq := make([]uint16, hwPairs)
		readLE(t, filepath.Join(rdir, "d_out_"+n+".bin"), dq)
		badD := 0
		for j := 0; j < hwPairs; j++ {
			if from16(dt, dq[j]) != dt.Round(kernelDiv(c.xD[i][j], c.lD[i][j])) {
				badD++
			}
		}
		if badD > 0 {
			t.Errorf("D %s: %d/%d quotients differ", n, badD, hwPairs)
		}
		t.Logf("D %s: %d/%d quotients differ", n, badD, hwPairs)
		// E: the shift, exact.
		eq := make([]uint16, hwPairs)
		readLE(t, filepath.Join(rdir, "e_out_"+n+".bin"), eq)
		badE := 0
		for j := 0; j < hwPairs; j++ {
			if from16(dt, eq[j]) != add16(dt, c.xE[i][j], ShiftINT4) {
				badE++
			}
		}
		if badE > 0 {
			t.Errorf("E %s: %d/%d shifted values differ", n, badE, hwPairs)
		}
	}
	// C: NVFP4 activation scales, exact.
	fp8 := make([]uint8, hwFP4)
	readLE(t, filepath.Join(rdir, "c_out.bin"), fp8)
	badC := 0
	ec, es := make([]int8, 16), make([]float32, 1)
	for g := 0; g < hwFP4; g++ {
		QuantizeActNVFP4(ec, es, c.xC[g*16:(g+1)*16])
		if E4M3ToF32(fp8[g]) != es[0] {
			if badC++; badC <= 5 {
				t.Errorf("C group %d: GPU scale %v, emulation %v", g, E4M3ToF32(fp8[g]), es[0])
			}
		}
	}
	t.Logf("C: %d/%d E4M3 scales differ", badC, hwFP4)
}

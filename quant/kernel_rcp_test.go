package quant

import (
	"math"
	"testing"
)

// Values of rcp.approx.ftz.f32 measured on an H100 (scripts/hw-probe.cu,
// 2026-12-07): x, and the bits of the GPU's 1/x, where the correctly
// rounded reciprocal differs by one ulp.
var rcpSamples = []struct {
	x    float32
	bits uint32
}{
	{1.005859375, 0x3f7e823c},  // a 16-bit λ; correctly rounded 0x3f7e823d
	{1.0107421875, 0x3f7d477c}, // correctly rounded 0x3f7d477b
	{1.013671875, 0x3f7c8c15},
	{1.0166015625, 0x3f7bd1c5},
	{8 * float32(1.0/7), 0x3f600000}, // mantissa of the INT4 scale amax·(1/7) for amax = 1; correctly rounded 0x3f5fffff
}

func TestKernelRecipMeasured(t *testing.T) {
	for _, s := range rcpSamples {
		if math.Float32bits(1/s.x) == s.bits {
			t.Fatalf("%v: the sample does not differ from the correctly rounded reciprocal", s.x)
		}
		for _, e := range []int{0, -20, 7, 100, -100} { // the correction depends on the mantissa only
			x := float32(math.Ldexp(float64(s.x), e))
			want := float32(math.Ldexp(float64(math.Float32frombits(s.bits)), -e))
			if got := kernelRecip(x); got != want {
				t.Errorf("kernelRecip(%v·2^%d) = %v, GPU %v", s.x, e, got, want)
			}
			if got := kernelRecip(-x); got != -want {
				t.Errorf("kernelRecip(-%v·2^%d) = %v, GPU %v", s.x, e, got, -want)
			}
		}
	}
}

func TestKernelRecipEdges(t *testing.T) {
	if r := kernelRecip(0x1p-127); !math.IsInf(float64(r), 1) {
		t.Errorf("subnormal: %v, want +Inf (ftz)", r)
	}
	if r := kernelRecip(-0x1p-130); !math.IsInf(float64(r), -1) {
		t.Errorf("negative subnormal: %v, want -Inf", r)
	}
	if r := kernelRecip(0x1.8p126); r != 0 {
		t.Errorf("result below 2^-126: %v, want 0 (ftz)", r)
	}
	if r := kernelRecip(0x1p126); r != 0x1p-126 {
		t.Errorf("2^126: %v, want 2^-126", r)
	}
	if r := kernelRecip(float32(math.NaN())); r == r {
		t.Errorf("NaN: %v", r)
	}
	if r := kernelRecip(2); r != 0.5 {
		t.Errorf("2: %v", r)
	}
	if q := kernelDiv(3, 1.005859375); q != float32(3*float32(math.Float32frombits(0x3f7e823c))) {
		t.Errorf("kernelDiv: %v", q)
	}
}

func TestKernelRecipTable(t *testing.T) {
	if len(rcpApproxFix) == 0 || len(rcpApproxFix) > rcpApproxDomain {
		t.Fatalf("%d corrections for a domain of %d", len(rcpApproxFix), rcpApproxDomain)
	}
	for i := 1; i < len(rcpApproxFix); i++ {
		if rcpApproxFix[i]>>1 <= rcpApproxFix[i-1]>>1 {
			t.Fatalf("entry %d out of order", i)
		}
	}
}

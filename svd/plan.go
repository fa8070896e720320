package svd

// plan picks the cheapest variant of set and orientation (C or Cᵀ) by the
// cost model, turning g into Cᵀ = op(B)ᵀ·op(A)ᵀ when that wins by 10%: less
// work lost to tile padding (n = 40 with 32-wide tiles), or the transposing
// pack moved to the smaller operand.
func (g *gemmProblem) plan(set *kernelSet) *microKernel {
	variants := set.variants
	if forceKernel != nil {
		variants = []*microKernel{forceKernel}
	}
	t := g.transposed()
	var best *microKernel
	var bestCost float64
	swap := false
	for _, kern := range variants {
		c, ct := g.cost(kern), t.cost(kern)
		if best == nil || c < bestCost {
			best, bestCost, swap = kern, c, false
		}
		if ct < 0.9*bestCost {
			best, bestCost, swap = kern, ct, true
		}
	}
	if forceSwap != 0 {
		swap = forceSwap > 0
	}
	if swap {
		*g = t
	}
	return best
}

// forceSwap overrides plan's orientation: 1 computes Cᵀ, -1 C, 0 decides.
var forceSwap int

// Rough costs of the cost model, in nanoseconds per element on one core.
const (
	costFlop    = 1.0 / 110 // one floating-point operation in the kernel
	costCopy    = 0.3       // packing a contiguous run
	costTrans   = 1.5       // packing with a transpose, plain Go loops
	costTransTr = 0.4       // packing with a transpose through transposeBlock
	costScatter = 1.0       // adding an element of Cᵀ to C (addTransposed)
)

// cost estimates the time of the product with kern on one core (ns).
func (g *gemmProblem) cost(kern *microKernel) float64 {
	m, n, k := float64(g.m), float64(g.n), float64(g.k)
	c := 2 * float64(roundUp(g.m, kern.mr)) * float64(roundUp(g.n, kern.nr)) * k * costFlop
	trans := costTrans
	if transposeBlock != nil {
		trans = costTransTr
	}
	if !g.directA(kern) {
		if g.transA {
			c += m * k * float64(ceilDiv(g.n, kern.nc)) * costCopy
		} else if transposeBlock != nil && kern.mr <= transposeWidth {
			c += m * k * float64(ceilDiv(g.n, kern.nc)) * trans
		} else {
			c += m * k * float64(ceilDiv(g.n, kern.nc)) * costTrans
		}
	}
	if g.transB && transposeBlock != nil && kern.nr%transposeWidth == 0 {
		c += k * n * trans
	} else if g.transB {
		c += k * n * costTrans
	} else {
		c += k * n * costCopy
	}
	if g.cs != 1 {
		c += m * n * costScatter
	}
	return c
}

// aMode says how the micro-kernel reads op(A).
type aMode int

const (
	aAuto   aMode = iota // let the plan decide
	aPacked              // pack row blocks into panels
	aDirect              // read A in place through strides (edge panels packed)
)

// forceA overrides the choice of directA (tests exercise both paths).
var forceA = aAuto

// directA reports whether op(A) is read in place instead of packed: when
// each A block meets at most two column panels of B (a narrow C such as the
// range finder's A·Ω), so that packing would cost as much as reading A. A
// block reused across many panels is faster packed (3072³: 210 against 155
// GFLOP/s on two Zen 4 cores).
func (g *gemmProblem) directA(kern *microKernel) bool {
	switch forceA {
	case aPacked:
		return false
	case aDirect:
		return true
	}
	return ceilDiv(min(g.n, kern.nc), kern.nr) <= 2
}

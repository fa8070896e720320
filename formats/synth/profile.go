package synth

import (
	"encoding/binary"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"sort"

	"github.com/svdq/svdq/quant"
)

// stream returns the PCG stream for (seed, kind, name, index).
func stream(seed uint64, kind, name string, index int) *rand.Rand {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seed)
	h.Write(b[:])
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(name))
	binary.LittleEndian.PutUint64(b[:], uint64(index))
	h.Write(b[:])
	s := h.Sum64()
	return rand.New(rand.NewPCG(s, s^0x9e3779b97f4a7c15))
}

// profile is the channel profile of one layer input (see the package doc).
type profile struct {
	act      []float32 // a_k: activation scale per channel
	wcol     []float32 // c_k: weight column scale per channel
	outliers []int     // activation outlier channels, sorted
	wout     []int     // weight outlier columns, sorted
	// mass (Massive only; nil otherwise): signed near-constant value of
	// each massive channel, 0 on ordinary channels. len k.
	mass []float32
}

// pick returns n distinct indices of [0, k) not in skip, sorted.
func pick(r *rand.Rand, n, k int, skip map[int]bool) []int {
	chosen := map[int]bool{}
	out := make([]int, 0, n)
	for len(out) < n && len(chosen)+len(skip) < k {
		i := r.IntN(k)
		if chosen[i] || skip[i] {
			continue
		}
		chosen[i] = true
		out = append(out, i)
	}
	sort.Ints(out)
	return out
}

// newProfile draws the profile of the input called key with k channels.
func newProfile(seed uint64, key string, k int) *profile {
	r := stream(seed, "input", key, 0)
	p := &profile{act: make([]float32, k), wcol: make([]float32, k)}
	for i := range k {
		p.act[i] = float32(math.Exp(0.4 * r.NormFloat64()))
		p.wcol[i] = float32(math.Exp(0.25 * r.NormFloat64()))
	}
	p.outliers = pick(r, max(2, k/256), k, nil)
	skip := map[int]bool{}
	for _, i := range p.outliers {
		p.act[i] *= float32(16 * math.Exp2(2*r.Float64()))
		p.wcol[i] /= 16
		skip[i] = true
	}
	p.wout = pick(r, max(1, k/512), k, skip)
	for _, i := range p.wout {
		p.wcol[i] *= 6
	}
	return p
}

// spikeRate is the mean fraction of weight elements multiplied by spike.
const (
	spikeRate = 1.0 / 4096
	spike     = 8
)

// fillLinear writes the bf16 weight [n, len(col)] into dst (2·n·k bytes):
// w = σ·r_n·col_k·z with outlier rows and spikes (package doc).
func fillLinear(dst []byte, seed uint64, name string, n int, col []float32) {
	k := len(col)
	r := stream(seed, "weight", name, 0)
	sigma := 1 / math.Sqrt(float64(k))
	rows := make([]float32, n)
	for i := range rows {
		rows[i] = float32(sigma * math.Exp(0.2*r.NormFloat64()))
	}
	for _, i := range pick(r, max(1, n/512), n, nil) {
		rows[i] *= 4
	}
	next := gap(r)
	for i := range n {
		row := dst[2*i*k : 2*(i+1)*k]
		for j, c := range col {
			v := rows[i] * c * float32(r.NormFloat64())
			if next--; next < 0 {
				v *= spike
				next = gap(r)
			}
			binary.LittleEndian.PutUint16(row[2*j:], quant.F32ToBF16(v))
		}
	}
}

// gap draws the number of elements before the next spike (geometric).
func gap(r *rand.Rand) int {
	return int(r.ExpFloat64() / spikeRate)
}

// fillPlain writes a tensor that feeds no quantized layer (package doc).
func fillPlain(dst []byte, seed uint64, name string, shape []int64) {
	r := stream(seed, "plain", name, 0)
	n := len(dst) / 2
	mean, sd := 0.0, 0.0
	switch {
	case len(shape) == 1 && isBias(name):
		sd = 0.02
	case len(shape) <= 1:
		mean, sd = 1, 0.1
	default:
		fan := 1.0
		for _, d := range shape[1:] {
			fan *= float64(d)
		}
		sd = 1 / math.Sqrt(fan)
	}
	for i := range n {
		binary.LittleEndian.PutUint16(dst[2*i:], quant.F32ToBF16(float32(mean+sd*r.NormFloat64())))
	}
}

func isBias(name string) bool { return len(name) > 5 && name[len(name)-5:] == ".bias" }

// gelu is the tanh approximation of GELU the FLUX and PixArt MLPs use.
func gelu(x float64) float64 {
	return 0.5 * x * (1 + math.Tanh(math.Sqrt(2/math.Pi)*(x+0.044715*x*x*x)))
}

// tokenScales returns t_s for the S calibration rows of every input (the
// same token scales for all inputs of one file).
func tokenScales(seed uint64, s int) []float64 {
	r := stream(seed, "tokens", "", 0)
	t := make([]float64, s)
	for i := range t {
		t[i] = math.Exp(0.3 * r.NormFloat64())
	}
	return t
}

// sampleRow writes calibration row s of one input segment into x
// (len(x) == len(p.act)): t·a_k·z, through GELU when shifted.
func sampleRow(x []float32, seed uint64, key string, s int, t float64, p *profile, shifted bool) {
	r := stream(seed, "sample", key, s)
	for k, a := range p.act {
		v := t * float64(a) * r.NormFloat64()
		if shifted {
			v = gelu(v)
		}
		x[k] = float32(v)
	}
}

// absmaxBound is the expected max of |z| over 65536 standard normal draws,
// the token count the statistics stand for.
const (
	absmaxBound = 4.0
	tokenCount  = 65536
)

package calib

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
)

// Collector gathers calibration statistics while a model runs: for each
// layer the per-channel absolute maximum, the token count and a uniform
// random sample of at most maxSamples input rows (reservoir sampling with
// Li's Algorithm L: "Reservoir-sampling algorithms of time complexity
// O(n(1 + log(N/n)))", ACM TOMS 20(4), 1994, which draws a random number
// per kept row instead of per row seen).
//
// Each layer has its own PCG stream seeded from (seed, FNV-1a of the layer
// name), so a layer's statistics depend only on the seed and on the
// sequence of rows it is shown, not on how the rows were split into
// Observe calls nor on other layers. Observe is safe for concurrent use;
// calls for different layers run in parallel, calls for the same layer are
// serialized (their order, and so the sample, is then up to the caller).
type Collector struct {
	seed       uint64
	maxSamples int

	mu     sync.Mutex
	layers map[string]*reservoir
}

type reservoir struct {
	mu        sync.Mutex
	k         int
	absmax    []float32
	rows      []float32 // [≤ max, k]
	s         int       // rows held
	seen      int64     // finite rows seen
	nonFinite int64     // rows skipped for NaN or ±Inf
	max       int
	rng       *rand.Rand
	w         float64 // Algorithm L: W
	next      int64   // index (in seen order) of the next row to keep
}

// NewCollector returns a Collector keeping at most maxSamples rows per layer
// (maxSamples ≤ 0 or > MaxSamples: MaxSamples). A layer holds up to
// maxSamples·K float32 values: 4096 rows of a 15360-wide input are 240 MiB,
// so whole-model collection usually keeps a few hundred rows per layer.
func NewCollector(seed uint64, maxSamples int) *Collector {
	if maxSamples <= 0 || maxSamples > MaxSamples {
		maxSamples = MaxSamples
	}
	return &Collector{seed: seed, maxSamples: maxSamples, layers: map[string]*reservoir{}}
}

// layerStream returns the PCG stream of one layer.
func layerStream(seed uint64, name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// Observe records rows of the layer's input x ([rows, k], row-major). A row
// holding NaN or ±Inf is skipped (counted in NonFinite, not in the token
// count). It panics (prefix "calib:") when name is empty, x is shorter than
// rows·k, or k differs from an earlier call for the same layer.
func (c *Collector) Observe(name string, x []float32, rows, k int) {
	if name == "" || rows < 0 || k < 1 || len(x) < rows*k {
		panic(fmt.Sprintf("calib: Observe(%q): %d values for rows=%d k=%d", name, len(x), rows, k))
	}
	c.mu.Lock()
	r := c.layers[name]
	if r == nil {
		r = &reservoir{k: k, absmax: make([]float32, k), max: c.maxSamples, rng: layerStream(c.seed, name)}
		c.layers[name] = r
	}
	c.mu.Unlock()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.k != k {
		panic(fmt.Sprintf("calib: Observe(%q): k = %d, earlier calls had %d", name, k, r.k))
	}
	for i := 0; i < rows; i++ {
		r.add(x[i*k : (i+1)*k])
	}
}

// add records one row.
func (r *reservoir) add(row []float32) {
	for _, v := range row {
		if v-v != 0 {
			r.nonFinite++
			return
		}
	}
	for j, v := range row {
		r.absmax[j] = max(r.absmax[j], float32(math.Abs(float64(v))))
	}
	i := r.seen
	r.seen++
	if r.s < r.max { // filling
		r.rows = append(r.rows, row...)
		r.s++
		if r.s == r.max {
			r.w = math.Exp(math.Log(r.uniform()) / float64(r.max))
			r.next = r.seen + r.skip()
		}
		return
	}
	if i != r.next {
		return
	}
	j := r.rng.IntN(r.max)
	copy(r.rows[j*r.k:(j+1)*r.k], row)
	r.w *= math.Exp(math.Log(r.uniform()) / float64(r.max))
	r.next = r.seen + r.skip()
}

// uniform returns a number in (0, 1).
func (r *reservoir) uniform() float64 {
	for {
		if u := r.rng.Float64(); u > 0 {
			return u
		}
	}
}

// skip returns how many rows to pass over before the next kept one:
// floor(log(U)/log(1−W)).
func (r *reservoir) skip() int64 {
	d := math.Log1p(-r.w)
	if d == 0 { // W below 2⁻⁵³: effectively never again
		return math.MaxInt64 / 4
	}
	s := math.Floor(math.Log(r.uniform()) / d)
	if !(s < math.MaxInt64/4) {
		return math.MaxInt64 / 4
	}
	return int64(s)
}

// Names returns the observed layer names, sorted.
func (c *Collector) Names() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	names := make([]string, 0, len(c.layers))
	for n := range c.layers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Layer returns a copy of one layer's statistics (nil if the layer was never
// observed or all its rows were non-finite). Count is the number of finite
// rows seen.
func (c *Collector) Layer(name string) *Stats {
	c.mu.Lock()
	r := c.layers[name]
	c.mu.Unlock()
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s == 0 {
		return nil
	}
	return &Stats{K: r.k, S: r.s, Count: r.seen,
		AbsMax:  slices.Clone(r.absmax),
		Samples: slices.Clone(r.rows[:r.s*r.k])}
}

// Stats returns a copy of every layer's statistics, keyed by layer name
// (layers with no finite row are left out). Observing may continue.
func (c *Collector) Stats() map[string]*Stats {
	out := map[string]*Stats{}
	for _, n := range c.Names() {
		if s := c.Layer(n); s != nil {
			out[n] = s
		}
	}
	return out
}

// NonFinite returns, for each layer that had any, the number of rows skipped
// because they held NaN or ±Inf.
func (c *Collector) NonFinite() map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]int64{}
	for n, r := range c.layers {
		r.mu.Lock()
		if r.nonFinite > 0 {
			out[n] = r.nonFinite
		}
		r.mu.Unlock()
	}
	return out
}

package tinydit

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Batch is the input of a forward pass for N samples.
type Batch struct {
	N        int
	Latent   []float32 // [N, ImageTokens, InChannels]: noisy latent, 2×2-packed patches
	Text     []float32 // [N, TextTokens, ContextDim]: text-encoder features
	Pooled   []float32 // [N, PooledDim]: pooled text vector
	Timestep []float32 // [N] in (0, 1): the flow-matching time t (noise fraction)
}

// check reports a batch whose sizes do not match cfg.
func (b *Batch) check(cfg Config) error {
	if b.N <= 0 || len(b.Latent) != b.N*cfg.ImageTokens()*cfg.InChannels ||
		len(b.Text) != b.N*cfg.TextTokens*cfg.ContextDim || len(b.Pooled) != b.N*cfg.PooledDim ||
		len(b.Timestep) != b.N {
		return fmt.Errorf("tinydit: batch of %d samples has latent %d, text %d, pooled %d, timestep %d values; config %+v",
			b.N, len(b.Latent), len(b.Text), len(b.Pooled), len(b.Timestep), cfg)
	}
	return nil
}

// Slice returns samples [lo, hi) of b, sharing its storage.
func (b *Batch) Slice(cfg Config, lo, hi int) *Batch {
	li, lt := cfg.ImageTokens()*cfg.InChannels, cfg.TextTokens*cfg.ContextDim
	return &Batch{N: hi - lo, Latent: b.Latent[lo*li : hi*li], Text: b.Text[lo*lt : hi*lt],
		Pooled: b.Pooled[lo*cfg.PooledDim : hi*cfg.PooledDim], Timestep: b.Timestep[lo:hi]}
}

// textEncoder is the stand-in for T5 and CLIP: a fixed vocabulary of token
// features, drawn from Config.Seed (part of the model, not of the inputs).
type textEncoder struct {
	tokens []float32 // [Vocab, ContextDim]; token 0 is the padding token
	pooled []float32 // [Vocab, PooledDim]
}

// newTextEncoder draws the vocabulary: per-channel scales exp(0.5·N(0,1))·0.15
// with Student-t₄ values, plus max(1, ContextDim/128) channels that carry a
// large value (±2–6, one sign per channel) in every token — the T5 encoder's
// outlier feature dimensions.
func newTextEncoder(cfg Config) *textEncoder {
	r := stream(cfg.Seed, "text", "vocab")
	c := cfg.ContextDim
	scale := make([]float64, c)
	for j := range scale {
		scale[j] = 0.15 * math.Exp(0.5*r.NormFloat64())
	}
	big := pickChannels(r, max(1, c/128), c)
	bigVal := make([]float64, len(big))
	for i := range big {
		bigVal[i] = sign(r) * logUniform(r, 1, 2.6)
	}
	e := &textEncoder{tokens: make([]float32, cfg.Vocab*c), pooled: make([]float32, cfg.Vocab*cfg.PooledDim)}
	for v := range cfg.Vocab {
		row := e.tokens[v*c : (v+1)*c]
		for j := range row {
			row[j] = float32(scale[j] * studentT4(r))
		}
		for i, j := range big {
			row[j] = float32(bigVal[i] * (1 + 0.1*r.NormFloat64()))
		}
		for j := range cfg.PooledDim {
			e.pooled[v*cfg.PooledDim+j] = float32(r.NormFloat64())
		}
	}
	return e
}

// NewBatch draws n samples deterministically from (cfg.Seed, seed, sample
// index): a sample is the same whatever n is. Each sample is
//
//   - a prompt of 3…TextTokens random token ids, padded with token 0; its
//     text features are the vocabulary rows plus 0.3× the prompt's mean
//     feature (a little context mixing), its pooled vector the mean of the
//     tokens' pooled rows scaled to unit RMS;
//   - a clean latent x₀ of 16 channels on a 2G×2G grid (G = Config.Grid),
//     each channel a sum of three random low-frequency cosines plus an
//     offset (image-like: smooth, correlated across channels), about unit
//     variance; noise ε ~ N(0, 1); t = sigmoid(N(0, 1)) (the logit-normal
//     time sampling of rectified-flow training); input x_t = (1−t)·x₀ + t·ε,
//     packed into 2×2 patches as FLUX does (feature = channel·4 + 2·dy + dx).
func NewBatch(cfg Config, seed uint64, n int) *Batch {
	enc := newTextEncoder(cfg)
	ti, tt, c := cfg.ImageTokens(), cfg.TextTokens, cfg.ContextDim
	b := &Batch{N: n, Latent: make([]float32, n*ti*cfg.InChannels), Text: make([]float32, n*tt*c),
		Pooled: make([]float32, n*cfg.PooledDim), Timestep: make([]float32, n)}
	for s := range n {
		r := stream(cfg.Seed, "sample", fmt.Sprint(seed, "/", s))
		b.Timestep[s] = float32(1 / (1 + math.Exp(-r.NormFloat64())))
		sampleText(r, cfg, enc, b.Text[s*tt*c:(s+1)*tt*c], b.Pooled[s*cfg.PooledDim:(s+1)*cfg.PooledDim])
		sampleLatent(r, cfg, float64(b.Timestep[s]), b.Latent[s*ti*cfg.InChannels:(s+1)*ti*cfg.InChannels])
	}
	return b
}

func sampleText(r *rand.Rand, cfg Config, enc *textEncoder, text, pooled []float32) {
	c, pd := cfg.ContextDim, cfg.PooledDim
	n := 3 + r.IntN(max(1, cfg.TextTokens-2))
	n = min(n, cfg.TextTokens)
	mean := make([]float64, c)
	for j := range cfg.TextTokens {
		tok := 0
		if j < n {
			tok = 1 + r.IntN(cfg.Vocab-1)
		}
		copy(text[j*c:(j+1)*c], enc.tokens[tok*c:(tok+1)*c])
		if j < n {
			for i := range c {
				mean[i] += float64(enc.tokens[tok*c+i]) / float64(n)
			}
			for i := range pd {
				pooled[i] += enc.pooled[tok*pd+i]
			}
		}
	}
	for j := range cfg.TextTokens {
		for i := range c {
			text[j*c+i] += float32(0.3 * mean[i])
		}
	}
	var ss float64
	for _, v := range pooled {
		ss += float64(v) * float64(v)
	}
	inv := float32(1 / math.Sqrt(ss/float64(pd)+1e-12))
	for i := range pooled {
		pooled[i] *= inv
	}
}

func sampleLatent(r *rand.Rand, cfg Config, t float64, out []float32) {
	g := cfg.Grid
	side := 2 * g
	x0 := make([]float64, latentChannels*side*side)
	for ch := range latentChannels {
		off := 0.5 * r.NormFloat64()
		plane := x0[ch*side*side : (ch+1)*side*side]
		for range 3 {
			fy, fx := r.Float64()*2, r.Float64()*2 // at most two cycles across the image
			ph := r.Float64() * 2 * math.Pi
			amp := 0.8 * r.NormFloat64()
			for y := range side {
				for x := range side {
					plane[y*side+x] += amp * math.Cos(2*math.Pi*(fy*float64(y)+fx*float64(x))/float64(side)+ph)
				}
			}
		}
		for i := range plane {
			plane[i] += off
		}
	}
	for ty := range g {
		for tx := range g {
			tok := out[(ty*g+tx)*cfg.InChannels : (ty*g+tx+1)*cfg.InChannels]
			for ch := range latentChannels {
				for dy := range 2 {
					for dx := range 2 {
						v := x0[ch*side*side+(2*ty+dy)*side+2*tx+dx]
						tok[ch*4+2*dy+dx] = float32((1-t)*v + t*r.NormFloat64())
					}
				}
			}
		}
	}
}

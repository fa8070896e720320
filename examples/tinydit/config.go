package tinydit

import "fmt"

// Config is the size of a tiny DiT and the seed of its weights.
type Config struct {
	Dim        int // D: width of the residual stream, a multiple of 128 (nunchaku pads K to 128)
	HeadDim    int // per-head width; D = heads · HeadDim (FLUX: 128)
	MLPDim     int // H: hidden width of the GELU MLPs (FLUX: 4·D), a multiple of 128
	Double     int // double (joint) blocks, transformer_blocks.{i}
	Single     int // single blocks, single_transformer_blocks.{i}
	InChannels int // latent patch features: 16 latent channels × 2×2 patch = 64, as FLUX
	ContextDim int // width of the text-encoder features (T5-XXL: 4096)
	PooledDim  int // width of the pooled text vector (CLIP-L: 768)
	Grid       int // the image is Grid×Grid patch tokens
	TextTokens int // text tokens per sample (padded, like FLUX's T5 sequence)
	Vocab      int // size of the synthetic text vocabulary
	Seed       uint64
}

// DefaultConfig is the model `svdq demo` runs: D = 256 (4 heads of 64),
// H = 1024, 2 double and 2 single blocks, 8×8 image tokens and 32 text
// tokens: 7.2 M parameters, 6.7 M of them in the 30 layers a FLUX
// checkpoint quantizes, small enough that calibrating, quantizing it twice
// with the (fast) smoothing search and evaluating five variants takes well
// under a minute on two cores.
func DefaultConfig() Config {
	return Config{Dim: 256, HeadDim: 64, MLPDim: 1024, Double: 2, Single: 2, InChannels: 64,
		ContextDim: 256, PooledDim: 128, Grid: 8, TextTokens: 32, Vocab: 512, Seed: 1}
}

// SmallConfig is a smaller model for tests: D = 128 (2 heads), H = 512,
// one block of each kind, 4×4 image tokens and 8 text tokens.
func SmallConfig() Config {
	return Config{Dim: 128, HeadDim: 64, MLPDim: 512, Double: 1, Single: 1, InChannels: 64,
		ContextDim: 128, PooledDim: 64, Grid: 4, TextTokens: 8, Vocab: 64, Seed: 1}
}

// Heads returns D / HeadDim.
func (c Config) Heads() int { return c.Dim / c.HeadDim }

// ImageTokens returns Grid².
func (c Config) ImageTokens() int { return c.Grid * c.Grid }

// Tokens returns the joint sequence length: text then image tokens.
func (c Config) Tokens() int { return c.TextTokens + c.ImageTokens() }

// timeFreqDim is the width of the sinusoidal timestep embedding (FLUX: 256).
const timeFreqDim = 256

// latentChannels is the number of latent channels before 2×2 packing.
const latentChannels = 16

// Validate reports a configuration the model cannot be built with.
func (c Config) Validate() error {
	switch {
	case c.Dim <= 0 || c.Dim%128 != 0:
		return fmt.Errorf("tinydit: Dim %d is not a positive multiple of 128", c.Dim)
	case c.HeadDim <= 0 || c.HeadDim%8 != 0 || c.Dim%c.HeadDim != 0:
		return fmt.Errorf("tinydit: HeadDim %d must be a multiple of 8 dividing Dim %d", c.HeadDim, c.Dim)
	case c.MLPDim <= 0 || c.MLPDim%128 != 0:
		return fmt.Errorf("tinydit: MLPDim %d is not a positive multiple of 128", c.MLPDim)
	case c.Double < 1 || c.Single < 0:
		return fmt.Errorf("tinydit: need at least one double block (got %d double, %d single)", c.Double, c.Single)
	case c.InChannels != latentChannels*4:
		return fmt.Errorf("tinydit: InChannels %d, want %d (16 latent channels × 2×2 patch)", c.InChannels, latentChannels*4)
	case c.ContextDim <= 0 || c.PooledDim <= 0 || c.Grid <= 0 || c.TextTokens <= 0 || c.Vocab < 2:
		return fmt.Errorf("tinydit: bad sizes %+v", c)
	}
	return nil
}

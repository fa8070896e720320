package synth

import (
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"strings"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/preset"
)

// LoRAFile is the name of the LoRA GenerateLoRA writes inside Options.Out.
const LoRAFile = "lora.safetensors"

// GenerateLoRA writes Out/lora.safetensors: a PEFT-style LoRA of the given
// rank (diffusers module names, prefix "transformer.", "unet." for SDXL,
// alpha = rank) on every attention projection of the family's skeleton at
// opt's scale and block count, with ΔW about 1% of a unit-variance weight.
// It is what `svdq synth --lora RANK` adds, so that fuse-lora can be tried
// without downloading a LoRA; the module names are those of a diffusers
// pipeline whatever opt.Naming says (LoRAs are published in those).
func GenerateLoRA(opt Options, rank int) error {
	if rank < 1 || rank > 256 {
		return fmt.Errorf("synth: --lora %d: want a rank in 1..256", rank)
	}
	if opt.Scale == 0 {
		opt.Scale = 1
	}
	specs, err := preset.Skeleton(opt.Arch, preset.SkeletonOptions{Scale: opt.Scale, Blocks: opt.Blocks})
	if err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(opt.Seed, 0x10a))
	var mods []lora.Factors
	for _, s := range specs {
		name, ok := strings.CutSuffix(s.Name, ".weight")
		if !ok || len(s.Shape) != 2 || !(strings.Contains(name, "attn") || strings.Contains(name, "attention.")) {
			continue
		}
		n, k := int(s.Shape[0]), int(s.Shape[1])
		f := lora.Factors{Module: name, Rank: rank, N: n, K: k, Alpha: float64(rank),
			A: make([]float32, rank*k), B: make([]float32, n*rank)}
		// ΔW = B·A with entries of variance rank·σa²·σb² = 1e-4.
		sa, sb := 1/math.Sqrt(float64(k)), math.Sqrt(1e-4*float64(k)/float64(rank))
		for i := range f.A {
			f.A[i] = float32(rng.NormFloat64() * sa)
		}
		for i := range f.B {
			f.B[i] = float32(rng.NormFloat64() * sb)
		}
		mods = append(mods, f)
	}
	if len(mods) == 0 {
		return fmt.Errorf("synth: %s has no attention projection to put a LoRA on", opt.Arch)
	}
	prefix := "transformer."
	if opt.Arch == "sdxl" {
		prefix = "unet."
	}
	return lora.Write(filepath.Join(opt.Out, LoRAFile), mods, lora.WriteOptions{Style: lora.StylePEFT, Prefix: prefix})
}

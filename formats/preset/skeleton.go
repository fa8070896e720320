package preset

import (
	"fmt"
	"math"
	"sort"
)

// TensorSpec is one tensor of a skeleton checkpoint (stored as bf16).
type TensorSpec struct {
	Name  string
	Shape []int64
}

// SkeletonOptions choose the size and naming of a skeleton.
type SkeletonOptions struct {
	// Scale multiplies the model widths; at 1 the real widths are used,
	// otherwise each is rounded to a multiple of 128 (at least 128) while
	// head dimensions stay those of the real model. Interface widths (input
	// channels, text-encoder widths, timestep embedding) stay real.
	Scale float64
	// Blocks is the number of blocks (0: the real count). Each family's
	// Skeleton says what a block is (FLUX: Blocks double and 2·Blocks single
	// blocks).
	Blocks int
	// Naming is "diffusers" (default), "bfl" or "comfyui" for FLUX; other
	// families accept only "diffusers" or "".
	Naming string
}

// Skeleton returns the named family's tensors at the given scale and block
// count, sorted by name.
func Skeleton(family string, opt SkeletonOptions) ([]TensorSpec, error) {
	f, err := Lookup(family)
	if err != nil {
		return nil, err
	}
	if opt.Scale == 0 {
		opt.Scale = 1
	}
	if opt.Scale < 0 || opt.Scale > 1 || math.IsNaN(opt.Scale) {
		return nil, fmt.Errorf("scale %g: want 0 < scale ≤ 1", opt.Scale)
	}
	if opt.Blocks < 0 {
		return nil, fmt.Errorf("blocks %d: want ≥ 0", opt.Blocks)
	}
	specs, err := f.Skeleton(opt)
	if err != nil {
		return nil, err
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	for i := 1; i < len(specs); i++ {
		if specs[i].Name == specs[i-1].Name {
			panic("preset: skeleton of " + family + " lists " + specs[i].Name + " twice")
		}
	}
	return specs, nil
}

// Table returns the skeleton as an in-memory Table.
func SkeletonTable(specs []TensorSpec) MapTable {
	t := MapTable{}
	for _, s := range specs {
		t[s.Name] = s.Shape
	}
	return t
}

// scaled returns width w at scale s: w itself at s = 1, else w·s rounded to
// a multiple of 128, at least 128.
func scaled(w int, s float64) int {
	if s == 1 {
		return w
	}
	n := int(math.Round(float64(w)*s/128)) * 128
	return max(n, 128)
}

// blocksOr returns b, or def when b is 0.
func blocksOr(b, def int) int {
	if b == 0 {
		return def
	}
	return b
}

// skel accumulates tensor specs.
type skel []TensorSpec

// lin adds a linear module's weight [out, in] and, when bias, its bias.
func (s *skel) lin(module string, out, in int, bias bool) {
	*s = append(*s, TensorSpec{module + ".weight", []int64{int64(out), int64(in)}})
	if bias {
		*s = append(*s, TensorSpec{module + ".bias", []int64{int64(out)}})
	}
}

// conv adds a convolution weight [out, in, k, k] and, when bias, its bias.
func (s *skel) conv(module string, out, in, k int, bias bool) {
	*s = append(*s, TensorSpec{module + ".weight", []int64{int64(out), int64(in), int64(k), int64(k)}})
	if bias {
		*s = append(*s, TensorSpec{module + ".bias", []int64{int64(out)}})
	}
}

// vec adds a tensor of the given shape.
func (s *skel) vec(name string, shape ...int) {
	sh := make([]int64, len(shape))
	for i, d := range shape {
		sh[i] = int64(d)
	}
	*s = append(*s, TensorSpec{name, sh})
}

// norm adds a norm's weight and, when bias, its bias, both [n].
func (s *skel) norm(module string, n int, bias bool) {
	s.vec(module+".weight", n)
	if bias {
		s.vec(module+".bias", n)
	}
}

// onlyDiffusers rejects namings other than diffusers for families that have
// no other.
func onlyDiffusers(family string, opt SkeletonOptions) error {
	if opt.Naming != "" && opt.Naming != "diffusers" {
		return fmt.Errorf("family %s has only the diffusers naming, not %q", family, opt.Naming)
	}
	return nil
}

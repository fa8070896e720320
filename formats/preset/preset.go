package preset

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Role is what a whole-checkpoint job does with one layer of a plan.
type Role uint8

const (
	// W4A4 is an SVDQuant layer: 4-bit weights and activations, smoothing
	// vector and 16-bit low-rank branch.
	W4A4 Role = iota + 1
	// W4A16 is a 4-bit weight-only layer (adaLN modulation linears): no
	// smoothing, no low-rank branch, 16-bit activations.
	W4A16
	// W4A16G128 is a 4-bit weight-only layer in the layout of nunchaku's
	// T5 W4Linear (TinyChat packing, groups of 128 input channels, no row
	// interleave, no bias change).
	W4A16G128
)

// String returns "w4a4", "w4a16" or "w4a16g128".
func (r Role) String() string {
	switch r {
	case W4A4:
		return "w4a4"
	case W4A16:
		return "w4a16"
	case W4A16G128:
		return "w4a16g128"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Range is the half-open interval [Lo, Hi) of rows or columns.
type Range struct{ Lo, Hi int }

// All returns [0, n).
func All(n int) Range { return Range{0, n} }

// Len returns Hi − Lo.
func (r Range) Len() int { return r.Hi - r.Lo }

// String formats the range as "[lo:hi]".
func (r Range) String() string { return fmt.Sprintf("[%d:%d]", r.Lo, r.Hi) }

// Source is one block of rows of a layer's weight taken from a tensor of the
// file. The layer's weight W [N, K] is assembled as
//
//	W[Rows.Lo+i, j] = file[Tensor][SrcRows.Lo+i, Cols.Lo+j]   (0 ≤ i < SrcRows.Len(), 0 ≤ j < K)
//
// with SrcRows.Len() == Rows.Len() and Cols.Len() == K; rows of W that no
// source covers are zero (SANA pads q, k and v to a multiple of 128 each).
// A 1×1 convolution weight [N, K, 1, 1] is read as [N, K].
type Source struct {
	// Tensor is the weight tensor's name as it is in the file, prefix
	// included (e.g. "double_blocks.0.img_attn.qkv.weight" or
	// "model.diffusion_model.single_blocks.0.linear1.weight").
	Tensor string
	// Bias is the bias tensor in the file ("" for none); its rows SrcRows
	// land in the layer's bias rows Rows. When one file tensor is split by
	// input columns into several layers (FLUX single-block proj_out/linear2
	// into out_proj and mlp_fc2), only the source holding the LAST columns
	// carries the bias, so that it is added exactly once: deepcompressor's
	// ConcatLinear puts the bias on its last part and its nunchaku converter
	// gives out_proj a zero bias.
	Bias string
	// Module is the module name of Tensor in the file's own naming, without
	// the file prefix and without ".weight" (e.g. "transformer_blocks.0.attn.to_q"
	// or "double_blocks.0.img_attn.qkv").
	Module string
	// SrcRows are the rows of Tensor taken; Cols the input columns taken.
	SrcRows, Cols Range
	// Rows are the rows this source occupies in the layer.
	Rows Range
}

// Layer is one quantized layer of the output checkpoint.
type Layer struct {
	// Name is the output module name, e.g. "transformer_blocks.0.qkv_proj";
	// the packed tensors are Name + ".qweight" and so on.
	Name string
	Role Role
	// Sources are concatenated along N in order (see Source).
	Sources []Source
	// N, K: the logical (unpadded) weight shape [N, K].
	N, K int
	// Calib are the calibration keys (module names of svdq-calib/1 files)
	// whose recorded input is this layer's input, in preference order:
	// diffusers module names first, then the original (BFL) names. Every key
	// names an input of the same width; CalibCols are the columns of that
	// input this layer reads (all of it except for a column-split tensor).
	Calib     []string
	CalibCols Range
	// Shifted marks an INT4 layer whose input is a GELU output that the
	// engine shifts by 0.171875 and quantizes unsigned (nunchaku applies it
	// to the second linear of every GELU MLP it runs through its fused
	// GELU path: FLUX mlp_fc2/mlp_context_fc2/single mlp_fc2, Qwen-Image
	// img_mlp.net.2/txt_mlp.net.2). NVFP4 ignores it.
	Shifted bool
	// SmoothGroup: layers with the same non-empty group read the same input
	// and must share one smoothing vector λ.
	SmoothGroup string
	// Chunks is the number of modulation chunks of a W4A16 adaLN layer whose
	// output channels the packer interleaves (6 or 3); 0: no interleaving.
	Chunks int
	// Conv1x1: the source tensors are 1×1 convolutions [N, K, 1, 1].
	Conv1x1 bool
	// Reason says why the layer has its role.
	Reason string
}

// Kept is a tensor written in 16 bits, unquantized.
type Kept struct {
	// Name is the output tensor name (e.g. "norm_out.linear.weight").
	Name string
	// Tensor is the file tensor it comes from (the first one when several).
	Tensor string
	// Reason says why it stays 16-bit ("embedder", "norm", ...).
	Reason string
	// Transform is "" when the output is Tensor unchanged (copy the bytes).
	// Otherwise the output of shape Shape is assembled from Pieces (see
	// Assemble): "swap-halves" (BFL final_layer.adaLN_modulation.1, whose
	// shift/scale halves are swapped relative to diffusers norm_out.linear),
	// "concat" (several tensors stacked along dim 0, e.g. SANA's
	// cross_attn.kv_linear = attn2.to_k ‖ attn2.to_v), "pad" (chunks moved to
	// padded offsets, zeros between) or "reshape" (same bytes, new shape).
	Transform string
	// Pieces place rows (dim 0) of file tensors into rows of the output.
	Pieces []Piece
	// Shape is the output shape.
	Shape []int64
}

// Piece copies rows SrcRows (along dim 0) of Tensor to rows Rows of a Kept
// output; a row is the product of the remaining dimensions.
type Piece struct {
	Tensor        string
	SrcRows, Rows Range
}

// Plan is what a whole-checkpoint job needs to know about one file.
type Plan struct {
	Family string
	// ModelClass is the nunchaku class that loads the output (e.g.
	// NunchakuFluxTransformer2dModel); for families nunchaku has no loader
	// for, the source model's class name.
	ModelClass string
	// Config is the diffusers config.json text derived from the file.
	Config string
	// Naming of the file's tensors: "diffusers", "bfl" or "comfyui"; Prefix
	// is the prefix every tensor name carries ("", "transformer.",
	// "model.diffusion_model.").
	Naming, Prefix string
	// Layers in a deterministic order (block by block, as declared).
	Layers []Layer
	// Kept tensors, sorted by Name.
	Kept []Kept

	modules map[string][]Target // Resolve index: module name → targets
	flat    map[string]string   // kohya-flattened name → module ("" when ambiguous)
}

// Table is the read-only view of a checkpoint's header a preset needs.
type Table interface {
	Names() []string // every tensor name
	Shape(name string) ([]int64, bool)
}

// MapTable is an in-memory Table.
type MapTable map[string][]int64

// Names returns the sorted tensor names.
func (m MapTable) Names() []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Shape returns the shape of name.
func (m MapTable) Shape(name string) ([]int64, bool) {
	s, ok := m[name]
	return s, ok
}

// Options tune a plan. Include and Exclude apply to the generic family only
// (the other families follow the layer table nunchaku's loader expects).
type Options struct {
	Include, Exclude []*regexp.Regexp
	// PassUnknown keeps tensors a family does not recognise inside its
	// blocks as 16-bit with reason "unrecognised: passed through" instead of
	// failing.
	PassUnknown bool
	// AllowMissingBias plans a checkpoint that lacks a bias every real
	// checkpoint of its family has on a linear (FLUX, Qwen-Image, PixArt,
	// SANA and SDXL declare theirs), the layer then being quantized
	// without one; by default such a checkpoint is refused.
	AllowMissingBias bool
}

// Family knows one model architecture.
type Family interface {
	// Name is the --arch name, e.g. "flux-dev".
	Name() string
	// Detect reports whether the table's tensor names are this family's.
	Detect(t Table) bool
	// Plan derives the quantization plan; widths and block counts come
	// from the table. Errors name the offending tensor.
	Plan(t Table, opt Options) (*Plan, error)
	// Skeleton lists the family's tensors at a scale (see SkeletonOptions).
	Skeleton(opt SkeletonOptions) ([]TensorSpec, error)
}

var registry = map[string]Family{}

// register adds f to the registry; called from each family file's init.
func register(f Family) {
	if _, dup := registry[f.Name()]; dup {
		panic("preset: family registered twice: " + f.Name())
	}
	registry[f.Name()] = f
}

// Names returns the registered family names, sorted.
func Names() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Lookup returns the family called name.
func Lookup(name string) (Family, error) {
	if f, ok := registry[name]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("unknown model family %q (known: %s)", name, strings.Join(Names(), ", "))
}

// Detect returns the one family (other than generic) whose Detect accepts
// t; the error lists the candidates when none or several do.
func Detect(t Table) (Family, error) {
	var hits []string
	for _, n := range Names() {
		if n == genericName {
			continue
		}
		if registry[n].Detect(t) {
			hits = append(hits, n)
		}
	}
	switch len(hits) {
	case 1:
		return registry[hits[0]], nil
	case 0:
		return nil, fmt.Errorf("no known model family matches these tensor names (known: %s); pass --arch generic with --include/--exclude",
			strings.Join(Names(), ", "))
	}
	return nil, fmt.Errorf("tensor names match several families (%s); pass --arch", strings.Join(hits, ", "))
}

// PlanFor detects the family of t and plans it.
func PlanFor(t Table, opt Options) (*Plan, error) {
	f, err := Detect(t)
	if err != nil {
		return nil, err
	}
	return f.Plan(t, opt)
}

// Layer returns the plan's layer called name.
func (p *Plan) Layer(name string) (*Layer, bool) {
	for i := range p.Layers {
		if p.Layers[i].Name == name {
			return &p.Layers[i], true
		}
	}
	return nil, false
}

package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/svdq/svdq/calib"
	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// LoRASpec names one LoRA to fuse (or to check against).
type LoRASpec struct {
	Path     string
	Strength float64
	// Name identifies the LoRA in the provenance record (--remove NAME);
	// "" takes the file's base name without its extension.
	Name string
	// Base, when set, makes this a full fine-tune difference (fuse-lora
	// --delta Path --base Base): ΔW = W_Path − W_Base per 2-D weight
	// (lora.OpenDiff). Path and Base may be files or checkpoint folders.
	Base string
}

// open opens the spec's LoRA file, or its fine-tune difference.
func (s LoRASpec) open() (*lora.File, error) {
	if s.Base != "" {
		return lora.OpenDiff(s.Path, s.Base)
	}
	return lora.Open(s.Path)
}

// ParseLoRASpecs parses command-line FILE[:STRENGTH] arguments.
func ParseLoRASpecs(args []string) ([]LoRASpec, error) {
	out := make([]LoRASpec, 0, len(args))
	for _, a := range args {
		p, s, err := lora.ParseSpec(a)
		if err != nil {
			return nil, err
		}
		out = append(out, LoRASpec{Path: p, Strength: s})
	}
	return out, nil
}

// name returns the record name of s.
func (s LoRASpec) name() string {
	if s.Name != "" {
		return s.Name
	}
	b := filepath.Base(filepath.Clean(s.Path))
	return strings.TrimSuffix(b, filepath.Ext(b))
}

// Layer policies of FuseOptions.
const (
	W4A16Auto   = "auto"   // branch when every engine the input loads in reads one (formats/engine W4A16Branch), else refuse
	W4A16Branch = "branch" // unpacked 16-bit lora_down/lora_up on the layer (nunchaku GEMV_AWQ), with a warning per engine that then rejects the file
	W4A16Skip   = "skip"   // leave W4A16 layers alone (the LoRA's part there is dropped, with a warning)
	KeptMerge   = "merge"  // merge into the 16-bit weight, base and factors kept in the sidecar (lora.SidecarSuffix)
	KeptSkip    = "skip"   // leave 16-bit tensors alone (warning)
)

// FuseOptions configure FuseLoRA.
type FuseOptions struct {
	Model string // fused or base SVDQuant checkpoint (one .safetensors file with svdq metadata)
	// Out is the output file; it must not be an input (Model, its sidecar,
	// a LoRA). Its sidecar is Out + lora.SidecarSuffix, which must not be an
	// input either.
	Out   string
	LoRAs []LoRASpec
	// Remove names fused LoRAs to take out (before adding LoRAs);
	// RemoveAll takes out every one.
	Remove    []string
	RemoveAll bool
	// AllowUnmatched turns unknown keys and modules that match no layer
	// into warnings (the rest of the LoRA is fused).
	AllowUnmatched bool
	W4A16          string // W4A16Auto (""), W4A16Branch or W4A16Skip
	Kept           string // KeptMerge ("") or KeptSkip
	// Trunc chooses the rank of the branch a dense ΔW (LoHa, LoKr, a
	// fine-tune difference) becomes on W4A4 and W4A16 layers (its
	// truncated SVD); required when such a ΔW lands on one. Plain LoRAs
	// are never re-factored, and 16-bit layers take the full ΔW.
	Trunc lora.TruncOptions
	// Calib, when set, is an svdq-calib/1 file whose rows (the layer's key
	// in the file's svdq_calib record) measure each truncation's error.
	Calib string
	// Reference, when set, is the 16-bit checkpoint Model was quantized
	// from: a DoRA module on a quantized layer normalises its weight.
	// Kept tensors use their own base.
	Reference string
	// DryRun plans and validates everything and fills the report, but
	// writes nothing.
	DryRun bool
	// OnWarn, when set, receives warnings (one line each).
	OnWarn func(string)
}

// FuseLayer is one layer the operation changed.
type FuseLayer struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // w4a4, w4a16 or kept
	Base int    `json:"base"` // logical rank before any LoRA
	From int    `json:"from"` // logical rank in the input file
	Rank int    `json:"rank"` // logical rank in the output (kept: total LoRA rank merged)
}

// FuseReport says what FuseLoRA did.
type FuseReport struct {
	Out     string         `json:"out"`
	Aliases string         `json:"aliases"` // how module names beyond the file's own resolve
	Added   []lora.Applied `json:"added"`
	Removed []string       `json:"removed"`
	Layers  []FuseLayer    `json:"layers"` // sorted by name
	// Fused lists the LoRAs in the output, in order.
	Fused []string `json:"fused"`
	// Warnings repeats what went to OnWarn.
	Warnings []string `json:"warnings,omitempty"`
	// Restored is true when no LoRA is left and the output's SHA-256 is the
	// base file's.
	Restored bool `json:"restored"`
	// Rank is the one rank every W4A4 layer of the output stores (also
	// quantization_config's); 0 when no LoRA is left and the base's ranks
	// are back.
	Rank int `json:"rank"`
	// Resized counts the W4A4 layers no LoRA changed whose branch was
	// widened (or narrowed back) with zero columns to that rank.
	Resized int `json:"resized"`
	// Sidecar is the sidecar file written next to Out ("" when none: no
	// kept tensor has a LoRA merged in).
	Sidecar string `json:"sidecar,omitempty"`
	// Engines says, per engine that runs the family, whether the output
	// loads there (formats/engine, as inspect reports it).
	Engines []engine.Verdict `json:"engines,omitempty"`
	// Vectors lists the 1-D tensors (biases, norm weights) the output
	// rewrites: changed by a BFL control LoRA's bias deltas or norm
	// scales, or restored to their base (Ops 0), sorted.
	Vectors []FuseVector `json:"vectors,omitempty"`
	// Truncated lists, per added LoRA and layer, the rank a dense ΔW was
	// truncated to and its error (lora.Truncation), in order.
	Truncated []lora.Truncation `json:"truncated,omitempty"`
	// Input is the model's input features (x_embedder's width, config
	// in_channels) in the output when the operation changed them: 128
	// once a FLUX.1 Canny/Depth control LoRA widens FLUX.1-dev's input,
	// the base's when the last such LoRA is taken out; 0 otherwise.
	Input int `json:"input,omitempty"`
	// InputFrom is the input features in the input file when Input is set.
	InputFrom int `json:"input_from,omitempty"`
}

// FuseVector is one 1-D tensor the operation rewrote.
type FuseVector struct {
	Name  string `json:"name"`
	Layer string `json:"layer,omitempty"` // the quantized layer it is the bias of
	Ops   int    `json:"ops"`             // LoRAs changing it in the output
}

// fusion holds the state of one FuseLoRA call.
type fusion struct {
	opt   FuseOptions
	f     *qfile
	prov  *lora.Provenance
	ix    *lora.Index
	rep   *FuseReport
	old   map[string]int         // layer → logical rank in the input file
	base  map[string]lora.Layer  // layers of the input's record → their base state
	drops map[string][][2]int    // layer → input rank columns to drop
	adds  map[string][]*addition // layer → blocks to append, in order
	// vadds: 1-D tensor → new LoRAs' ops on it, in order (lora_vector.go);
	// vecOut: the output bytes of every rewritten 1-D tensor.
	vadds  map[string][]*lora.VectorOp
	vecOut map[string][]byte
	files  []*lora.File // open LoRA files (closed when FuseLoRA returns)
	// side holds the input's reserved tensors (base bytes and factors of
	// kept tensors): its sidecar, the file itself for a version-1 record,
	// nil when no kept tensor has a LoRA; sidePath names it.
	side     safetensors.Reader
	sidePath string
	// widened is the input record's Widened (layer → rank).
	widened map[string]int
	// contracts are those of the engines that run the input's family
	// (Fixed cleared, see loraContracts); inLoads those whose loader loads
	// the input: the output must load there too.
	contracts, inLoads []*engine.Contract
	// rewritten maps the name of every tensor the fusion rewrites to its
	// output spec (nil: not in the output).
	rewritten map[string]*safetensors.Spec
	// cf is opt.Calib, open (nil without one).
	cf *calib.File
	// ref is opt.Reference, open (nil without one).
	ref safetensors.Reader
	// in is the widenable input layer (lora_input.go).
	in inputState
}

// addition is one new LoRA's part of one layer: the plan, rebuilt when
// written (plain LoRA factors: cheap, so nothing is held meanwhile), or,
// when it has a dense ΔW, the branch built at planning (an SVD is not
// redone), rounded to the model's 16-bit type except on kept tensors.
type addition struct {
	plan *lora.LayerPlan
	br   *lora.Branch
	rank int
}

// branch returns the addition's branch (see addition).
func (a *addition) branch() (*lora.Branch, error) {
	if a.br != nil {
		return a.br, nil
	}
	br, err := a.plan.Build()
	if err != nil {
		return nil, err
	}
	if a.plan.Info.Kind != lora.Kept {
		br.Round(a.plan.Info.DType)
	}
	return br, nil
}

// FuseLoRA takes LoRAs out of and/or fuses LoRAs into an SVDQuant
// checkpoint and writes the result to opt.Out (see formats/lora for the
// rule per kind of layer and the provenance record). Everything is
// validated before the output is created: unknown fused names, LoRA keys
// that are not factors or match no layer (unless AllowUnmatched), shapes
// that do not fit (the error names the layer and both shapes), values that
// overflow the model's 16-bit type, W4A16 layers an engine the input
// loads in has no branch on (--w4a16 auto), an output or sidecar path that
// is an input, and first of all a layer whose packed bytes differ from the
// SHA-256 its svdq entry records (a corrupted input); last, the planned
// output's header and metadata are checked against the loader contract
// (formats/engine): an engine that loads the input must load the output.
// On error nothing is written. The hashes of the rewritten quantized
// layers are recomputed over their output bytes; a layer without a
// recorded hash stays without one, so that removal restores such a base
// byte for byte.
//
// A BFL control LoRA's bias deltas and norm scales rewrite 1-D tensors
// (the biases of kept and quantized layers, norm weights; see
// lora_vector.go), always recomputed from their base bytes, which the
// sidecar keeps. Its img_in of 128 input features widens FLUX's
// x_embedder and rewrites the config and comfy_config in_channels, the
// base's kept in the record (lora_input.go).
//
// The output stores every W4A4 layer's branch at one rank, the largest
// any layer needs, widening the others with zero columns, and its
// quantization_config records that rank: nunchaku's Python loaders build
// every module with it. The kept tensors' base bytes and factors go to the
// sidecar Out + lora.SidecarSuffix, written first (atomically, as the
// output); the record names it and holds its SHA-256.
//
// Taking every LoRA out rewrites the base checkpoint: the base ranks,
// svdq entry and quantization_config, the kept tensors' base bytes (from
// the sidecar) and the header length come from the record, so the
// output's bytes equal the base file's when the base was written by svdq
// (Restored reports the SHA-256 comparison); a sidecar an earlier run left
// at Out's sidecar path is removed.
func FuseLoRA(opt FuseOptions) (*FuseReport, error) {
	if len(opt.LoRAs) == 0 && len(opt.Remove) == 0 && !opt.RemoveAll {
		return nil, errors.New("nothing to do: give a LoRA to fuse or one to remove")
	}
	switch opt.W4A16 {
	case "":
		opt.W4A16 = W4A16Auto
	case W4A16Auto, W4A16Branch, W4A16Skip:
	default:
		return nil, fmt.Errorf("w4a16 policy %q: want auto, branch or skip", opt.W4A16)
	}
	switch opt.Kept {
	case "":
		opt.Kept = KeptMerge
	case KeptMerge, KeptSkip:
	default:
		return nil, fmt.Errorf("kept policy %q: want merge or skip", opt.Kept)
	}
	if err := opt.Trunc.Validate(); err != nil {
		return nil, err
	}
	if err := checkOut(opt.Out, opt.Model); err != nil {
		return nil, err
	}
	for _, in := range opt.inputs() {
		if sameFile(opt.Out, in.path) {
			return nil, fmt.Errorf("%s: output would overwrite %s", opt.Out, in.what)
		}
	}
	f, err := openQuantized(opt.Model)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, ok := f.r.(*safetensors.File); !ok {
		return nil, fmt.Errorf("%s: fuse-lora needs one .safetensors file, not a sharded or diffusers checkpoint", opt.Model)
	}
	if f.meta == nil {
		return nil, fmt.Errorf("%s: no %s metadata: fuse-lora maps LoRA modules through the record `svdq quantize` writes", opt.Model, nunchaku.MetaSVDQ)
	}
	if err := f.verifyFile(); err != nil { // the untouched layers are copied with their hashes
		return nil, err
	}
	fu := &fusion{opt: opt, f: f, rep: &FuseReport{Out: opt.Out},
		old: map[string]int{}, base: map[string]lora.Layer{}, drops: map[string][][2]int{}, adds: map[string][]*addition{},
		vadds: map[string][]*lora.VectorOp{}, vecOut: map[string][]byte{}}
	if opt.Calib != "" {
		if fu.cf, err = calib.Open(opt.Calib); err != nil {
			return nil, err
		}
		defer fu.cf.Close()
	}
	if opt.Reference != "" {
		if fu.ref, err = safetensors.OpenCheckpoint(opt.Reference); err != nil {
			return nil, err
		}
		defer fu.ref.Close()
	}
	defer func() {
		for _, lf := range fu.files {
			lf.Close()
		}
		if fu.side != nil && fu.side != f.r {
			fu.side.Close()
		}
	}()
	if s, ok := f.r.Metadata()[lora.MetaKey]; ok {
		if fu.prov, err = lora.ParseProvenance(s); err != nil {
			return nil, fmt.Errorf("%s: %v", opt.Model, err)
		}
		for l, st := range fu.prov.Layers {
			fu.old[l] = fu.prov.Rank(l)
			fu.base[l] = st
		}
		fu.widened = fu.prov.Widened
		if err := fu.openSide(); err != nil {
			return nil, err
		}
	}
	if err := fu.checkSidecarPath(); err != nil {
		return nil, err
	}
	in := engineFile(f.r)
	fu.contracts = loraContracts(f.meta, in)
	fu.inLoads = loadsIn(fu.contracts, in)
	infos := make([]safetensors.Info, 0, len(f.r.Names()))
	for _, n := range f.r.Names() {
		i, _ := f.r.Info(n)
		infos = append(infos, i)
	}
	if fu.ix, err = lora.NewIndex(f.meta, infos); err != nil {
		return nil, fmt.Errorf("%s: %v", opt.Model, err)
	}
	fu.rep.Aliases = fu.ix.Aliases
	fu.initInput()
	if err := fu.planRemovals(); err != nil {
		return nil, err
	}
	if err := fu.narrowInput(); err != nil {
		return nil, err
	}
	if err := fu.planAdditions(); err != nil {
		return nil, err
	}
	if err := fu.write(); err != nil {
		return nil, err
	}
	for _, a := range fu.prov.LoRAs {
		fu.rep.Fused = append(fu.rep.Fused, a.Name)
	}
	if len(fu.prov.LoRAs) == 0 && !opt.DryRun {
		sum, err := hashFile(opt.Out)
		if err != nil {
			return nil, err
		}
		fu.rep.Restored = sum == fu.prov.Base.SHA256
		if !fu.rep.Restored {
			fu.warn("every LoRA is out and tensors and metadata are the base's, but the file's bytes differ from the base (sha256 %s): the base was not written by svdq's writer", fu.prov.Base.SHA256)
		}
	}
	return fu.rep, nil
}

func (fu *fusion) warn(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	fu.rep.Warnings = append(fu.rep.Warnings, s)
	if fu.opt.OnWarn != nil {
		fu.opt.OnWarn(s)
	}
}

// planRemovals records which rank columns the removed LoRAs occupy and
// takes them out of the record.
func (fu *fusion) planRemovals() error {
	if len(fu.opt.Remove) == 0 && !fu.opt.RemoveAll {
		return nil
	}
	if fu.prov == nil {
		return fmt.Errorf("%s: %v", fu.opt.Model, lora.ErrNotFused)
	}
	names := fu.opt.Remove
	if fu.opt.RemoveAll {
		names = nil
		for _, a := range fu.prov.LoRAs {
			names = append(names, a.Name)
		}
	}
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		i := fu.prov.Find(n)
		if i < 0 {
			var have []string
			for _, a := range fu.prov.LoRAs {
				have = append(have, a.Name)
			}
			return fmt.Errorf("%s: no fused LoRA named %q (fused: %s)", fu.opt.Model, n, strings.Join(have, ", "))
		}
		for l, rg := range fu.prov.LoRAs[i].Ranges {
			fu.drops[l] = append(fu.drops[l], rg) // in the input's coordinates: Remove shifts only the record
		}
	}
	// Ranges in input coordinates must be taken before the record shifts.
	for _, n := range names {
		if i := fu.prov.Find(n); i >= 0 {
			fu.prov.Remove(i)
			fu.rep.Removed = append(fu.rep.Removed, n)
		}
	}
	return nil
}

// planAdditions opens, maps and validates every new LoRA and extends the
// record.
func (fu *fusion) planAdditions() error {
	if len(fu.opt.LoRAs) == 0 {
		return nil
	}
	if fu.prov == nil {
		base, err := fu.baseRecord()
		if err != nil {
			return err
		}
		fu.prov = &lora.Provenance{Version: lora.ProvenanceVersion, Base: base, Layers: map[string]lora.Layer{}}
	}
	names := map[string]bool{}
	for _, a := range fu.prov.LoRAs {
		names[a.Name] = true
	}
	var problems []string
	for _, spec := range fu.opt.LoRAs {
		name := spec.name()
		if names[name] {
			return fmt.Errorf("%s: a LoRA named %q is already fused or given twice (remove it first, or give it another name: --name)", spec.Path, name)
		}
		names[name] = true
		lf, err := spec.open()
		if err != nil {
			return err
		}
		fu.files = append(fu.files, lf)
		if len(lf.TextEncoder) > 0 {
			fu.warn("%s: %s not in this file (text encoder, skipped): %s", spec.Path, count(len(lf.TextEncoder), "key"), listSome(lf.TextEncoder, 4))
		}
		wide, err := fu.widenInput(spec.Path, lf)
		if err != nil {
			return err
		}
		mp, err := lora.Map(lf, fu.ix, spec.Strength)
		if err != nil {
			return err
		}
		vm, err := lora.MapVectors(lf, fu.ix, spec.Strength)
		if err != nil {
			return err
		}
		if len(lf.Modules) == 0 {
			if spec.Base != "" {
				return fmt.Errorf("%s: no 2-D weight differs from the base %s", spec.Path, spec.Base)
			}
			if len(lf.TextEncoder) > 0 && len(lf.Unknown) == 0 && len(lf.Control) == 0 {
				return fmt.Errorf("%s: only text-encoder keys (%d), none for the transformer in %s: nothing to fuse", spec.Path, len(lf.TextEncoder), fu.opt.Model)
			}
			return fmt.Errorf("%s: no LoRA factors (keys: %s)", spec.Path, listSome(append(append(append([]string(nil), lf.Unknown...), lf.Control...), lf.TextEncoder...), 10))
		}
		var bad []string
		if len(lf.Unknown) > 0 && spec.Base != "" {
			bad = append(bad, fmt.Sprintf("%s that differ%s from the base but %s not 2-D weights (biases, norm scales: no branch carries them): %s",
				count(len(lf.Unknown), "tensor"), map[bool]string{true: "s", false: ""}[len(lf.Unknown) == 1], isAre(len(lf.Unknown)), listSome(lf.Unknown, 10)))
		} else if len(lf.Unknown) > 0 {
			bad = append(bad, fmt.Sprintf("%s that %s not LoRA factors: %s", count(len(lf.Unknown), "key"), isAre(len(lf.Unknown)), listSome(lf.Unknown, 10)))
		}
		if len(lf.Control) > 0 {
			bad = append(bad, fmt.Sprintf("%s that svdq does not fuse (lora_A.bias, LyCORIS bias deltas diff_b, a lora_B.bias without plain LoRA factors): %s",
				count(len(lf.Control), "key"), listSome(lf.Control, 10)))
		}
		if len(mp.Unmatched) > 0 {
			bad = append(bad, fmt.Sprintf("%s matching no layer of %s: %s", count(len(mp.Unmatched), "module"), fu.opt.Model, listSome(mp.Unmatched, 10)))
		}
		if len(vm.Unmatched) > 0 {
			bad = append(bad, fmt.Sprintf("%s matching no norm weight of %s: %s", count(len(vm.Unmatched), "norm scale"), fu.opt.Model, listSome(vm.Unmatched, 10)))
		}
		if len(bad) > 0 {
			msg := spec.Path + ": " + strings.Join(bad, "; ")
			if fu.opt.AllowUnmatched {
				fu.warn("%s (skipped)", msg)
			} else {
				problems = append(problems, msg)
				continue
			}
		}
		applied := lora.Applied{Name: name, File: filepath.Base(spec.Path), SHA256: lf.SHA256, Strength: spec.Strength,
			Format: lf.Format, Ranges: map[string][2]int{}, Input: wide}
		var skipped []string
		for i := range mp.Layers {
			lp := &mp.Layers[i]
			li := lp.Info
			if skip, err := fu.skipLayer(spec.Path, li); err != nil {
				return err
			} else if skip {
				skipped = append(skipped, li.Name)
				continue
			}
			br, err := fu.build(spec.Path, name, lp)
			if err != nil {
				return err
			}
			if br.R == 0 {
				continue // all-zero factors or strength 0: nothing to add here
			}
			if where := br.FirstNonFinite(); where != "" {
				return fmt.Errorf("%s: layer %s: the scaled LoRA overflows the model's %v: %s", spec.Path, li.Name, li.DType, where)
			}
			cur := fu.currentRank(li)
			applied.Ranges[li.Name] = [2]int{cur, cur + br.R}
			a := &addition{plan: lp, rank: br.R}
			if lp.HasDense() {
				a.br = br
			}
			fu.adds[li.Name] = append(fu.adds[li.Name], a)
		}
		if len(skipped) > 0 {
			fu.warn("%s: %s left without this LoRA's part by the %s policy: %s", spec.Path, count(len(skipped), "layer"), policyOf(fu, skipped[0]), listSome(skipped, 8))
		}
		vskip, err := fu.addVectors(spec.Path, vm, &applied)
		if err != nil {
			return err
		}
		if len(vskip) > 0 {
			fu.warn("%s: %s (biases, norm weights) left without this LoRA's change by the --kept/--w4a16 skip policy: %s", spec.Path, count(len(vskip), "tensor"), listSome(vskip, 8))
		}
		if len(applied.Ranges) == 0 {
			return fmt.Errorf("%s: adds nothing to %s (strength 0, all-zero factors, or every layer skipped)", spec.Path, fu.opt.Model)
		}
		if _, ok := applied.Ranges[fu.in.layer]; wide > 0 && !ok {
			return fmt.Errorf("%s: widens %s to %d input features but adds nothing to it (all-zero factors or strength 0)", spec.Path, fu.in.layer, wide)
		}
		fu.prov.LoRAs = append(fu.prov.LoRAs, applied)
		fu.rep.Added = append(fu.rep.Added, applied)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s (pass --allow-unmatched to fuse the rest)", strings.Join(problems, "\n"))
	}
	return nil
}

// build returns what one LoRA adds to one layer: its plain LoRA parts
// exactly (lora.LayerPlan.Build) and its dense ΔW (LoHa, LoKr, diff) in
// full on a kept tensor (lora.ExactBranch), truncated by opt.Trunc on a
// W4A4 or W4A16 layer (lora.Truncate, the truncation reported), rounded
// to the model's 16-bit type except on kept tensors.
func (fu *fusion) build(path, name string, lp *lora.LayerPlan) (*lora.Branch, error) {
	li := lp.Info
	br, err := lp.Build()
	if err != nil {
		return nil, err
	}
	d, err := lp.Dense(fu.weightOf)
	if err != nil {
		return nil, err
	}
	if d != nil && !allZero(d) {
		if li.Kind == lora.Kept {
			br.Append(lora.ExactBranch(d, li.N, li.K))
			return br, nil
		}
		if !fu.opt.Trunc.Set() {
			return nil, fmt.Errorf("%s: layer %s (%s): the ΔW of %s is not low-rank, so its branch is a truncated SVD: give --delta-rank R or --delta-energy E",
				path, li.Name, li.Kind, moduleTypes(lp))
		}
		tb, energy := lora.Truncate(d, li.N, li.K, fu.opt.Trunc)
		tb.Round(li.DType)
		x, m, err := fu.calibRows(li)
		if err != nil {
			return nil, err
		}
		fu.rep.Truncated = append(fu.rep.Truncated, lora.Truncation{LoRA: name, Layer: li.Name, Rank: tb.R, Full: min(li.N, li.K),
			Energy: energy, Error: lora.TruncError(d, tb, x, m), Rows: m})
		br.Append(tb)
	}
	if li.Kind != lora.Kept {
		br.Round(li.DType)
	}
	return br, nil
}

// weightOf returns a layer's 16-bit base weight for DoRA: a kept
// tensor's base bytes (the sidecar's when LoRAs are merged into it), a
// quantized layer's from opt.Reference.
func (fu *fusion) weightOf(layer string) ([]float64, error) {
	li := fu.ix.Layers[layer]
	if li == nil {
		return nil, fmt.Errorf("%s: no layer %s", fu.opt.Model, layer)
	}
	var w []float32
	if li.Kind == lora.Kept {
		src, name, path := fu.f.r, layer, fu.opt.Model
		if _, ok := fu.sideInfo(lora.ReservedBase(layer)); ok {
			src, name, path = fu.side, lora.ReservedBase(layer), fu.sideName()
		}
		info, _ := src.Info(name)
		raw, err := src.Bytes(name)
		if err != nil {
			return nil, err
		}
		w = make([]float32, li.N*li.K)
		if err := quant.Decode(w, string(info.DType), raw); err != nil {
			return nil, fmt.Errorf("%s: tensor %q: %v", path, name, err)
		}
	} else {
		if fu.ref == nil {
			return nil, fmt.Errorf("%s: layer %s: a DoRA LoRA normalises the layer's 16-bit weight, which a quantized file does not hold: give --reference (the checkpoint it was quantized from)", fu.opt.Model, layer)
		}
		lm, _ := fu.f.meta.Layer(layer)
		var err error
		if w, _, _, err = readWeight(fu.ref, fu.opt.Reference, metaSources(lm.Sources), lm.N, lm.K); err != nil {
			return nil, err
		}
	}
	out := make([]float64, len(w))
	for i, v := range w {
		out[i] = float64(v)
	}
	return out, nil
}

// allZero reports whether every value of d is zero.
func allZero[T float32 | float64](d []T) bool {
	for _, v := range d {
		if v != 0 {
			return false
		}
	}
	return true
}

// moduleTypes names the non-low-rank module types of a plan ("loha", …).
func moduleTypes(lp *lora.LayerPlan) string {
	seen := map[string]bool{}
	var out []string
	for _, p := range lp.Parts {
		if t := p.Module.Type; !p.Module.LowRank() && !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return strings.Join(out, "+")
}

// calibRows returns the calibration rows of a layer (its svdq_calib key in
// opt.Calib), nil and 0 without --calib or when the file records no key
// for the layer (the error is then measured on the weights, with a
// warning).
func (fu *fusion) calibRows(li *lora.LayerInfo) ([]float32, int, error) {
	if fu.cf == nil {
		return nil, 0, nil
	}
	ref, ok := fu.f.calib[li.Name]
	if !ok {
		fu.warn("%s: no calibration key recorded for layer %s: its truncation error is measured on the weights", fu.opt.Model, li.Name)
		return nil, 0, nil
	}
	cal, err := loadCalib(fu.cf, ref)
	if err != nil {
		return nil, 0, err
	}
	if cal.S == 0 || len(cal.X) < cal.S*li.K {
		return nil, 0, fmt.Errorf("%s: tensor %q: %d rows of width %d, layer %s reads %d columns", fu.opt.Calib, ref.Key+".input_samples", cal.S, len(cal.X)/max(cal.S, 1), li.Name, li.K)
	}
	x, m := sampleRows(cal, li.K, 0)
	return x, m, nil
}

func policyOf(fu *fusion, layer string) string {
	if li := fu.ix.Layers[layer]; li != nil && li.Kind == lora.Kept {
		return "--kept " + fu.opt.Kept
	}
	return "--w4a16 " + fu.opt.W4A16
}

// skipLayer applies the W4A16 and kept policies to a target layer.
func (fu *fusion) skipLayer(path string, li *lora.LayerInfo) (bool, error) {
	switch li.Kind {
	case lora.W4A16:
		switch fu.opt.W4A16 {
		case W4A16Skip:
			return true, nil
		case W4A16Auto:
			if deny := fu.noW4A16Branch(); len(deny) > 0 {
				var accept []*engine.Contract
				for _, c := range fu.contracts {
					if c.W4A16Branch != engine.Forbidden {
						accept = append(accept, c)
					}
				}
				alt := "no engine that runs this family reads one"
				if len(accept) > 0 {
					alt = fmt.Sprintf("or --w4a16 branch for a file you will load only in %s (whose loader reads the branch; %s will then reject the file)",
						contractEngines(accept), contractEngines(deny))
				}
				return false, fmt.Errorf("%s: touches W4A16 (adaLN) layer %s, but the input loads in %s, whose loader has no lora_down/lora_up on W4A16 layers: "+
					"pass --w4a16 skip (W4A16 layers then keep no part of the LoRA); %s", path, li.Name, contractEngines(deny), alt)
			}
		}
	case lora.Kept:
		return fu.opt.Kept == KeptSkip, nil
	}
	return false, nil
}

// currentRank returns the logical rank of a layer's branch at this point
// of the plan (input rank, minus dropped columns, plus LoRAs added so far),
// registering the layer in the record with its base rank on first use.
func (fu *fusion) currentRank(li *lora.LayerInfo) int {
	if _, ok := fu.prov.Layers[li.Name]; !ok {
		st, known := fu.base[li.Name] // its LoRAs were all removed above
		if !known {
			st = lora.Layer{Kind: li.Kind.String(), Base: fu.inputRank(li)}
		}
		fu.prov.Layers[li.Name] = st
	}
	return fu.prov.Rank(li.Name)
}

// inputRank is the logical branch rank of a layer in the input file: a
// W4A4 layer's columns past it are zeros (the file's one rank).
func (fu *fusion) inputRank(li *lora.LayerInfo) int {
	if r, ok := fu.old[li.Name]; ok {
		return r
	}
	var r int
	switch li.Kind {
	case lora.W4A4:
		r = li.R // the svdq entry's: the stored width of a widened layer
		if w, ok := fu.widened[li.Name]; ok {
			r = w
		}
	case lora.W4A16:
		// A base W4A16 branch (another tool's) is taken at its stored,
		// padded rank: its zero rows then round-trip exactly.
		if info, ok := fu.f.r.Info(li.Name + "." + nunchaku.SuffixLoraDown); ok && len(info.Shape) == 2 {
			r = int(info.Shape[0])
		}
	}
	fu.old[li.Name] = r
	return r
}

// baseRecord describes the input as the base checkpoint: its SHA-256, the
// padding after its header JSON, and its svdq entry verbatim when
// re-encoding does not reproduce it.
func (fu *fusion) baseRecord() (lora.Base, error) {
	sum, err := hashFile(fu.opt.Model)
	if err != nil {
		return lora.Base{}, err
	}
	pad, err := headerPad(fu.opt.Model)
	if err != nil {
		return lora.Base{}, err
	}
	b := lora.Base{SHA256: sum, HeaderPad: pad}
	orig := fu.f.r.Metadata()[nunchaku.MetaSVDQ]
	if again, err := fu.f.meta.Marshal(); err != nil || again != orig {
		b.SVDQ = orig
	}
	return b, nil
}

// hashFile returns the hex SHA-256 of a file.
func hashFile(path string) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer fh.Close()
	h := sha256.New()
	if _, err := io.Copy(h, fh); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// headerPad returns how many bytes of a safetensors header follow its JSON
// (the writer pads with spaces to a multiple of 8, plus any reserve).
func headerPad(path string) (int, error) {
	fh, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer fh.Close()
	var n [8]byte
	if _, err := io.ReadFull(fh, n[:]); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	size := binary.LittleEndian.Uint64(n[:])
	if size > safetensors.MaxHeaderSize {
		return 0, fmt.Errorf("%s: header of %d bytes", path, size)
	}
	hdr := make([]byte, size)
	if _, err := io.ReadFull(fh, hdr); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	end := len(hdr)
	for end > 0 && hdr[end-1] == ' ' {
		end--
	}
	return len(hdr) - end, nil
}

// count formats n things: "1 key", "3 keys".
func count(n int, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return fmt.Sprintf("%d %ss", n, thing)
}

func isAre(n int) string {
	if n == 1 {
		return "is"
	}
	return "are"
}

// listSome joins up to n items and says how many more there are.
func listSome(items []string, n int) string {
	s := append([]string(nil), items...)
	sort.Strings(s)
	more := ""
	if len(s) > n {
		more = fmt.Sprintf(" and %d more", len(s)-n)
		s = s[:n]
	}
	return strings.Join(s, ", ") + more
}

package model

import (
	"fmt"
	"strings"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
)

// A fused file must load wherever its input loaded. fuse-lora judges that
// with the loader contract (formats/engine): the engines that run the
// file's family, each contract taken without the architecture its engine
// hard-codes (Contract.Fixed). That architecture is the model's, and
// fusion never changes it, so leaving it out judges the file on what
// fusion can change, also for files narrower than the real model (svdq
// synth), where the rule would rule out the C++ engine before anything
// else is looked at.

// loraContracts returns the contracts of the engines that run the
// family of a file (its svdq entry's, else guessed from its layers), with
// Fixed cleared.
func loraContracts(meta *nunchaku.Meta, f *engine.File) []*engine.Contract {
	fam := ""
	if meta != nil {
		fam = meta.Family
	}
	var out []*engine.Contract
	for _, c := range engine.For(engine.Resolve(fam, f)) {
		cc := *c
		cc.Fixed = nil
		out = append(out, &cc)
	}
	return out
}

// loadsIn returns the contracts among cs whose loader loads f.
func loadsIn(cs []*engine.Contract, f *engine.File) []*engine.Contract {
	var out []*engine.Contract
	for _, c := range cs {
		if len(engine.Check(c, f)) == 0 {
			out = append(out, c)
		}
	}
	return out
}

// contractEngines joins the engine names of cs.
func contractEngines(cs []*engine.Contract) string {
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Engine
	}
	return strings.Join(names, ", ")
}

// noW4A16Branch returns the engines the input loads in whose loader has
// no low-rank branch on W4A16 layers (AWQW4A16Linear: lora_down/lora_up
// would be unexpected keys of a strict load).
func (fu *fusion) noW4A16Branch() []*engine.Contract {
	var out []*engine.Contract
	for _, c := range fu.inLoads {
		if c.W4A16Branch == engine.Forbidden {
			out = append(out, c)
		}
	}
	return out
}

// checkEngines is the last check before anything is written: every engine
// the input loads in must load the output, as planned (header and
// metadata). With --w4a16 branch, an engine whose only objection is the
// W4A16 branch the user asked for gets a warning instead. It also fills
// the report's verdicts (the table's, Fixed included, as inspect gives
// them).
func (fu *fusion) checkEngines(specs []safetensors.Spec, md map[string]string) error {
	out := specFile(specs, md)
	fam := fu.f.meta.Family
	if engine.FamilyOf(fam) == "" {
		fam = engine.Guess(out)
	}
	fu.rep.Engines = engine.CheckAll(fam, out)
	var bad []string
	for _, c := range fu.inLoads {
		p := engine.Check(c, out)
		if len(p) == 0 {
			continue
		}
		if fu.opt.W4A16 == W4A16Branch && len(engine.Check(c, fu.withoutW4A16Branches(out))) == 0 {
			fu.warn("%s (%s) loads the input but will reject the output: --w4a16 branch wrote lora_down/lora_up on W4A16 layers, which its loader does not have", c.Engine, c.Loader)
			continue
		}
		bad = append(bad, fmt.Sprintf("%s (%s): %s", c.Engine, c.Loader, strings.Join(p, "; ")))
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s: the output would not load where the input does (nothing written): %s", fu.opt.Model, strings.Join(bad, " | "))
	}
	return nil
}

// withoutW4A16Branches returns f without the lora_down/lora_up tensors of
// W4A16 layers.
func (fu *fusion) withoutW4A16Branches(f *engine.File) *engine.File {
	g := &engine.File{Tensors: make(map[string]engine.TensorInfo, len(f.Tensors)), Metadata: f.Metadata}
	for n, t := range f.Tensors {
		g.Tensors[n] = t
	}
	for _, lm := range fu.f.meta.Layers {
		if lm.Kind == nunchaku.KindW4A16 {
			delete(g.Tensors, lm.Name+"."+nunchaku.SuffixLoraDown)
			delete(g.Tensors, lm.Name+"."+nunchaku.SuffixLoraUp)
		}
	}
	return g
}

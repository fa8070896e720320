package model

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/engine"
	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// ConvertOptions configure Convert.
type ConvertOptions struct {
	In, Out string
	// Target is an engine name (formats/engine) or "all"/"" for every
	// engine that runs the family.
	Target string
	// Family overrides the family found in the svdq metadata or guessed
	// from the quantized layers' names (a preset or table family name).
	Family string
	// DType converts every 16-bit tensor to this type (0: keep, unless a
	// target requires one dtype and the file mixes them).
	DType quant.Float16
	// Tool is recorded in the svdq metadata entry when the file has one.
	Tool string
}

// ConvertReport is what Convert did.
type ConvertReport struct {
	Family   string           `json:"family"`
	Layers   int              `json:"layers"`
	Renamed  int              `json:"renamed_tensors"`
	Rank     int              `json:"rank"` // the uniform rank written (0: ranks left per layer)
	Padded   int              `json:"padded_layers"`
	Added    []string         `json:"added_metadata,omitempty"`
	Verdicts []engine.Verdict `json:"engines"`
}

// Convert rewrites an SVDQuant file (svdq's, or deepcompressor's /
// nunchaku's) for the target engines without re-quantizing: quantized
// layers go through the engine layout (tensor names, bias present or not,
// W4A16 scale rows, NVFP4 scale tensors), low-rank branches are widened
// with zero columns to one rank where a target builds every module with
// quantization_config's rank, 16-bit tensors are converted when a dtype
// is asked for or required, and the metadata gains what the targets read
// (quantization_config's rank, comfy_config). Every value is preserved
// exactly (zero rank columns add nothing), so the converted file computes
// what the input did. The output is checked against the targets' contracts
// and the verdicts returned; the file is written atomically.
func Convert(opt ConvertOptions) (*ConvertReport, error) {
	r, err := safetensors.OpenCheckpoint(opt.In)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if err := checkOut(opt.Out, opt.In); err != nil {
		return nil, err
	}
	md := r.Metadata()
	ef := engineFile(r)
	var meta *nunchaku.Meta
	if s, ok := md[nunchaku.MetaSVDQ]; ok {
		if meta, err = nunchaku.ParseMeta(s); err != nil {
			return nil, fmt.Errorf("%s: %v", opt.In, err)
		}
	}
	fam := opt.Family
	if fam == "" && meta != nil {
		fam = meta.Family
	}
	if fam = engine.Resolve(fam, ef); fam == "" {
		return nil, fmt.Errorf("%s: no quantized layer of a family nunchaku runs (pass --family)", opt.In)
	}
	cs, err := engine.Select(fam, opt.Target)
	if err != nil {
		return nil, fmt.Errorf("%s: --target: %v", opt.In, err)
	}
	layout, err := engine.LayoutFor(cs)
	if err != nil {
		return nil, fmt.Errorf("%s: family %s: %v", opt.In, fam, err)
	}
	rep := &ConvertReport{Family: fam}

	names := r.Names()
	groups := nunchaku.Layers(names)
	inLayer := map[string]bool{}
	type layerOut struct {
		name string
		ts   []nunchaku.Tensor
	}
	var outs []layerOut
	dtype := ""
	for _, g := range groups {
		var ts []nunchaku.Tensor
		for _, s := range g.Suffixes {
			n := g.Name + "." + s
			info, _ := r.Info(n)
			b, err := r.Bytes(n)
			if err != nil {
				return nil, err
			}
			ts = append(ts, nunchaku.Tensor{Suffix: s, DType: string(info.DType), Shape: info.Shape, Data: b})
			inLayer[n] = true
		}
		at, err := layout.Adapt(fam, g.Name, ts)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", opt.In, err)
		}
		for _, t := range at {
			if t.DType == "BF16" || t.DType == "F16" {
				if dtype == "" && t.Suffix != nunchaku.SuffixWTScale {
					dtype = t.DType
				}
			}
		}
		outs = append(outs, layerOut{g.Name, at})
		rep.Layers++
	}
	if rep.Layers == 0 {
		return nil, fmt.Errorf("%s: no quantized layer", opt.In)
	}
	// One rank where a target builds every module with one.
	if layout.UniformRank {
		for _, o := range outs {
			for _, t := range o.ts {
				if engine.Canonical(t.Suffix) == nunchaku.SuffixLoraDown && len(t.Shape) == 2 {
					rep.Rank = max(rep.Rank, int(t.Shape[1]))
				}
			}
		}
		for i := range outs {
			padded := false
			for j, t := range outs[i].ts {
				c := engine.Canonical(t.Suffix)
				if (c == nunchaku.SuffixLoraDown || c == nunchaku.SuffixLoraUp) && len(t.Shape) == 2 && int(t.Shape[1]) < rep.Rank {
					pt, err := nunchaku.PadRank(t, rep.Rank)
					if err != nil {
						return nil, fmt.Errorf("%s: layer %s: %v", opt.In, outs[i].name, err)
					}
					outs[i].ts[j], padded = pt, true
				}
			}
			if padded {
				rep.Padded++
			}
		}
	}
	// The 16-bit type.
	want := ""
	switch {
	case opt.DType != 0:
		want = opt.DType.String()
	case layout.DType == engine.DTypeBF16:
		want = "BF16"
	case layout.DType == engine.DTypeExact:
		want = dtype
	}
	conv := func(t *nunchaku.Tensor, name string) error {
		if want == "" || t.DType == want || !isFloat(safetensors.DType(t.DType)) ||
			engine.Canonical(t.Suffix) == nunchaku.SuffixWTScale || t.DType == "F8_E4M3" || t.DType == "F8_E5M2" {
			return nil
		}
		d, err := convert16(t.Data, safetensors.DType(t.DType), safetensors.DType(want))
		if err != nil {
			return fmt.Errorf("%s: tensor %q: %v", opt.In, name, err)
		}
		t.DType, t.Data = want, d
		return nil
	}
	var specs []safetensors.Spec
	data := map[string][]byte{}
	for i := range outs {
		for j := range outs[i].ts {
			t := &outs[i].ts[j]
			name := outs[i].name + "." + t.Suffix
			if err := conv(t, name); err != nil {
				return nil, err
			}
			specs = append(specs, safetensors.Spec{Name: name, DType: safetensors.DType(t.DType), Shape: t.Shape})
			data[name] = t.Data
			if !inLayer[name] {
				rep.Renamed++
			}
		}
	}
	for _, n := range names {
		if inLayer[n] {
			continue
		}
		info, _ := r.Info(n)
		if strings.HasPrefix(n, "svdq_lora.") && layout.Strict {
			return nil, fmt.Errorf("%s: tensor %q: fuse-lora provenance tensors, which %s rejects; remove the LoRAs (svdq fuse-lora --remove-all) and fuse them again with this svdq",
				opt.In, n, strings.Join(layout.Engines, ", "))
		}
		b, err := r.Bytes(n)
		if err != nil {
			return nil, err
		}
		t := nunchaku.Tensor{Suffix: n, DType: string(info.DType), Shape: info.Shape, Data: b}
		if info.DType == safetensors.F8E4M3 || info.DType == safetensors.F8E5M2 {
			// Outside a 4-bit layer nothing is FP8 in an output (issue 23):
			// widen exactly to the file's 16-bit type.
			to := cmp.Or(want, dtype, "BF16")
			if t.Data, err = convert16(b, info.DType, safetensors.DType(to)); err != nil {
				return nil, fmt.Errorf("%s: tensor %q: %v", opt.In, n, err)
			}
			t.DType = to
		}
		if err := conv(&t, n); err != nil {
			return nil, err
		}
		specs = append(specs, safetensors.Spec{Name: n, DType: safetensors.DType(t.DType), Shape: t.Shape})
		data[n] = t.Data
	}

	// Metadata.
	out := map[string]string{}
	for k, v := range md {
		out[k] = v
	}
	prec := quant.INT4
	for _, o := range outs {
		for _, t := range o.ts {
			if t.Suffix == nunchaku.SuffixWScales && t.DType == "F8_E4M3" {
				prec = quant.NVFP4
			}
		}
	}
	qcRank := rep.Rank
	if qcRank == 0 {
		for _, o := range outs {
			for _, t := range o.ts {
				if engine.Canonical(t.Suffix) == nunchaku.SuffixLoraDown && len(t.Shape) == 2 && qcRank == 0 {
					qcRank = int(t.Shape[1])
				}
			}
		}
	}
	hasW4A4 := slices.ContainsFunc(groups, func(g nunchaku.Group) bool { return g.Kind == nunchaku.KindW4A4 })
	if qc, ok := md[nunchaku.MetaQuantizationConfig]; hasW4A4 && (!ok || (layout.UniformRank && !qcHasRank(qc, qcRank))) {
		out[nunchaku.MetaQuantizationConfig] = nunchaku.QuantizationConfig(prec, qcRank)
		rep.Added = append(rep.Added, nunchaku.MetaQuantizationConfig)
	}
	if layout.Comfy {
		cfg, ok := md[nunchaku.MetaConfig]
		if !ok {
			return nil, fmt.Errorf("%s: no config metadata to derive comfy_config from", opt.In)
		}
		cc, err := engine.ComfyFluxConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", opt.In, err)
		}
		if out[engine.MetaComfyConfig] != cc {
			out[engine.MetaComfyConfig] = cc
			rep.Added = append(rep.Added, engine.MetaComfyConfig)
		}
	}
	if meta != nil { // layer hashes and ranks as the file now stores them
		for _, o := range outs {
			if lm, ok := meta.Layer(o.name); ok {
				lm.SHA256 = nunchaku.HashTensors(o.ts)
				if lm.Kind == nunchaku.KindW4A4 && rep.Rank > lm.R {
					lm.R = rep.Rank
				}
				if want != "" {
					lm.DType = want
				}
			}
		}
		if opt.Tool != "" {
			meta.Tool = opt.Tool
		}
		if out[nunchaku.MetaSVDQ], err = meta.Marshal(); err != nil {
			return nil, fmt.Errorf("%s: %v", opt.In, err)
		}
	}
	sort.Slice(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	w, err := safetensors.Create(opt.Out, specs, out)
	if err != nil {
		return nil, err
	}
	defer w.Abort()
	for _, s := range specs {
		if err := w.Write(s.Name, data[s.Name]); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	// The verdict on what was written.
	rep.Verdicts = engine.Verdicts(cs, specFile(specs, out))
	return rep, nil
}

// qcHasRank reports whether a quantization_config string records rank r.
func qcHasRank(qc string, r int) bool {
	_, rank, err := nunchaku.ParseQuantizationConfig(qc)
	return err == nil && rank == r
}

// engineFile adapts a checkpoint's header to engine.File.
func engineFile(r safetensors.Reader) *engine.File {
	f := &engine.File{Tensors: map[string]engine.TensorInfo{}, Metadata: r.Metadata()}
	for _, n := range r.Names() {
		i, _ := r.Info(n)
		f.Tensors[n] = engine.TensorInfo{DType: string(i.DType), Shape: i.Shape}
	}
	return f
}

// specFile is the engine view of a file about to be written.
func specFile(specs []safetensors.Spec, md map[string]string) *engine.File {
	f := &engine.File{Tensors: make(map[string]engine.TensorInfo, len(specs)), Metadata: md}
	for _, s := range specs {
		f.Tensors[s.Name] = engine.TensorInfo{DType: string(s.DType), Shape: s.Shape}
	}
	return f
}

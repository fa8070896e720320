package engine

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
)

// TensorInfo is a tensor's header entry.
type TensorInfo struct {
	DType string // safetensors dtype name
	Shape []int64
}

// File is what Check reads of a checkpoint: its header and metadata.
type File struct {
	Tensors  map[string]TensorInfo
	Metadata map[string]string
}

// Verdict is one engine's answer for a file.
type Verdict struct {
	Engine   string   `json:"engine"`
	Loader   string   `json:"loader"`
	Loads    bool     `json:"loads"`
	Problems []string `json:"problems,omitempty"`
}

// CheckAll checks f against every engine that runs presetFamily (a preset
// name such as "flux-dev", or a table family such as "flux").
func CheckAll(presetFamily string, f *File) []Verdict { return Verdicts(For(presetFamily), f) }

// Verdicts checks f against each contract of cs, in order.
func Verdicts(cs []*Contract, f *File) []Verdict {
	out := make([]Verdict, 0, len(cs))
	for _, c := range cs {
		p := Check(c, f)
		out = append(out, Verdict{Engine: c.Engine, Loader: c.Loader, Loads: len(p) == 0, Problems: p})
	}
	return out
}

// Resolve returns family when the table knows it (a preset family such as
// "flux-dev", or a table family such as "flux"), else Guess(f).
func Resolve(family string, f *File) string {
	if tableFamily(family) != "" {
		return family
	}
	return Guess(f)
}

// Guess returns the table family whose quantized modules the file's
// quantized layers match best ("" when none matches any): the family of a
// file without svdq metadata (deepcompressor's, nunchaku's own).
func Guess(f *File) string {
	names := make([]string, 0, len(f.Tensors))
	for n := range f.Tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	groups := nunchaku.Layers(names)
	best, bestN := "", 0
	fams := make([]string, 0, len(Families))
	for n := range Families {
		fams = append(fams, n)
	}
	sort.Strings(fams)
	for _, n := range fams {
		hits := 0
		for _, g := range groups {
			if b, _, rel, ok := Families[n].Block(g.Name); ok {
				if _, ok := b.Spec(rel); ok {
					hits++
				}
			}
		}
		if hits > bestN {
			best, bestN = n, hits
		}
	}
	return best
}

// problems collects findings grouped by rule, each rule listing the
// layers (or tensors) it hit.
type problems struct {
	order []string
	hits  map[string][]string
}

func (p *problems) add(rule, where string) {
	if p.hits == nil {
		p.hits = map[string][]string{}
	}
	h, ok := p.hits[rule]
	if !ok {
		p.order = append(p.order, rule)
	}
	if len(h) > 0 && h[len(h)-1] == where {
		return
	}
	p.hits[rule] = append(h, where)
}

func (p *problems) list() []string {
	var out []string
	for _, r := range p.order {
		w := p.hits[r]
		switch {
		case len(w) == 1 && w[0] == "":
			out = append(out, r)
		case len(w) <= 2:
			out = append(out, fmt.Sprintf("%s: %s", r, strings.Join(w, ", ")))
		default:
			out = append(out, fmt.Sprintf("%s: %s, %s and %d more", r, w[0], w[1], len(w)-2))
		}
	}
	return out
}

// suffix names of a W4A4 layer under a naming.
func names(n Naming) (smooth, smoothOrig, down, up string) {
	if n == PythonNames {
		return "smooth_factor", "smooth_factor_orig", "proj_down", "proj_up"
	}
	return nunchaku.SuffixSmooth, nunchaku.SuffixSmoothOrig, nunchaku.SuffixLoraDown, nunchaku.SuffixLoraUp
}

func other(n Naming) Naming {
	if n == PythonNames {
		return CPPNames
	}
	return PythonNames
}

// QuantConfig is what the loaders read of quantization_config.
type QuantConfig struct {
	Present      bool
	Rank         int  // 32 when absent (the Python loaders' default)
	SkipRefiners bool // Z-Image
	WeightDType  string
}

// ParseQuantConfig reads quantization_config from metadata.
func ParseQuantConfig(md map[string]string) (QuantConfig, error) {
	qc := QuantConfig{Rank: 32}
	s, ok := md[MetaQuantizationConfig]
	if !ok {
		return qc, nil
	}
	var v struct {
		Rank         *int `json:"rank"`
		SkipRefiners bool `json:"skip_refiners"`
		Weight       struct {
			DType string `json:"dtype"`
		} `json:"weight"`
	}
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return qc, fmt.Errorf("metadata %s is not JSON: %v", MetaQuantizationConfig, err)
	}
	qc.Present, qc.SkipRefiners, qc.WeightDType = true, v.SkipRefiners, v.Weight.DType
	if v.Rank != nil {
		qc.Rank = *v.Rank
	}
	return qc, nil
}

// Check returns why f does not load in c's engine (none: it loads, as far
// as the file's names, shapes, dtypes and metadata decide).
func Check(c *Contract, f *File) []string {
	var p problems
	fam := Families[c.Family]
	qc, _ := ParseQuantConfig(f.Metadata) // not JSON: reported below where the loader reads it
	for _, m := range c.Meta {
		if m.Key == MetaComfyConfig {
			for _, e := range checkComfyConfig(f) {
				p.add(e, "")
			}
		}
		v, ok := f.Metadata[m.Key]
		switch {
		case !ok && m.Need == Required:
			p.add(fmt.Sprintf("no %s metadata (%s)", m.Key, m.Why), "")
		case ok && m.Value != "" && v != m.Value:
			p.add(fmt.Sprintf("metadata %s is %q, not %q (%s)", m.Key, v, m.Value, m.Why), "")
		case ok && m.Value == "" && !json.Valid([]byte(v)):
			p.add(fmt.Sprintf("metadata %s is not JSON", m.Key), "")
		}
	}

	meta := svdqMeta(f)
	all := make([]string, 0, len(f.Tensors))
	for n := range f.Tensors {
		all = append(all, n)
	}
	sort.Strings(all)
	groups := nunchaku.Layers(all)
	has := func(layer, suf string) (TensorInfo, bool) { t, ok := f.Tensors[layer+"."+suf]; return t, ok }

	smooth, smoothOrig, down, up := names(c.Naming)
	oSmooth, oSmoothOrig, oDown, oUp := names(other(c.Naming))
	seen := map[string]map[string]bool{} // block prefix → rel names present
	blockOf := map[string]*BlockSpec{}
	ranks := map[string]int{}
	var dtype string
	for _, g := range groups {
		b, prefix, rel, ok := fam.Block(g.Name)
		var spec *LayerSpec
		if ok {
			spec, ok = b.Spec(rel)
		}
		if !ok {
			p.add("quantized layers the loader builds no module for", g.Name)
			continue
		}
		if seen[prefix] == nil {
			seen[prefix] = map[string]bool{}
		}
		seen[prefix][rel] = true
		blockOf[prefix] = b
		if g.Kind != spec.Kind {
			p.add(fmt.Sprintf("layer kind differs from the loader's module (%s expected)", spec.Kind), g.Name)
			continue
		}
		_, hasBias := has(g.Name, nunchaku.SuffixBias)
		wantBias := c.BiasAlways || spec.Bias
		switch {
		case wantBias && !hasBias:
			p.add("no bias tensor where the loader's module has one", g.Name)
		case !wantBias && hasBias && c.Strict:
			p.add("a bias tensor where the loader builds the module without one (unexpected key)", g.Name)
		}
		qw, _ := has(g.Name, nunchaku.SuffixQWeight)
		if g.Kind == w4a16g128 {
			if d := checkW4Linear(c, f, g, qw, &p); dtype == "" {
				dtype = d
			}
			continue
		}
		if g.Kind == w4a16 {
			ws, _ := has(g.Name, nunchaku.SuffixWScales)
			if _, ok := has(g.Name, nunchaku.SuffixWZeros); !ok {
				p.add("W4A16 layer without wzeros", g.Name)
			}
			if len(qw.Shape) == 2 && len(ws.Shape) == 2 {
				k := 2 * int(qw.Shape[1])
				if int(ws.Shape[0]) != (k+63)/64 {
					p.add("W4A16 wscales/wzeros rows are not in-features/64 (the loader allocates [ceil(K/64), N])", g.Name)
				}
			}
			_, d := has(g.Name, nunchaku.SuffixLoraDown)
			if d && c.W4A16Branch == Forbidden {
				p.add("lora_down/lora_up on a W4A16 layer (AWQW4A16Linear has none: unexpected keys)", g.Name)
			}
			if dtype == "" && ws.DType != "" {
				dtype = ws.DType
			}
			continue
		}
		// W4A4.
		for _, s := range [][2]string{{smooth, oSmooth}, {down, oDown}, {up, oUp}} {
			_, ok := has(g.Name, s[0])
			_, okOther := has(g.Name, s[1])
			switch {
			case !ok && okOther:
				p.add(fmt.Sprintf("tensor names the loader does not read (it reads %s)", c.Naming), g.Name)
			case !ok && (s[0] == smooth || c.Strict):
				p.add(fmt.Sprintf("no %s tensor", s[0]), g.Name)
			}
		}
		if _, ok := has(g.Name, smoothOrig); !ok && c.SmoothOrig == Required {
			if _, ok := has(g.Name, oSmoothOrig); !ok {
				p.add(fmt.Sprintf("no %s tensor", smoothOrig), g.Name)
			}
		}
		ws, _ := has(g.Name, nunchaku.SuffixWScales)
		nvfp4 := ws.DType == "F8_E4M3"
		_, wt := has(g.Name, nunchaku.SuffixWTScale)
		_, wc := has(g.Name, nunchaku.SuffixWCScales)
		switch {
		case !nvfp4 && c.Strict && (wt || wc):
			p.add("wtscale/wcscales on an INT4 layer (the INT4 module has neither: unexpected key)", g.Name)
		case nvfp4 && wt && c.WTScale == Forbidden:
			p.add("an NVFP4 wtscale the loader does not accept (unexpected key; it keeps wtscale = 1)", g.Name)
		case nvfp4 && !wc && c.WCScales == Required:
			p.add("no wcscales on an NVFP4 layer (the loader requires it)", g.Name)
		}
		sm, _ := has(g.Name, smooth)
		if dtype == "" && sm.DType != "" {
			dtype = sm.DType
		}
		if d, ok := f.Tensors[g.Name+"."+down]; ok && len(d.Shape) == 2 {
			r := int(d.Shape[1])
			ranks[g.Name] = r
			if u, ok := f.Tensors[g.Name+"."+up]; ok && len(u.Shape) == 2 && int(u.Shape[1]) != r {
				p.add("lora_down and lora_up ranks differ", g.Name)
			}
			switch c.Rank {
			case RankPerLayer:
				if r%16 != 0 {
					p.add("low-rank branch rank not a multiple of 16", g.Name)
				}
			case RankUniform:
				if r != qc.Rank {
					p.add(fmt.Sprintf("rank differs from quantization_config rank %d (every module is built with that rank; strict load)", qc.Rank),
						fmt.Sprintf("%s (%d)", g.Name, r))
				}
			}
		}
		if !c.Padded && len(qw.Shape) == 2 {
			if lm := meta[g.Name]; lm != nil && (int(qw.Shape[0]) != lm.N || 2*int(qw.Shape[1]) != lm.K) {
				p.add("shapes padded to 128 where the loader builds the exact widths", g.Name)
			}
		}
	}
	// Pairs the engine fuses (C++ MLPs) must share a rank.
	if c.Rank == RankPerLayer {
		for _, g := range groups {
			if b, prefix, rel, ok := fam.Block(g.Name); ok {
				if s, ok := b.Spec(rel); ok && s.Pair != "" && rel < s.Pair {
					r1, ok1 := ranks[g.Name]
					r2, ok2 := ranks[prefix+s.Pair]
					if ok1 && ok2 && r1 != r2 {
						p.add("fused MLP pair with different ranks (fc1's epilogue sizes fc2's low-rank input)", g.Name)
					}
				}
			}
		}
	}
	// Every module of every block present.
	for prefix, rels := range seen {
		b := blockOf[prefix]
		if b.ByPresence {
			continue // checkPresence
		}
		if b.Skippable && qc.SkipRefiners {
			p.add("quantized refiner layers while quantization_config.skip_refiners is true", prefix)
			continue
		}
		for _, s := range b.Layers {
			if !rels[s.Name] {
				p.add("missing quantized modules", prefix+s.Name)
			}
		}
	}
	for _, b := range fam.Blocks {
		if !b.Skippable || qc.SkipRefiners {
			continue
		}
		for _, n := range all {
			if loc := b.Re.FindStringIndex(n); loc != nil && loc[0] == 0 && seen[n[:loc[1]]] == nil &&
				strings.HasSuffix(n, ".weight") {
				p.add("16-bit refiner blocks while quantization_config.skip_refiners is not set (the loader quantizes refiners)", n[:loc[1]])
				break
			}
		}
	}
	checkPresence(c, fam, all, seen, f, &p)
	if c.Fixed != nil {
		checkFixed(c, fam, all, groups, f, &p)
	}
	// dtype.
	if c.DType != DTypeCast && dtype != "" {
		if c.DType == DTypeBF16 && dtype != "BF16" {
			p.add(fmt.Sprintf("16-bit dtype %s (the loader's W4A16 modules are always BF16)", dtype), "")
		}
		for _, n := range all {
			t := f.Tensors[n]
			if (t.DType == "BF16" || t.DType == "F16" || t.DType == "F32" || t.DType == "F64") && t.DType != dtype &&
				!strings.HasSuffix(n, "."+nunchaku.SuffixWTScale) && !strings.HasPrefix(n, reservedPrefix) {
				p.add(fmt.Sprintf("tensors not in the file's dtype %s (patch_scale_key asserts one dtype)", dtype), n)
			}
		}
	}
	for _, n := range all {
		if strings.HasPrefix(n, reservedPrefix) && c.Reserved != "" && !strings.HasPrefix(c.Reserved, "ignored") {
			p.add("svdq_lora.* tensors: "+c.Reserved, n)
			break
		}
	}
	return p.list()
}

// w4linearSuffixes are the tensors of nunchaku's T5 W4Linear module.
var w4linearSuffixes = map[string]bool{nunchaku.SuffixQWeight: true, nunchaku.SuffixScales: true,
	nunchaku.SuffixScaledZeros: true, nunchaku.SuffixBias: true}

// checkW4Linear checks a W4Linear layer (text_encoders/linear.py
// W4Linear.__init__ with group_size 128) and returns its 16-bit dtype.
func checkW4Linear(c *Contract, f *File, g nunchaku.Group, qw TensorInfo, p *problems) string {
	sc, _ := f.Tensors[g.Name+"."+nunchaku.SuffixScales]
	sz, _ := f.Tensors[g.Name+"."+nunchaku.SuffixScaledZeros]
	if qw.DType != "I16" {
		p.add("W4Linear qweight not I16 (the module's buffer is torch.int16 [out/4, in])", g.Name)
	}
	if (sc.DType != "BF16" && sc.DType != "F16") || sz.DType != sc.DType {
		p.add("W4Linear scales/scaled_zeros not of one 16-bit dtype", g.Name)
	}
	if len(qw.Shape) == 2 && len(sc.Shape) == 2 && len(sz.Shape) == 2 {
		n, k := 4*qw.Shape[0], qw.Shape[1]
		rows, err := nunchaku.W4LinearScaleRows(int(k), nunchaku.W4LinearGroup)
		switch {
		case err != nil || n%8 != 0:
			p.add("W4Linear in-features not a multiple of 128 or out-features not of 8 (W4Linear(group_size=128) asserts both)", g.Name)
		case sc.Shape[0] != int64(rows) || sc.Shape[1] != n || sz.Shape[0] != sc.Shape[0] || sz.Shape[1] != n:
			p.add("W4Linear scales/scaled_zeros not [ceil_num_groups(in, 128), out] (in/128 rounded up to a multiple of 8 rows)", g.Name)
		}
	} else {
		p.add("W4Linear qweight/scales/scaled_zeros not 2-D", g.Name)
	}
	if c.Strict {
		for _, s := range g.Suffixes {
			if !w4linearSuffixes[s] {
				p.add("tensors W4Linear does not have (unexpected keys in the strict load)", g.Name+"."+s)
			}
		}
		if _, ok := f.Tensors[g.Name+".weight"]; ok {
			p.add("a 16-bit weight next to the qweight (W4Linear registers no weight: unexpected key)", g.Name)
		}
	}
	return sc.DType
}

// checkPresence checks, for a strict loader, the 16-bit tensors it needs:
// the family's and every block's Required tensors, and in a ByPresence
// block a 16-bit weight for every module the file does not quantize.
func checkPresence(c *Contract, fam *Family, all []string, seen map[string]map[string]bool, f *File, p *problems) {
	if !c.Strict {
		return
	}
	for _, n := range fam.Required {
		if _, ok := f.Tensors[n]; !ok {
			p.add("missing 16-bit tensors the strict load needs", n)
		}
	}
	for _, b := range fam.Blocks {
		var prefixes []string
		got := map[string]bool{}
		for _, n := range all {
			if loc := b.Re.FindStringIndex(n); loc != nil && loc[0] == 0 && !got[n[:loc[1]]] {
				got[n[:loc[1]]] = true
				prefixes = append(prefixes, n[:loc[1]])
			}
		}
		sort.Slice(prefixes, func(i, j int) bool {
			return blockIndex(prefixes[i]) < blockIndex(prefixes[j]) || blockIndex(prefixes[i]) == blockIndex(prefixes[j]) && prefixes[i] < prefixes[j]
		})
		for _, prefix := range prefixes {
			for _, r := range b.Required {
				if _, ok := f.Tensors[prefix+r]; !ok {
					p.add("missing 16-bit tensors the strict load needs", prefix+r)
				}
			}
			if !b.ByPresence {
				continue
			}
			for _, s := range b.Layers {
				if seen[prefix][s.Name] {
					continue
				}
				if _, ok := f.Tensors[prefix+s.Name+".weight"]; !ok {
					p.add("linears with neither a qweight nor a 16-bit weight", prefix+s.Name)
				}
			}
		}
	}
}

// reservedPrefix is the prefix of fuse-lora's former provenance tensors.
const reservedPrefix = "svdq_lora."

// checkFixed compares the file with an architecture the engine hard-codes.
func checkFixed(c *Contract, fam *Family, all []string, groups []nunchaku.Group, f *File, p *problems) {
	for _, b := range fam.Blocks {
		want, ok := c.Fixed.Blocks[b.Stem]
		if !ok {
			continue
		}
		idx := map[int]bool{}
		for _, n := range all {
			if loc := b.Re.FindStringIndex(n); loc != nil && loc[0] == 0 {
				idx[blockIndex(n[:loc[1]])] = true
			}
		}
		if len(idx) != want {
			p.add(fmt.Sprintf("%d %s, the engine hard-codes %d", len(idx), b.Stem, want), "")
		}
	}
	for _, g := range groups {
		if g.Kind != w4a4 {
			continue
		}
		if qw, ok := f.Tensors[g.Name+"."+nunchaku.SuffixQWeight]; ok && len(qw.Shape) == 2 {
			if k := 2 * int(qw.Shape[1]); (strings.HasSuffix(g.Name, ".qkv_proj") || strings.HasSuffix(g.Name, ".to_qkv")) && k != c.Fixed.Width {
				p.add(fmt.Sprintf("width %d, the engine hard-codes %d", k, c.Fixed.Width), "")
				return
			}
		}
	}
}

// svdqMeta returns the svdq metadata entries of the file by layer name
// (empty when the file has none or it does not parse).
func svdqMeta(f *File) map[string]*nunchaku.LayerMeta {
	out := map[string]*nunchaku.LayerMeta{}
	s, ok := f.Metadata[nunchaku.MetaSVDQ]
	if !ok {
		return out
	}
	m, err := nunchaku.ParseMeta(s)
	if err != nil {
		return out
	}
	for i := range m.Layers {
		out[m.Layers[i].Name] = &m.Layers[i]
	}
	return out
}

package preset

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// dims are the widths of one block, read from the file.
type dims struct {
	D    int // hidden width
	H    int // MLP hidden width
	Dpad int // SANA: D rounded up to 128 (nunchaku's dim_pad)
	Hpad int // SANA: H rounded up to 64 (nunchaku's intermediate size)
}

// rangeFn computes a row or column range from a block's widths.
type rangeFn func(d dims) Range

// span returns a rangeFn for [lo·unit, hi·unit) where unit picks a width.
func span(lo, hi int, unit func(d dims) int) rangeFn {
	return func(d dims) Range { u := unit(d); return Range{lo * u, hi * u} }
}

func unitD(d dims) int { return d.D }

// part is one logical linear of a layer declaration: the module it comes
// from in the diffusers naming and, for families with an original naming
// (BFL FLUX), in that naming.
type part struct {
	module  string  // diffusers module, relative to the block
	srcRows rangeFn // rows of module's weight taken (nil: all)
	orig    string  // original-naming module ("" when none)
	origRow rangeFn // rows of orig's weight taken (nil: all)
	cols    rangeFn // input columns taken, same in both namings (nil: all)
	slot    func(d dims) int
	// noBias marks a module the family's real checkpoints have without a
	// bias, in a family whose other linears all have one (requireBiases).
	noBias bool
}

// layerDecl declares one output layer of a block.
type layerDecl struct {
	name    string // output name relative to the block
	role    Role
	parts   []part
	shifted bool
	chunks  int
	group   string // smoothing group relative to the block ("" none)
	conv    bool
	reason  string
}

// keepDecl declares a 16-bit tensor of a block whose output name differs
// from its file name or whose reason is specific.
type keepDecl struct {
	module string // diffusers tensor name relative to the block
	orig   string // original-naming tensor name ("" when none)
	out    string // output name relative to the block ("" : module)
	reason string
}

// planner accumulates a plan while checking every source against the table.
type planner struct {
	t      Table
	plan   *Plan
	naming string
	prefix string
	used   map[string]bool
	errs   []string
	// biased: every linear of the family's blocks has a bias in every
	// real checkpoint (parts marked noBias aside), so a missing one is an
	// error (see requireBiases).
	biased bool
}

func newPlanner(t Table, family, modelClass, naming, prefix string) *planner {
	return &planner{
		t:      t,
		plan:   &Plan{Family: family, ModelClass: modelClass, Naming: naming, Prefix: prefix, modules: map[string][]Target{}},
		naming: naming,
		prefix: prefix,
		used:   map[string]bool{},
	}
}

// shape returns the shape of the file tensor called prefix+local.
func (p *planner) shape(local string) ([]int64, bool) { return p.t.Shape(p.prefix + local) }

func (p *planner) has(local string) bool { _, ok := p.shape(local); return ok }

// requireBiases declares that every real checkpoint of the family has a
// bias on each linear of its blocks (each part not marked noBias): a
// checkpoint without one is truncated or hand-edited, and quantizing it
// would silently drop the bias, so a missing bias is an error naming the
// tensor, unless opt.AllowMissingBias.
func (p *planner) requireBiases(opt Options) { p.biased = !opt.AllowMissingBias }

// missingBias records the error of a required bias b (local name) that the
// file lacks.
func (p *planner) missingBias(b string) {
	p.errorf("tensor %s: missing: every %s checkpoint has this bias (a truncated or edited file?); "+
		"--allow-missing-bias quantizes without it", p.prefix+b, p.plan.Family)
}

// err returns the errors so far as one error, or nil.
func (p *planner) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	return fmt.Errorf("preset %s: %s", p.plan.Family, strings.Join(p.errs, "; "))
}

func (p *planner) errorf(format string, args ...any) {
	p.errs = append(p.errs, fmt.Sprintf(format, args...))
}

// matrix returns the [rows, cols] view of a linear or 1×1 conv weight.
func (p *planner) matrix(local string, conv bool) (rows, cols int, ok bool) {
	s, found := p.shape(local)
	if !found {
		p.errorf("tensor %s: missing", p.prefix+local)
		return 0, 0, false
	}
	switch {
	case len(s) == 2 && !conv:
		return int(s[0]), int(s[1]), true
	case len(s) == 4 && conv && s[2] == 1 && s[3] == 1:
		return int(s[0]), int(s[1]), true
	}
	want := "[N, K]"
	if conv {
		want = "[N, K, 1, 1]"
	}
	p.errorf("tensor %s: shape %v, want %s", p.prefix+local, s, want)
	return 0, 0, false
}

// block expands decls for one block. fileBlock, diffBlock, origBlock and
// outBlock are the block's prefixes in the file's naming, the diffusers
// naming, the original naming ("" when the family has none) and the output.
// useOrig selects the original names for the file tensors.
func (p *planner) block(decls []layerDecl, d dims, diffBlock, origBlock, outBlock string, useOrig bool) {
	for _, dl := range decls {
		l := Layer{Name: outBlock + dl.name, Role: dl.role, Shifted: dl.shifted, Chunks: dl.chunks,
			Conv1x1: dl.conv, Reason: dl.reason}
		if dl.group != "" {
			l.SmoothGroup = outBlock + dl.group
		}
		var diffCalib, origCalib []string
		cursor, bad := 0, false
		for i, pt := range dl.parts {
			module, rowsFn := diffBlock+pt.module, pt.srcRows
			if useOrig {
				module, rowsFn = origBlock+pt.orig, pt.origRow
			}
			rows, cols, ok := p.matrix(module+".weight", dl.conv)
			if !ok {
				bad = true
				continue
			}
			src := Source{Tensor: p.prefix + module + ".weight", Module: module, SrcRows: All(rows), Cols: All(cols)}
			if rowsFn != nil {
				src.SrcRows = rowsFn(d)
			}
			if pt.cols != nil {
				src.Cols = pt.cols(d)
			}
			if src.SrcRows.Lo < 0 || src.SrcRows.Hi > rows || src.SrcRows.Len() <= 0 ||
				src.Cols.Lo < 0 || src.Cols.Hi > cols || src.Cols.Len() <= 0 {
				p.errorf("tensor %s: shape [%d %d] too small for rows %v cols %v of layer %s",
					src.Tensor, rows, cols, src.SrcRows, src.Cols, l.Name)
				bad = true
				continue
			}
			if i == 0 {
				l.K, l.CalibCols = src.Cols.Len(), src.Cols
			} else if src.Cols.Len() != l.K {
				p.errorf("tensor %s: %d input columns, layer %s has %d", src.Tensor, src.Cols.Len(), l.Name, l.K)
				bad = true
				continue
			}
			slot := src.SrcRows.Len()
			if pt.slot != nil {
				slot = pt.slot(d)
			}
			src.Rows = Range{cursor, cursor + src.SrcRows.Len()}
			cursor += slot
			switch b := module + ".bias"; {
			case src.Cols.Hi != cols: // the bias goes with the last columns of a column-split tensor
			case p.has(b):
				if bs, _ := p.shape(b); len(bs) != 1 || int(bs[0]) != rows {
					p.errorf("tensor %s: shape %v, want [%d]", p.prefix+b, bs, rows)
				}
				src.Bias = p.prefix + b
			case p.biased && !pt.noBias:
				p.missingBias(b)
				bad = true
				continue
			}
			p.used[src.Tensor] = true
			if src.Bias != "" {
				p.used[src.Bias] = true
			}
			own, taken := src.Rows, src.Cols
			// Merge with the previous source when it continues it.
			if n := len(l.Sources); n > 0 {
				prev := &l.Sources[n-1]
				if prev.Tensor == src.Tensor && prev.Bias == src.Bias && prev.Cols == src.Cols &&
					prev.SrcRows.Hi == src.SrcRows.Lo && prev.Rows.Hi == src.Rows.Lo {
					prev.SrcRows.Hi, prev.Rows.Hi = src.SrcRows.Hi, src.Rows.Hi
				} else {
					l.Sources = append(l.Sources, src)
				}
			} else {
				l.Sources = append(l.Sources, src)
			}
			// Resolve aliases in both namings, whatever the file uses.
			p.alias(diffBlock+pt.module, Target{Layer: l.Name, SrcRows: partSrc(pt.srcRows, d, own), Rows: own, Cols: taken})
			diffCalib = appendNew(diffCalib, diffBlock+pt.module)
			if origBlock != "" && pt.orig != "" {
				p.alias(origBlock+pt.orig, Target{Layer: l.Name, SrcRows: partSrc(pt.origRow, d, own), Rows: own, Cols: taken})
				origCalib = appendNew(origCalib, origBlock+pt.orig)
			}
		}
		if bad {
			continue
		}
		l.N = cursor
		l.Calib = append(diffCalib, origCalib...)
		p.plan.Layers = append(p.plan.Layers, l)
	}
}

// partSrc is the rows of a module's weight a part takes: fn(d), or the
// whole module when fn is nil (as many rows as land in the layer).
func partSrc(fn rangeFn, d dims, own Range) Range {
	if fn == nil {
		return Range{0, own.Len()}
	}
	return fn(d)
}

// keepBlock keeps the declared 16-bit tensors of one block (weight names
// relative to the block, e.g. "attn.norm_q.weight").
func (p *planner) keepBlock(decls []keepDecl, diffBlock, origBlock, outBlock string, useOrig bool) {
	for _, k := range decls {
		file := diffBlock + k.module
		if useOrig {
			if k.orig == "" {
				continue
			}
			file = origBlock + k.orig
		}
		if !p.has(file) {
			continue // optional (e.g. biases some checkpoints lack)
		}
		out := k.out
		if out == "" {
			out = k.module
		}
		p.keep(outBlock+out, file, k.reason)
		p.aliasKept(outBlock+out, diffBlock+k.module, file)
		if origBlock != "" && k.orig != "" {
			p.aliasKept(outBlock+out, origBlock+k.orig, file)
		}
	}
}

// keep records the file tensor local (prefix not included) as the 16-bit
// output tensor out, unchanged.
func (p *planner) keep(out, local, reason string) {
	s, _ := p.shape(local)
	p.plan.Kept = append(p.plan.Kept, Kept{Name: out, Tensor: p.prefix + local, Reason: reason, Shape: s})
	p.used[p.prefix+local] = true
}

// keepPieces records a transformed 16-bit tensor; Pieces name local tensors.
func (p *planner) keepPieces(k Kept) {
	for i := range k.Pieces {
		k.Pieces[i].Tensor = p.prefix + k.Pieces[i].Tensor
		p.used[k.Pieces[i].Tensor] = true
	}
	k.Tensor = k.Pieces[0].Tensor
	p.plan.Kept = append(p.plan.Kept, k)
}

// aliasKept registers module names (tensor names with their last component
// dropped) of a kept weight for Resolve.
func (p *planner) aliasKept(out, name, file string) {
	mod, ok := strings.CutSuffix(name, ".weight")
	if !ok {
		return
	}
	s, _ := p.shape(file)
	if len(s) != 2 {
		return
	}
	p.alias(mod, Target{Layer: out, Kept: true, SrcRows: All(int(s[0])), Rows: All(int(s[0])), Cols: All(int(s[1]))})
}

// alias adds a Resolve target for module.
func (p *planner) alias(module string, t Target) {
	p.plan.modules[module] = append(p.plan.modules[module], t)
}

// finish classifies the tensors no layer used: outside(local) gives the
// output name and reason of a 16-bit tensor (ok false: unknown). Unknown
// tensors fail the plan unless opt.PassUnknown.
func (p *planner) finish(opt Options, outside func(local string) (out, reason string, ok bool)) (*Plan, error) {
	var unknown []string
	for _, name := range p.t.Names() {
		if p.used[name] {
			continue
		}
		local, ok := strings.CutPrefix(name, p.prefix)
		if !ok {
			unknown = append(unknown, name)
			continue
		}
		if out, reason, ok := outside(local); ok {
			p.keep(out, local, reason)
			p.aliasKept(out, local, local)
			continue
		}
		if opt.PassUnknown {
			p.keep(local, local, "unrecognised: passed through")
			continue
		}
		unknown = append(unknown, name)
	}
	if len(unknown) > 0 {
		more := ""
		if len(unknown) > 10 {
			more = fmt.Sprintf(" and %d more", len(unknown)-10)
			unknown = unknown[:10]
		}
		p.errorf("%d tensors the %s preset does not know: %s%s (use --pass-unknown to keep them 16-bit)",
			len(unknown), p.plan.Family, strings.Join(unknown, ", "), more)
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	sort.Slice(p.plan.Kept, func(i, j int) bool { return p.plan.Kept[i].Name < p.plan.Kept[j].Name })
	for i := 1; i < len(p.plan.Kept); i++ {
		if p.plan.Kept[i].Name == p.plan.Kept[i-1].Name {
			return nil, fmt.Errorf("preset %s: two tensors map to output %s (%s and %s)", p.plan.Family,
				p.plan.Kept[i].Name, p.plan.Kept[i-1].Tensor, p.plan.Kept[i].Tensor)
		}
	}
	p.plan.indexModules()
	return p.plan, nil
}

func appendNew(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// blockIndices returns the sorted distinct integers i for which some table
// name (prefix stripped) starts with stem + "<i>.".
func blockIndices(t Table, prefix, stem string) []int {
	seen := map[int]bool{}
	for _, name := range t.Names() {
		rest, ok := strings.CutPrefix(name, prefix+stem)
		if !ok {
			continue
		}
		dot := strings.IndexByte(rest, '.')
		if dot <= 0 {
			continue
		}
		n := 0
		valid := true
		for _, c := range rest[:dot] {
			if c < '0' || c > '9' {
				valid = false
				break
			}
			n = n*10 + int(c-'0')
		}
		if valid {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Ints(out)
	return out
}

// dim returns axis a of local's shape, or 0 and an error entry.
func (p *planner) dim(local string, a int) int {
	s, ok := p.shape(local)
	if !ok || a >= len(s) {
		p.errorf("tensor %s: missing or shape %v has no axis %d", p.prefix+local, s, a)
		return 0
	}
	return int(s[a])
}

// rule classifies a tensor left over after the layer and keep tables: the
// first rule whose pattern matches the name (prefix stripped) keeps it
// 16-bit with its reason.
type rule struct {
	re     *regexp.Regexp
	reason string
}

// rules compiles (pattern, reason) pairs.
func rules(pairs ...string) []rule {
	out := make([]rule, len(pairs)/2)
	for i := range out {
		out[i] = rule{regexp.MustCompile(pairs[2*i]), pairs[2*i+1]}
	}
	return out
}

// classify turns rules into finish's outside function (output name = file
// name without prefix).
func classify(rs []rule) func(string) (string, string, bool) {
	return func(local string) (string, string, bool) {
		for _, r := range rs {
			if r.re.MatchString(local) {
				return local, r.reason, true
			}
		}
		return "", "", false
	}
}

// stack plans every block stem+"<i>." of the file with decls and kept
// (diffusers naming, output names relative to the same block prefix) and
// returns the block count. dimsOf reads one block's widths.
func (p *planner) stack(stem string, decls []layerDecl, kept []keepDecl, dimsOf func(block string) dims) int {
	idx := blockIndices(p.t, p.prefix, stem)
	if err := contiguous(idx, p.prefix+stem); err != nil {
		p.errorf("%v", err)
		return 0
	}
	for _, i := range idx {
		b := fmt.Sprintf("%s%d.", stem, i)
		p.block(decls, dimsOf(b), b, "", b, false)
		p.keepBlock(kept, b, "", b, false)
	}
	return len(idx)
}

// ceilTo rounds n up to a multiple of m.
func ceilTo(n, m int) int { return (n + m - 1) / m * m }

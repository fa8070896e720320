package lora

import (
	"fmt"
	"slices"
	"strings"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
)

// maxSkeletonBlocks bounds the skeleton presetAliases asks for.
const maxSkeletonBlocks = 1024

// presetAliases adds the module names of the family's other naming(s) —
// for FLUX, the BFL names of a diffusers-sourced file and the reverse —
// using formats/preset's declared tables, and returns how (or why not).
//
// A preset plans a source checkpoint from its names and shapes, which a
// quantized file does not list directly. They are rebuilt from the file:
//
//  1. The family's skeleton at real widths with enough blocks is planned
//     in each naming; the naming whose layer sources are the metadata's
//     source tensors (up to a common file prefix) is the file's.
//  2. The source table is rebuilt in that naming: layer source tensors get
//     the shapes their metadata ranges span (their bias the same rows);
//     each kept tensor of the skeleton plan whose output the file holds
//     gets the file's shape under its source name (unchanged or
//     half-swapped outputs; other transforms only when the skeleton's
//     output shape is the file's); tensors of blocks the file lacks drop
//     out.
//  3. The family plans that table. Its layers must reproduce the metadata
//     exactly (names, shapes, sources, ranges); then every module it
//     resolves that the file's own names do not is added, each target
//     checked against the file's layers and kept tensors.
//
// Any failure leaves the index with the file's own names (the returned
// string says why); nothing is guessed.
func (ix *Index) presetAliases(meta *nunchaku.Meta, infos []safetensors.Info) string {
	fam, err := preset.Lookup(meta.Family)
	if err != nil || meta.Family == "generic" {
		return ""
	}
	shapes := make(map[string][]int64, len(infos))
	for _, in := range infos {
		shapes[in.Name] = in.Shape
	}
	blocks := 1
	for _, l := range meta.Layers {
		blocks = max(blocks, maxNumber(l.Name)+1)
	}
	blocks = min(blocks, maxSkeletonBlocks)
	why := "no naming of the " + meta.Family + " preset matches the file's source tensors"
	for _, naming := range []string{"diffusers", "bfl", "comfyui"} {
		specs, err := preset.Skeleton(meta.Family, preset.SkeletonOptions{Scale: 1, Blocks: blocks, Naming: naming})
		if err != nil {
			continue
		}
		skel, err := fam.Plan(preset.SkeletonTable(specs), preset.Options{})
		if err != nil {
			continue
		}
		prefix, ok := filePrefix(skel, meta)
		if !ok {
			continue
		}
		table, err := rebuildTable(skel, meta, shapes, specs, prefix)
		if err != nil {
			return fmt.Sprintf("%s preset not used: %v", meta.Family, err)
		}
		plan, err := fam.Plan(table, preset.Options{})
		if err != nil {
			return fmt.Sprintf("%s preset not used: %v", meta.Family, err)
		}
		if err := samePlan(plan, meta); err != nil {
			return fmt.Sprintf("%s preset not used: %v", meta.Family, err)
		}
		added := 0
		for _, m := range plan.Modules() {
			if _, known := ix.modules[m]; known {
				continue
			}
			ts, _ := plan.Resolve(m)
			if out, ok := ix.convert(ts); ok {
				ix.modules[m] = out
				added++
			}
		}
		return fmt.Sprintf("%s preset (%s naming): %d more module names", meta.Family, plan.Naming, added)
	}
	return why
}

// maxNumber returns the largest run of digits in s as a number (-1 if none).
func maxNumber(s string) int {
	best, cur, in := -1, 0, false
	for i := 0; i <= len(s); i++ {
		if i < len(s) && s[i] >= '0' && s[i] <= '9' {
			if cur < 1<<20 {
				cur = cur*10 + int(s[i]-'0')
			}
			in = true
			continue
		}
		if in {
			best = max(best, cur)
		}
		cur, in = 0, false
	}
	return best
}

// filePrefix finds the prefix p such that every source tensor of every
// skeleton layer the file has is p + the skeleton's tensor name.
func filePrefix(skel *preset.Plan, meta *nunchaku.Meta) (string, bool) {
	prefix, seen := "", false
	for _, l := range skel.Layers {
		lm, ok := meta.Layer(l.Name)
		if !ok {
			continue
		}
		if len(lm.Sources) != len(l.Sources) {
			// Other widths split the layer otherwise (SANA's GLU halves:
			// two sources where H is not a multiple of 64, one where it
			// is); the other layers' names still tell the prefix.
			continue
		}
		for i, s := range l.Sources {
			p, ok := strings.CutSuffix(lm.Sources[i].Tensor, s.Tensor)
			if !ok || (seen && p != prefix) {
				return "", false
			}
			prefix, seen = p, true
		}
	}
	return prefix, seen
}

// rebuildTable reconstructs the source checkpoint's table (see
// presetAliases, step 2).
func rebuildTable(skel *preset.Plan, meta *nunchaku.Meta, shapes map[string][]int64, specs []preset.TensorSpec, prefix string) (preset.MapTable, error) {
	skelShape := make(map[string][]int64, len(specs))
	for _, s := range specs {
		skelShape[s.Name] = s.Shape
	}
	t := preset.MapTable{}
	rows := map[string]int{}
	cols := map[string]int{}
	for _, lm := range meta.Layers {
		for _, s := range lm.Sources {
			rows[s.Tensor] = max(rows[s.Tensor], s.SrcRows[1])
			cols[s.Tensor] = max(cols[s.Tensor], s.SrcCols[1])
		}
	}
	for name, r := range rows {
		shape := []int64{int64(r), int64(cols[name])}
		if len(skelShape[strings.TrimPrefix(name, prefix)]) == 4 {
			shape = append(shape, 1, 1)
		}
		t[name] = shape
	}
	for _, lm := range meta.Layers {
		for _, s := range lm.Sources {
			if s.Bias != "" {
				t[s.Bias] = []int64{int64(rows[s.Tensor])}
			}
		}
	}
	for _, k := range skel.Kept {
		fileShape, ok := shapes[k.Name]
		if !ok {
			continue // a block the file does not have, or not kept in it
		}
		switch k.Transform {
		case "", "swap-halves":
			t[prefix+k.Tensor] = fileShape
		default:
			if slices.Equal(fileShape, k.Shape) {
				for _, p := range k.Pieces {
					t[prefix+p.Tensor] = skelShape[p.Tensor]
				}
				continue
			}
			// Another width of the family (SANA 600M, a scaled model): a
			// piece's source tensor has, at every width, the rows of a
			// layer source of the same module that had its rows in the
			// skeleton (SANA: ff.conv_depth those of ff.conv_inverted,
			// attn2.to_k/to_v those of attn2.to_q); its other dimensions
			// are the file's for a row stack ("concat"), the skeleton's
			// otherwise (a kernel size). Step 3 checks the result.
			for _, p := range k.Pieces {
				ss := skelShape[p.Tensor]
				r, ok := rowsLike(skel, rows, skelShape, prefix, p.Tensor)
				if !ok || len(ss) == 0 || k.Transform == "concat" && len(fileShape) != len(ss) {
					return nil, fmt.Errorf("kept %s (%s) is %v in the file, %v at the preset's widths", k.Name, k.Transform, fileShape, k.Shape)
				}
				rest := ss[1:]
				if k.Transform == "concat" {
					rest = fileShape[1:]
				}
				t[prefix+p.Tensor] = append([]int64{int64(r)}, rest...)
			}
		}
	}
	return t, nil
}

// rowsLike finds, for the skeleton tensor name, a layer source tensor of
// the skeleton in the same parent module with as many rows, and returns
// that tensor's rows in the file (rows, from the metadata).
func rowsLike(skel *preset.Plan, rows map[string]int, skelShape map[string][]int64, prefix, name string) (int, bool) {
	parent := func(n string) string {
		n = strings.TrimSuffix(strings.TrimSuffix(n, ".weight"), ".bias")
		if i := strings.LastIndex(n, "."); i >= 0 {
			return n[:i]
		}
		return ""
	}
	want, ss := parent(name), skelShape[name]
	if len(ss) == 0 {
		return 0, false
	}
	for _, l := range skel.Layers {
		for _, s := range l.Sources {
			if parent(s.Tensor) != want || len(skelShape[s.Tensor]) == 0 || skelShape[s.Tensor][0] != ss[0] {
				continue
			}
			if r, ok := rows[prefix+s.Tensor]; ok {
				return r, true
			}
		}
	}
	return 0, false
}

// samePlan checks that a plan's layers are exactly the metadata's.
func samePlan(p *preset.Plan, meta *nunchaku.Meta) error {
	if len(p.Layers) != len(meta.Layers) {
		return fmt.Errorf("the rebuilt plan has %d layers, the file %d", len(p.Layers), len(meta.Layers))
	}
	for _, l := range p.Layers {
		lm, ok := meta.Layer(l.Name)
		if !ok {
			return fmt.Errorf("the rebuilt plan has layer %s, the file does not", l.Name)
		}
		if l.N != lm.N || l.K != lm.K || l.Role.String() != lm.Kind || len(l.Sources) != len(lm.Sources) {
			return fmt.Errorf("layer %s: rebuilt %v [%d %d] with %d sources, file %s [%d %d] with %d",
				l.Name, l.Role, l.N, l.K, len(l.Sources), lm.Kind, lm.N, lm.K, len(lm.Sources))
		}
		for i, s := range l.Sources {
			m := lm.Sources[i]
			if s.Tensor != m.Tensor || s.Bias != m.Bias || s.Rows.Lo != m.Rows[0] || s.Rows.Hi != m.Rows[1] ||
				s.SrcRows.Lo != m.SrcRows[0] || s.SrcRows.Hi != m.SrcRows[1] || s.Cols.Lo != m.SrcCols[0] || s.Cols.Hi != m.SrcCols[1] {
				return fmt.Errorf("layer %s: source %d differs (rebuilt %s rows %v, file %s rows %v)", l.Name, i, s.Tensor, s.Rows, m.Tensor, m.Rows)
			}
		}
	}
	return nil
}

// convert turns preset targets into index targets, checking each against
// the file's layers; ok false when one does not fit.
func (ix *Index) convert(ts []preset.Target) ([]Target, bool) {
	out := make([]Target, 0, len(ts))
	for _, t := range ts {
		li, ok := ix.Layers[t.Layer]
		if !ok || (li.Kind == Kept) != t.Kept || t.Cols.Len() != li.K || t.Rows.Lo < 0 || t.Rows.Hi > li.N ||
			t.Rows.Len() != t.SrcRows.Len() || t.Rows.Len() <= 0 {
			return nil, false
		}
		out = append(out, Target{Layer: t.Layer, SrcRows: t.SrcRows, Cols: t.Cols, Rows: t.Rows})
	}
	return out, len(out) > 0
}

package calib

import (
	"errors"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"slices"
	"strings"

	"github.com/svdq/svdq/formats/safetensors"
)

// MergeFiles merges the calibration files at paths (in that order) into a
// new file at out, layer by layer: a layer present in one file is copied, a
// layer present in several is folded with Merge, left to right, the merge
// seed of each layer derived from (seed, layer name). Samples are written in
// the dtype all inputs share for that layer, else F32, so no value is
// rounded. A layer whose K differs between two files is an error naming both
// files. Only one layer's statistics are held in memory at a time. out must
// not be one of the inputs. On error nothing is written.
func MergeFiles(paths []string, out string, seed uint64) error {
	if len(paths) == 0 {
		return fmt.Errorf("%s: no calibration files to merge", out)
	}
	outAbs, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	files := make([]*File, 0, len(paths))
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, p := range paths {
		if a, err := filepath.Abs(p); err == nil && a == outAbs {
			return fmt.Errorf("%s: the output is also an input", out)
		}
		f, err := Open(p)
		if err != nil {
			return err
		}
		files = append(files, f)
	}

	// Plan every layer from the headers and counts: which files hold it,
	// its merged S (the same fold Merge performs), its dtype.
	type plan struct {
		name  string
		from  []*File
		k, s  int
		count bool
		dtype safetensors.DType
	}
	var names []string
	seen := map[string]bool{}
	for _, f := range files {
		for _, n := range f.names {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	plans := make([]plan, 0, len(names))
	var specs []safetensors.Spec
	for _, n := range names {
		pl := plan{name: n, k: -1}
		var tokens int64
		for _, f := range files {
			li, ok := f.layers[n]
			if !ok {
				continue
			}
			c := f.tokens(n)
			if tokens > MaxCount-c { // each is ≤ MaxCount: no overflow here
				var before []string
				for _, b := range pl.from {
					before = append(before, b.path)
				}
				return &Error{File: f.path, Tensor: n + SuffixCount, Msg: fmt.Sprintf(
					"count %d: added to the %d tokens of %s, layer %q would count more than %d tokens (MaxCount)",
					c, tokens, strings.Join(before, ", "), n, int64(MaxCount))}
			}
			if pl.k < 0 {
				pl.k, pl.s, pl.dtype, tokens = li.k, li.s, li.samples, c
			} else {
				if li.k != pl.k {
					return fmt.Errorf("layer %q: K = %d in %s but %d in %s", n, pl.k, pl.from[0].path, li.k, f.path)
				}
				pl.s = mergedSize(pl.s, tokens, li.s, c)
				tokens += c
				if li.samples != pl.dtype {
					pl.dtype = safetensors.F32
				}
			}
			pl.count = pl.count || li.hasCount
			pl.from = append(pl.from, f)
		}
		if len(pl.from) > 1 {
			pl.count = true // the sum is known
		}
		plans = append(plans, pl)
		specs = append(specs, layerSpecs(n, pl.k, pl.s, pl.count, pl.dtype)...)
	}

	w, err := safetensors.Create(out, specs, map[string]string{"format": Format})
	if err != nil {
		return err
	}
	defer w.Abort()
	for _, pl := range plans {
		var acc *Stats
		for i, f := range pl.from {
			st, err := f.Layer(pl.name)
			if err != nil {
				return err
			}
			if acc == nil {
				acc = st
				continue
			}
			acc = Merge(acc, st, layerSeed(seed, pl.name, i))
		}
		if acc.S != pl.s {
			return errors.New("calib: internal error: merged sample count differs from the plan")
		}
		if !pl.count {
			acc.Count = 0
		}
		for _, t := range layerTensors(pl.name, acc, pl.dtype) {
			if err := w.Write(t.Name, t.Data); err != nil {
				return err
			}
		}
	}
	return w.Close()
}

// layerSeed derives the merge seed of one layer's i-th fold.
func layerSeed(seed uint64, name string, i int) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d\x00%s", i, name)
	return seed ^ h.Sum64()
}

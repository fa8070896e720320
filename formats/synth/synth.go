package synth

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"sync"

	"github.com/svdq/svdq/formats/preset"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant"
)

// Options choose what Generate writes.
type Options struct {
	Arch   string  // preset family name, e.g. "flux-dev"
	Out    string  // output directory (created if missing)
	Scale  float64 // width scale, 0 < Scale ≤ 1 (0 means 1)
	Blocks int     // block count (0: the family's real count)
	Naming string  // "diffusers" (default), "bfl" or "comfyui" (FLUX only)
	// Pattern is the outlier pattern (package doc): "aligned" (default,
	// also ""), "massive" or "weights".
	Pattern string
	Seed    uint64
	// Shards > 1 splits the model into that many files with an index.
	Shards int
	// Samples is the number of calibration rows per module (0: 256; at
	// most 4096, the svdq-calib/1 limit).
	Samples int
	// Workers generating tensors (0: runtime.NumCPU()).
	Workers int
	// Progress, when set, is called after each tensor with the bytes done
	// and the total (model and calibration files together), from any
	// worker but never concurrently.
	Progress func(done, total int64)
}

// File names inside Options.Out.
const (
	ModelFile = "model.safetensors"
	IndexFile = "model.safetensors.index.json"
	CalibFile = "calib.safetensors"
	// CalibFormat is the metadata "format" value of calibration files.
	CalibFormat = "svdq-calib/1"
)

// maxSamples is the most sample rows svdq-calib/1 allows.
const maxSamples = 4096

// segment is the run of columns of a weight (or module input) that one
// layer input feeds.
type segment struct {
	cols    preset.Range
	key     string // input name: the layer's smoothing group or name
	shifted bool
}

// module is one file module that feeds quantized layers.
type module struct {
	name   string // calibration key (file naming, no prefix)
	tensor string // its weight tensor
	k      int
	segs   []segment
}

// job generates and writes one tensor (or one module's statistics).
type job struct {
	bytes int64
	do    func() error
}

// Generate writes the synthetic checkpoint and its calibration file (see
// the package doc). Errors name the file; on error no partial file is left
// in place of a complete one.
func Generate(opt Options) error {
	if opt.Scale == 0 {
		opt.Scale = 1
	}
	if opt.Samples == 0 {
		opt.Samples = 256
	}
	if opt.Workers <= 0 {
		opt.Workers = runtime.NumCPU()
	}
	if opt.Samples < 1 || opt.Samples > maxSamples || opt.Shards < 0 {
		return fmt.Errorf("synth: samples %d, shards %d: want 1..%d, ≥ 0", opt.Samples, opt.Shards, maxSamples)
	}
	pat, dist, err := lookupPattern(opt.Pattern)
	if err != nil {
		return err
	}
	fam, err := preset.Lookup(opt.Arch)
	if err != nil {
		return err
	}
	specs, err := preset.Skeleton(opt.Arch, preset.SkeletonOptions{Scale: opt.Scale, Blocks: opt.Blocks, Naming: opt.Naming})
	if err != nil {
		return err
	}
	plan, err := fam.Plan(preset.SkeletonTable(specs), preset.Options{})
	if err != nil {
		return fmt.Errorf("synth: skeleton of %s does not plan: %w", opt.Arch, err)
	}
	segs, mods, profiles := layout(plan, opt.Seed, dist)
	if err := os.MkdirAll(opt.Out, 0o755); err != nil {
		return err
	}

	// Model file(s).
	groups := shard(specs, opt.Shards)
	meta := map[string]string{"format": "pt", "svdq_synth": fmt.Sprintf("arch=%s scale=%g blocks=%d naming=%s seed=%d",
		opt.Arch, opt.Scale, opt.Blocks, opt.Naming, opt.Seed) + patternTag(pat)}
	var writers []*safetensors.Writer
	abort := func() {
		for _, w := range writers {
			w.Abort()
		}
	}
	var jobs []job
	weightMap := map[string]string{}
	for i, g := range groups {
		file := ModelFile
		if len(groups) > 1 {
			file = fmt.Sprintf("model-%05d-of-%05d.safetensors", i+1, len(groups))
		}
		ss := make([]safetensors.Spec, len(g))
		for j, s := range g {
			ss[j] = safetensors.Spec{Name: s.Name, DType: safetensors.BF16, Shape: s.Shape}
		}
		w, err := safetensors.Create(filepath.Join(opt.Out, file), ss, meta)
		if err != nil {
			abort()
			return err
		}
		writers = append(writers, w)
		for _, s := range g {
			weightMap[s.Name] = file
			jobs = append(jobs, weightJob(w, s, segs[s.Name], profiles, opt.Seed, dist))
		}
	}

	// Calibration file.
	cjobs, cw, err := calibJobs(filepath.Join(opt.Out, CalibFile), mods, profiles, opt, pat, dist)
	if err != nil {
		abort()
		return err
	}
	writers = append(writers, cw)
	jobs = append(jobs, cjobs...)

	if err := run(jobs, opt); err != nil {
		abort()
		return err
	}
	for _, w := range writers {
		if err := w.Close(); err != nil {
			abort()
			return err
		}
	}
	if len(groups) > 1 {
		return writeIndex(filepath.Join(opt.Out, IndexFile), specs, weightMap)
	}
	return nil
}

// patternTag is the metadata suffix naming a pattern other than Aligned
// (empty for Aligned, so its files keep their bytes).
func patternTag(p Pattern) string {
	if p == Aligned {
		return ""
	}
	return " pattern=" + string(p)
}

// layout derives, from the plan, the input segments of every source
// weight, the modules that need calibration and the profile of each input.
func layout(plan *preset.Plan, seed uint64, dist distribution) (map[string][]segment, []*module, map[string]*profile) {
	segs := map[string][]segment{}
	byName := map[string]*module{}
	profiles := map[string]*profile{}
	for _, l := range plan.Layers {
		key := l.SmoothGroup
		if key == "" {
			key = l.Name
		}
		if profiles[key] == nil {
			profiles[key] = dist.profile(seed, key, l.K)
		}
		sg := segment{cols: l.CalibCols, key: key, shifted: l.Shifted}
		for _, s := range l.Sources {
			sg.cols = s.Cols
			segs[s.Tensor] = appendSeg(segs[s.Tensor], sg)
			m := byName[s.Module]
			if m == nil {
				m = &module{name: s.Module, tensor: s.Tensor}
				byName[s.Module] = m
			}
			m.segs = appendSeg(m.segs, sg)
		}
	}
	mods := make([]*module, 0, len(byName))
	for _, m := range byName {
		for _, s := range m.segs {
			m.k = max(m.k, s.cols.Hi)
		}
		mods = append(mods, m)
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].name < mods[j].name })
	for _, list := range segs {
		sort.Slice(list, func(i, j int) bool { return list[i].cols.Lo < list[j].cols.Lo })
	}
	return segs, mods, profiles
}

func appendSeg(list []segment, s segment) []segment {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}

// weightJob fills one model tensor: a quantized layer's weight with the
// column scales of its inputs, anything else plain.
func weightJob(w *safetensors.Writer, s preset.TensorSpec, segs []segment, profiles map[string]*profile, seed uint64, dist distribution) job {
	elems := int64(1)
	for _, d := range s.Shape {
		elems *= d
	}
	return job{bytes: 2 * elems, do: func() error {
		b := make([]byte, 2*elems)
		if len(segs) == 0 {
			fillPlain(b, seed, s.Name, s.Shape)
		} else {
			n, k := int(s.Shape[0]), int(elems/s.Shape[0])
			col := make([]float32, k)
			for i := range col {
				col[i] = 1
			}
			for _, sg := range segs {
				copy(col[sg.cols.Lo:sg.cols.Hi], profiles[sg.key].wcol)
			}
			dist.weight(b, seed, s.Name, n, col)
		}
		return w.Write(s.Name, b)
	}}
}

// calibJobs creates the calibration file and the jobs filling it.
func calibJobs(path string, mods []*module, profiles map[string]*profile, opt Options, pat Pattern, dist distribution) ([]job, *safetensors.Writer, error) {
	S := opt.Samples
	var specs []safetensors.Spec
	for _, m := range mods {
		specs = append(specs,
			safetensors.Spec{Name: m.name + ".input_absmax", DType: safetensors.F32, Shape: []int64{int64(m.k)}},
			safetensors.Spec{Name: m.name + ".input_samples", DType: safetensors.BF16, Shape: []int64{int64(S), int64(m.k)}},
			safetensors.Spec{Name: m.name + ".input_count", DType: safetensors.I64, Shape: []int64{1}})
	}
	meta := map[string]string{"format": CalibFormat, "samples": strconv.Itoa(S),
		"source": fmt.Sprintf("svdq synth arch=%s seed=%d", opt.Arch, opt.Seed) + patternTag(pat)}
	w, err := safetensors.Create(path, specs, meta)
	if err != nil {
		return nil, nil, err
	}
	t := dist.tokens(opt.Seed, S)
	tmax := 0.0
	for _, v := range t {
		tmax = max(tmax, v)
	}
	var jobs []job
	for _, m := range mods {
		jobs = append(jobs, job{bytes: int64((2*S + 4) * m.k), do: func() error {
			samples, absmax := calibModule(m, profiles, opt.Seed, t, tmax, dist)
			var count [8]byte
			binary.LittleEndian.PutUint64(count[:], tokenCount)
			return errors.Join(w.Write(m.name+".input_samples", samples), w.Write(m.name+".input_absmax", absmax),
				w.Write(m.name+".input_count", count[:]))
		}})
	}
	return jobs, w, nil
}

// calibModule returns the bf16 samples [S, k] and the F32 absmax [k] of one
// module's input.
func calibModule(m *module, profiles map[string]*profile, seed uint64, t []float64, tmax float64, dist distribution) (samples, absmax []byte) {
	S := len(t)
	samples = make([]byte, 2*S*m.k)
	amax := make([]float32, m.k)
	for _, sg := range m.segs {
		p := profiles[sg.key]
		row := make([]float32, sg.cols.Len())
		for s := range S {
			dist.sample(row, seed, sg.key, s, t[s], p, sg.shifted)
			for j, v := range row {
				v = quant.RoundBF16(v)
				c := sg.cols.Lo + j
				binary.LittleEndian.PutUint16(samples[2*(s*m.k+c):], quant.F32ToBF16(v))
				amax[c] = max(amax[c], float32(math.Abs(float64(v))))
			}
		}
		for j := range p.act {
			amax[sg.cols.Lo+j] = max(amax[sg.cols.Lo+j], dist.bound(p, j, tmax))
		}
	}
	absmax = make([]byte, 4*m.k)
	for i, v := range amax {
		binary.LittleEndian.PutUint32(absmax[4*i:], math.Float32bits(v))
	}
	return samples, absmax
}

// run executes the jobs on opt.Workers goroutines, largest first.
func run(jobs []job, opt Options) error {
	sort.SliceStable(jobs, func(i, j int) bool { return jobs[i].bytes > jobs[j].bytes })
	var total int64
	for _, j := range jobs {
		total += j.bytes
	}
	ch := make(chan job)
	var (
		mu       sync.Mutex
		done     int64
		firstErr error
		wg       sync.WaitGroup
	)
	for range opt.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				err := j.do()
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				done += j.bytes
				if opt.Progress != nil {
					opt.Progress(done, total)
				}
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop {
			break
		}
		ch <- j
	}
	close(ch)
	wg.Wait()
	return firstErr
}

// shard splits specs (sorted by name) into n groups of about equal bytes.
func shard(specs []preset.TensorSpec, n int) [][]preset.TensorSpec {
	if n <= 1 {
		return [][]preset.TensorSpec{specs}
	}
	n = min(n, len(specs))
	var total int64
	size := func(s preset.TensorSpec) int64 {
		e := int64(2)
		for _, d := range s.Shape {
			e *= d
		}
		return e
	}
	for _, s := range specs {
		total += size(s)
	}
	groups := make([][]preset.TensorSpec, 0, n)
	var acc int64
	start := 0
	for i, s := range specs {
		acc += size(s)
		left := len(specs) - i - 1
		need := n - len(groups) - 1 // groups still to open after this one
		if need > 0 && (acc*int64(n) >= total*int64(len(groups)+1) || left == need) {
			groups = append(groups, specs[start:i+1])
			start = i + 1
		}
	}
	return append(groups, specs[start:])
}

// writeIndex writes the Hugging Face sharded index.
func writeIndex(path string, specs []preset.TensorSpec, weightMap map[string]string) error {
	var total int64
	for _, s := range specs {
		e := int64(2)
		for _, d := range s.Shape {
			e *= d
		}
		total += e
	}
	b, err := json.MarshalIndent(map[string]any{
		"metadata":   map[string]any{"total_size": total},
		"weight_map": weightMap,
	}, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return errors.Join(err, os.Remove(tmp))
	}
	return nil
}

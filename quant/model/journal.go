package model

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/svdq/svdq/formats/nunchaku"
	"github.com/svdq/svdq/formats/safetensors"
)

// The journal: every finished layer of a quantization is written at once,
// atomically (safetensors.WriteFile: a temporary file renamed into
// place), as a record (record.go) in the work directory beside the
// output, WorkDir(out). A later run with the same inputs and options
// finds them and reuses every unit all of whose layers have a valid
// record; a record from other inputs, other options, another svdq
// version, or damaged, is ignored (and overwritten when its layer is
// recomputed). Reused layers go through the same final writer (assembly)
// as computed ones, so a resumed run writes the bytes of an uninterrupted
// one. The work directory is removed once the output is in place.

// WorkDir is the work directory of output path out: OUT.svdq-work.
func WorkDir(out string) string { return out + ".svdq-work" }

// journal is an open work directory.
type journal struct {
	dir  string
	in   Inputs
	opts []safetensors.Option
	lock *os.File // lockDir's; closed by close or remove
}

// lockName is the lock file in a work directory.
const lockName = "lock"

// recordName is the record file of plan layer i.
func recordName(i int) string { return fmt.Sprintf("layer-%05d.safetensors", i) }

// openJournal creates (or finds) the work directory dir. With mustExist
// (--resume) a missing directory is an error.
func openJournal(dir string, in Inputs, mustExist bool, opts []safetensors.Option) (*journal, error) {
	st, err := os.Stat(dir)
	switch {
	case err == nil && !st.IsDir():
		return nil, fmt.Errorf("work directory %s: exists and is not a directory", dir)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("work directory %s: %v", dir, err)
	case err != nil && mustExist:
		return nil, fmt.Errorf("--resume: no work directory %s: nothing to resume (an interrupted run leaves its finished layers there)", dir)
	case err != nil:
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("work directory %s: %v", dir, err)
		}
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	return &journal{dir: dir, in: in, opts: opts, lock: lock}, nil
}

// close releases the work directory, leaving its records.
func (j *journal) close() {
	if j.lock != nil {
		j.lock.Close()
		j.lock = nil
	}
}

// path is the record file of plan layer i.
func (j *journal) path(i int) string { return filepath.Join(j.dir, recordName(i)) }

// write records a finished layer.
func (j *journal) write(lr layerRecord, ts []nunchaku.Tensor) error {
	meta, err := recordMeta(&recordHeader{Inputs: j.in, Layers: []layerRecord{lr}})
	if err != nil {
		return err
	}
	return safetensors.WriteFile(j.path(lr.Index), recordTensors(lr.Meta.Name, ts), meta, j.opts...)
}

// open opens the record of plan layer i and checks that it is the
// record of that layer, computed from the journal's inputs;
// os.ErrNotExist when there is none.
func (j *journal) open(i int) (*recordFile, *layerRecord, error) {
	p := j.path(i)
	if _, err := os.Stat(p); err != nil {
		return nil, nil, err
	}
	rf, err := openRecord(p)
	if err != nil {
		return nil, nil, err
	}
	fail := func(format string, a ...any) (*recordFile, *layerRecord, error) {
		rf.Close()
		return nil, nil, fmt.Errorf("%s: "+format, append([]any{p}, a...)...)
	}
	if d := j.in.differs(rf.hdr.Inputs); d != "" {
		return fail("from %s", d)
	}
	if len(rf.hdr.Layers) != 1 || rf.hdr.Layers[0].Index != i {
		return fail("not the record of layer %d", i)
	}
	return rf, &rf.hdr.Layers[0], nil
}

// reuse loads the records of every layer of unit u and their checked
// tensors (tss[i] those of rfs[i]): all valid, or an error saying why not
// (errors.Is os.ErrNotExist: some layer has none). The caller closes the
// files; the tensors' bytes are valid until then.
func (j *journal) reuse(ol *outline, u []int) ([]*recordFile, [][]nunchaku.Tensor, error) {
	var rfs []*recordFile
	var tss [][]nunchaku.Tensor
	for _, i := range u {
		rf, lr, err := j.open(i)
		var ts []nunchaku.Tensor
		if err == nil {
			if ts, err = rf.layerTensors(lr); err == nil {
				err = ol.check(lr, ts)
			}
			if err != nil {
				rf.Close()
				err = fmt.Errorf("%s: %v", rf.path, err)
			}
		}
		if err != nil {
			for _, f := range rfs {
				f.Close()
			}
			return nil, nil, err
		}
		rfs = append(rfs, rf)
		tss = append(tss, ts)
	}
	return rfs, tss, nil
}

// remove deletes the records and the temporary files of interrupted
// record writes, then the directory if nothing else is in it.
func (j *journal) remove() error {
	ents, err := os.ReadDir(j.dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		if target, _, ok := safetensors.ParseTemp(name); ok {
			name = target
		}
		if strings.HasPrefix(name, "layer-") && strings.HasSuffix(name, ".safetensors") {
			if err := os.Remove(filepath.Join(j.dir, e.Name())); err != nil {
				return err
			}
		}
	}
	os.Remove(filepath.Join(j.dir, lockName)) // before the unlock: a run waiting on it starts afresh
	j.close()
	if err := os.Remove(j.dir); err != nil {
		return fmt.Errorf("work directory %s: not removed: %v", j.dir, err)
	}
	return nil
}

// inputs computes the Inputs of the job: digests of the checkpoint's
// tensors, of the calibration file and of the options.
func (q *quantizer) inputs() (Inputs, error) {
	md, err := checkpointDigest(q.r, nil)
	if err != nil {
		return Inputs{}, fmt.Errorf("%s: %v", q.opt.Model, err)
	}
	cf, err := safetensors.Open(q.opt.Calib)
	if err != nil {
		return Inputs{}, err
	}
	defer cf.Close()
	cd, err := checkpointDigest(cf, cf.Metadata())
	if err != nil {
		return Inputs{}, fmt.Errorf("%s: %v", q.opt.Calib, err)
	}
	return Inputs{Model: md, Calib: cd, Options: optionsDigest(q.plan, q.opt), Version: q.opt.Tool + buildRevision()}, nil
}

// buildRevision is " (REVISION)" of the VCS revision the binary was built
// from (" (REVISION+dirty)" with uncommitted changes), or "" when the
// build did not record one (go test, go run): records of two builds of
// one version number are not mixed.
func buildRevision() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	rev, dirty := "", ""
	for _, s := range bi.Settings {
		switch {
		case s.Key == "vcs.revision":
			rev = s.Value
		case s.Key == "vcs.modified" && s.Value == "true":
			dirty = "+dirty"
		}
	}
	if rev == "" {
		return ""
	}
	return " (" + rev + dirty + ")"
}

// checkpointDigest is the hex SHA-256 over the tensors of r, by name,
// each as "name NUL dtype NUL shape NUL sha256(bytes)", then the metadata
// meta (nil: none) as JSON. The tensors are hashed on every CPU; their
// mapped pages are released once read.
func checkpointDigest(r safetensors.Reader, meta map[string]string) (string, error) {
	names := slices.Sorted(slices.Values(r.Names()))
	sums := make([][32]byte, len(names))
	errs := make([]error, len(names))
	next := make(chan int)
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				b, err := r.Bytes(names[i])
				if err != nil {
					errs[i] = err
					continue
				}
				sums[i] = sha256.Sum256(b)
				releaseTensors(r, names[i])
			}
		}()
	}
	for i := range names {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	h := sha256.New()
	var line []byte
	for i, n := range names {
		info, _ := r.Info(n)
		line = appendTensorLine(line[:0], n, string(info.DType), info.Shape)
		line = append(line, sums[i][:]...)
		h.Write(line)
	}
	if meta != nil {
		b, _ := json.Marshal(meta) // keys sorted
		h.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// optionsDigest is the hex SHA-256 of every option that changes the
// output, as the plan resolved them (not --workers, which does not, nor
// paths).
func optionsDigest(p *Plan, opt QuantizeOptions) string {
	var inc, exc []string
	for _, r := range opt.Include {
		inc = append(inc, r.String())
	}
	for _, r := range opt.Exclude {
		exc = append(exc, r.String())
	}
	target := opt.Target
	if target == "" {
		target = "all"
	}
	v := struct {
		Family, Precision, DType, Target string
		Rank                             int
		Include, Exclude                 []string
		PassUnknown, AllowMissingBias    bool
		Search, Iters, MaxRows           int
		GPTQ                             bool
	}{p.Family, p.Precision.String(), p.DType.String(), target, p.Rank, inc, exc,
		opt.PassUnknown, opt.AllowMissingBias, int(opt.Search), opt.Iters, opt.MaxRows, opt.GPTQ}
	b, _ := json.Marshal(v)
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// job writes the output of a planned and checked quantization: every unit
// of the plan (or of opt.Shard) is reused from the journal or computed
// and journaled; then the output (or the part) is written and the work
// directory removed.
func (q *quantizer) job(start time.Time) (*QuantizeReport, error) {
	p, opt := q.plan, q.opt
	ol, err := p.outline(opt.Tool, q.refs)
	if err != nil {
		return nil, err
	}
	var wopts []safetensors.Option
	if opt.wrapWrites != nil {
		wopts = append(wopts, safetensors.WrapWrites(opt.wrapWrites))
	}
	if p.InBytes >= 1e9 {
		q.note("hashing the inputs (%s of tensors), to resume from or merge with work of the same inputs only", gib(p.InBytes))
	}
	t0 := time.Now()
	in, err := q.inputs()
	if err != nil {
		return nil, err
	}
	if s := time.Since(t0).Seconds(); s >= 1 {
		q.note("inputs hashed in %.1f s", s)
	}
	mine := make([]int, len(ol.Units))
	for i := range mine {
		mine[i] = i
	}
	if opt.Shard.N > 0 {
		mine = assignShards(ol.Costs, opt.Shard.N)[opt.Shard.I]
		q.total = 0
		for _, ui := range mine {
			q.total += len(ol.Units[ui])
		}
	}
	j, err := openJournal(WorkDir(opt.Out), in, opt.Resume, wopts)
	if err != nil {
		return nil, err
	}
	defer j.close()
	q.journal = j
	if opt.Shard.N == 0 {
		a, err := ol.create(opt.Out, wopts...)
		if err != nil {
			return nil, err
		}
		defer a.abort()
		for _, k := range p.Kept {
			if err := writeKept(a.w, q.r, opt.Model, &k); err != nil {
				return nil, err
			}
			releaseTensors(q.r, keptTensors(&k.Kept)...)
		}
		q.a = a
	}

	units := p.units()
	reused, ignored := 0, []string{}
	for _, ui := range mine {
		u := units[ui]
		rfs, tss, err := j.reuse(ol, u.layers)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				ignored = append(ignored, err.Error())
			}
			q.todo = append(q.todo, u)
			continue
		}
		err = q.putReused(rfs, tss)
		for _, rf := range rfs {
			rf.Close()
		}
		if err != nil {
			return nil, err
		}
		reused += len(u.layers)
	}
	what := ""
	if opt.Shard.N > 0 {
		what = fmt.Sprintf(" of shard %s", opt.Shard)
	}
	switch {
	case reused > 0:
		q.note("resume: reused %d of %d layers%s from %s; quantizing the other %d", reused, q.total, what, j.dir, q.total-reused)
	case opt.Resume:
		q.note("resume: no finished layer%s in %s matches these inputs and options; quantizing all %d", what, j.dir, q.total)
	}
	for _, s := range ignored {
		q.note("resume: ignored %s", s)
	}
	if err := q.run(); err != nil {
		return nil, err
	}
	rep := &QuantizeReport{Plan: p, Reused: reused, Input: p.InputSummary()}
	own := make([]bool, len(p.Layers))
	for _, ui := range mine {
		for _, li := range units[ui].layers {
			own[li] = true
		}
	}
	for li, ok := range own {
		if ok {
			rep.Layers = append(rep.Layers, q.reports[li])
		}
	}
	if opt.Shard.N > 0 {
		sh := opt.Shard
		rep.Shard = &sh
		if err := q.writePart(ol, mine, wopts); err != nil {
			return nil, err
		}
	} else if err := q.a.close(); err != nil {
		return nil, err
	}
	if err := j.remove(); err != nil {
		q.note("%v", err)
	}
	rep.Totals = p.totals(rep.Layers)
	if opt.Shard.N > 0 {
		rep.Totals.Kept = 0
		if opt.Shard.I == 0 {
			rep.Totals.Kept = len(p.Kept)
		}
	}
	if fi, err := os.Stat(opt.Out); err == nil {
		rep.Totals.OutBytes = fi.Size()
	}
	rep.Totals.Seconds = time.Since(start).Seconds()
	return rep, nil
}

// putReused writes reused records, with their checked tensors tss
// (journal.reuse), to the output (when there is one: not for a shard,
// whose part is assembled from the journal at the end) and reports their
// layers.
func (q *quantizer) putReused(rfs []*recordFile, tss [][]nunchaku.Tensor) error {
	for i, rf := range rfs {
		lr := rf.hdr.Layers[0]
		if q.a != nil {
			if err := q.a.putLayer(&lr, tss[i]); err != nil {
				return err
			}
		}
		lr.Report.Reused = true
		q.record(lr.Index, lr.Meta, lr.Report)
	}
	return nil
}

// note passes a message to opt.Notes, if set.
func (q *quantizer) note(format string, a ...any) {
	if q.opt.Notes != nil {
		q.opt.Notes(fmt.Sprintf(format, a...))
	}
}

// gib formats a byte count in GB (decimal, as disks are sold).
func gib(n int64) string { return fmt.Sprintf("%.1f GB", float64(n)/1e9) }

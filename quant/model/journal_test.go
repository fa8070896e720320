package model

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/formats/synth"
)

// shardModels are small synthetic checkpoints of several families,
// outlier patterns, tensor namings and file layouts, for the resume,
// shard and merge tests.
var shardModels = struct {
	once  sync.Once
	cases []shardModel
	err   error
}{}

type shardModel struct {
	name, model, calib string
}

func shardModelCases(t *testing.T) []shardModel {
	t.Helper()
	shardModels.once.Do(func() {
		m, c := tinyModel(t)
		shardModels.cases = append(shardModels.cases, shardModel{"flux-dev diffusers aligned", m, c})
		for _, o := range []synth.Options{
			{Arch: "qwen-image", Scale: 0.04, Blocks: 2, Samples: 32, Seed: 5, Pattern: "massive", Shards: 2},
			{Arch: "flux-dev", Scale: 0.04, Blocks: 1, Samples: 32, Seed: 6, Pattern: "weights", Naming: "bfl"},
		} {
			dir, err := osMkdirTemp()
			if err == nil {
				o.Out = dir
				err = synth.Generate(o)
			}
			if err != nil {
				shardModels.err = err
				return
			}
			model := filepath.Join(dir, synth.ModelFile)
			if o.Shards > 1 {
				model = filepath.Join(dir, synth.IndexFile)
			}
			name := o.Arch + " " + o.Naming + " " + o.Pattern
			shardModels.cases = append(shardModels.cases, shardModel{name, model, filepath.Join(dir, synth.CalibFile)})
		}
	})
	if shardModels.err != nil {
		t.Fatal(shardModels.err)
	}
	return shardModels.cases
}

// quantizeBytes runs Quantize and returns the output's bytes; the work
// directory must be gone.
func quantizeBytes(t *testing.T, opt QuantizeOptions) ([]byte, *QuantizeReport) {
	t.Helper()
	rep, err := Quantize(opt)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(opt.Out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(WorkDir(opt.Out)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("work directory %s left after success (%v)", WorkDir(opt.Out), err)
	}
	return b, rep
}

// noOutput fails unless path does not exist and dir has no temporary
// file of the safetensors writer.
func noOutput(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists after a failure (%v)", path, err)
	}
	for _, dir := range []string{filepath.Dir(path), WorkDir(path)} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if _, _, ok := safetensors.ParseTemp(e.Name()); ok {
				t.Errorf("temporary file %s left in %s", e.Name(), dir)
			}
		}
	}
}

// fullDisk fails, with ENOSPC, every write to a file whose destination
// full(path) selects.
type fullDisk struct {
	mu    sync.Mutex
	full  func(path string, off int64) bool
	fails int
}

func (d *fullDisk) wrap(path string, f io.WriterAt) io.WriterAt {
	return writerAtFunc(func(b []byte, off int64) (int, error) {
		d.mu.Lock()
		full := d.full(path, off)
		if full {
			d.fails++
		}
		d.mu.Unlock()
		if full {
			return 0, &os.PathError{Op: "write", Path: path, Err: syscall.ENOSPC}
		}
		return f.WriteAt(b, off)
	})
}

type writerAtFunc func([]byte, int64) (int, error)

func (f writerAtFunc) WriteAt(b []byte, off int64) (int, error) { return f(b, off) }

// afterRecords returns a full() that lets n journal records be written
// and fails every later one.
func afterRecords(n int) func(string, int64) bool {
	seen := map[string]bool{}
	return func(path string, _ int64) bool {
		if !strings.HasSuffix(filepath.Dir(path), ".svdq-work") {
			return false
		}
		if !seen[path] && len(seen) < n {
			seen[path] = true
		}
		return !seen[path]
	}
}

// TestResumeAfterFullDisk: a run whose disk fills up (ENOSPC) after k
// journal records, or while writing the output, fails with that error and
// leaves no output and no temporary file; the next run reuses the
// finished layers, says so, and writes the bytes of an uninterrupted run.
func TestResumeAfterFullDisk(t *testing.T) {
	model, cal := tinyModel(t)
	dir := t.TempDir()
	opt := fastOptions(model, cal, filepath.Join(dir, "want.safetensors"))
	opt.Workers = 1
	want, _ := quantizeBytes(t, opt)

	for _, tc := range []struct {
		name       string
		full       func(string, int64) bool
		minReused  int
		allReused  bool
		wantRecord int // records present after the failure (-1: any)
	}{
		{"after 7 records", afterRecords(7), 1, false, 7},
		{"after 1 record", afterRecords(1), 0, false, 1},
		{"starting the output", func(p string, _ int64) bool { return filepath.Base(p) == "q.safetensors" }, 0, false, 0},
		// The header is the output's last write (Close).
		{"finishing the output", func(p string, off int64) bool { return filepath.Base(p) == "q.safetensors" && off == 0 }, 20, true, 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opt.Out = filepath.Join(t.TempDir(), "q.safetensors")
			d := &fullDisk{full: tc.full}
			opt.wrapWrites = d.wrap
			_, err := Quantize(opt)
			if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") {
				t.Fatalf("err = %v, want ENOSPC", err)
			}
			noOutput(t, opt.Out)
			recs, _ := filepath.Glob(filepath.Join(WorkDir(opt.Out), "layer-*.safetensors"))
			if len(recs) != tc.wantRecord {
				t.Errorf("%d records after the failure, want %d", len(recs), tc.wantRecord)
			}
			opt.wrapWrites = nil
			var notes []string
			opt.Notes = func(s string) { notes = append(notes, s) }
			opt.Resume = true
			got, rep := quantizeBytes(t, opt)
			opt.Resume, opt.Notes = false, nil
			if !bytes.Equal(got, want) {
				t.Fatalf("resumed run wrote other bytes than an uninterrupted one")
			}
			if rep.Reused < tc.minReused || rep.Reused > len(recs) || tc.allReused && rep.Reused != 20 {
				t.Errorf("reused %d layers with %d records", rep.Reused, len(recs))
			}
			n := 0
			for _, l := range rep.Layers {
				if l.Reused {
					n++
				}
			}
			if n != rep.Reused {
				t.Errorf("%d layers marked reused, report says %d", n, rep.Reused)
			}
			if rep.Reused > 0 && !strings.Contains(strings.Join(notes, "\n"), "resume: reused") {
				t.Errorf("no resume message in %q", notes)
			}
		})
	}
}

// interrupted leaves the journal of a run of opt that failed while
// writing its output (every layer recorded).
func interrupted(t *testing.T, opt QuantizeOptions) {
	t.Helper()
	d := &fullDisk{full: func(p string, off int64) bool { return p == opt.Out && off == 0 }}
	opt.wrapWrites = d.wrap
	if _, err := Quantize(opt); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("err = %v, want ENOSPC", err)
	}
}

// TestResumeRejectsOtherWork: records of another model, another
// calibration file or other options, and a damaged record, are never
// reused: the run says why and writes the bytes of a fresh run.
func TestResumeRejectsOtherWork(t *testing.T) {
	cases := shardModelCases(t)
	m1, c1 := cases[0].model, cases[0].calib
	m2, c2 := cases[2].model, cases[2].calib // same family and shapes, other weights and rows
	dir := t.TempDir()
	base := fastOptions(m1, c1, filepath.Join(dir, "want.safetensors"))
	want, _ := quantizeBytes(t, base)
	other := base
	other.Model, other.Calib = m2, c2

	for _, tc := range []struct {
		name  string
		prior QuantizeOptions
		note  string
	}{
		{"another model", func() QuantizeOptions { o := base; o.Model = m2; return o }(), "another model"},
		{"another calibration file", func() QuantizeOptions { o := base; o.Calib = c2; return o }(), "another calibration file"},
		{"other options", func() QuantizeOptions { o := base; o.Rank = 8; return o }(), "other options"},
		{"another version", func() QuantizeOptions { o := base; o.Tool = "svdq 0.0.9"; return o }(), "another svdq version"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "q.safetensors")
			tc.prior.Out = out
			interrupted(t, tc.prior)
			opt := base
			opt.Out = out
			var notes []string
			opt.Notes = func(s string) { notes = append(notes, s) }
			got, rep := quantizeBytes(t, opt)
			if !bytes.Equal(got, want) {
				t.Fatal("output differs from a fresh run's")
			}
			if rep.Reused != 0 {
				t.Errorf("reused %d layers of %s", rep.Reused, tc.name)
			}
			if all := strings.Join(notes, "\n"); !strings.Contains(all, tc.note) {
				t.Errorf("notes do not say %q:\n%s", tc.note, all)
			}
		})
	}

	t.Run("damaged record", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "q.safetensors")
		opt := base
		opt.Out = out
		interrupted(t, opt)
		rec := filepath.Join(WorkDir(out), recordName(3))
		b, err := os.ReadFile(rec)
		if err != nil {
			t.Fatal(err)
		}
		b[len(b)-5] ^= 0x10 // a bit of the last tensor's data
		if err := os.WriteFile(rec, b, 0o644); err != nil {
			t.Fatal(err)
		}
		var notes []string
		opt.Notes = func(s string) { notes = append(notes, s) }
		got, rep := quantizeBytes(t, opt)
		if !bytes.Equal(got, want) {
			t.Fatal("output differs from a fresh run's")
		}
		if rep.Reused == 0 || rep.Reused == 20 {
			t.Errorf("reused %d of 20 layers, want all but the damaged one's unit", rep.Reused)
		}
		if all := strings.Join(notes, "\n"); !strings.Contains(all, "damaged") || !strings.Contains(all, recordName(3)) {
			t.Errorf("notes do not name the damaged record:\n%s", all)
		}
	})

	t.Run("--resume without a work directory", func(t *testing.T) {
		opt := base
		opt.Out = filepath.Join(t.TempDir(), "q.safetensors")
		opt.Resume = true
		_, err := Quantize(opt)
		if err == nil || !strings.Contains(err.Error(), "nothing to resume") {
			t.Fatalf("err = %v", err)
		}
		noOutput(t, opt.Out)
	})
}

// TestWorkDirInUse: a second run writing the same output while the first
// holds its work directory fails at once, naming it, and leaves the
// first's records alone.
func TestWorkDirInUse(t *testing.T) {
	model, cal := tinyModel(t)
	opt := fastOptions(model, cal, filepath.Join(t.TempDir(), "q.safetensors"))
	j, err := openJournal(WorkDir(opt.Out), Inputs{}, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Quantize(opt)
	if err == nil || !strings.Contains(err.Error(), "in use by another svdq run") || !strings.Contains(err.Error(), WorkDir(opt.Out)) {
		t.Fatalf("err = %v", err)
	}
	noOutput(t, opt.Out)
	j.close()
	quantizeBytes(t, opt) // free again
}

// TestShardResume: a shard whose disk fills up after 2 records resumes
// from them; its part, merged with the other shards', gives the bytes of
// one run (here of the sharded Qwen-Image checkpoint). Parts themselves
// are not byte-identical across runs: their headers carry each layer's
// report, with its wall time.
func TestShardResume(t *testing.T) {
	m := shardModelCases(t)[1]
	dir := t.TempDir()
	opt := fastOptions(m.model, m.calib, filepath.Join(dir, "want.safetensors"))
	opt.Workers = 1
	want, _ := quantizeBytes(t, opt)
	var parts []string
	for i := range 3 {
		o := opt
		o.Shard = Shard{I: i, N: 3}
		o.Out = filepath.Join(dir, fmt.Sprintf("part-%d.safetensors", i))
		parts = append(parts, o.Out)
		if i != 1 {
			quantizeBytes(t, o)
			continue
		}
		o.wrapWrites = (&fullDisk{full: afterRecords(2)}).wrap
		if _, err := Quantize(o); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("err = %v, want ENOSPC", err)
		}
		noOutput(t, o.Out)
		o.wrapWrites = nil
		if _, rep := quantizeBytes(t, o); rep.Reused == 0 {
			t.Error("nothing reused")
		}
	}
	out := filepath.Join(dir, "merged.safetensors")
	if _, err := Merge(MergeOptions{Parts: parts, Out: out}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, want) {
		t.Fatal("merge with a resumed shard differs from one run")
	}
}

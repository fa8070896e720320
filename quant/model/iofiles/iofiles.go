package iofiles

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/svdq/svdq/formats/safetensors"
)

// Set lists the files of one command. The zero value is empty and ready.
type Set struct {
	ins, outs []file
	// NoProbe skips the probe file (a dry run writes nothing, not even a
	// probe); every other check is made.
	NoProbe bool
}

// file is one declared path; what is how the user named it ("--out",
// "OUT", "the sidecar").
type file struct {
	what, path string
	mkdir      bool // output: its directory is created if missing
	stream     bool // output: written in place, so it may be a device or a pipe
}

// Input declares a file (or checkpoint: see safetensors.CheckpointFiles)
// the command reads. An empty path is ignored.
func (s *Set) Input(what, path string) {
	if path != "" {
		s.ins = append(s.ins, file{what: what, path: path})
	}
}

// Output declares a file the command writes; its directory must exist. An
// empty path is ignored.
func (s *Set) Output(what, path string) {
	if path != "" {
		s.outs = append(s.outs, file{what: what, path: path})
	}
}

// OutputStream declares a file the command writes in place (os.WriteFile,
// not a temporary file renamed onto it: a report): besides a regular file
// it may be an existing device or pipe (/dev/stdout), which is neither
// probed nor compared.
func (s *Set) OutputStream(what, path string) {
	if path != "" {
		s.outs = append(s.outs, file{what: what, path: path, stream: true})
	}
}

// OutputMkdir declares a file the command writes in a directory it creates
// when missing. An empty path is ignored.
func (s *Set) OutputMkdir(what, path string) {
	if path != "" {
		s.outs = append(s.outs, file{what: what, path: path, mkdir: true})
	}
}

// Check makes the checks of the package doc, outputs in declaration order,
// and returns the first failure.
func (s *Set) Check() error {
	var ins []input
	for _, in := range s.ins {
		ins = append(ins, expand(in)...)
	}
	keys := make([]string, len(s.outs))
	for i, o := range s.outs {
		st, err := os.Stat(o.path)
		switch {
		case err == nil && st.IsDir():
			return fmt.Errorf("%s %s: is a directory", o.what, o.path)
		case err == nil && o.stream && st.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe) != 0:
			keys[i] = canonical(o.path)
			continue // /dev/stdout, a pipe: nothing to compare or probe
		case err == nil && !st.Mode().IsRegular():
			return fmt.Errorf("%s %s: exists and is not a regular file (%v)", o.what, o.path, st.Mode().Type())
		case err == nil:
			for _, in := range ins {
				if os.SameFile(st, in.st) {
					return fmt.Errorf("%s %s is also an input (%s): writing it would overwrite the input", o.what, o.path, in.name())
				}
			}
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("%s %s: %v", o.what, o.path, err)
		}
		keys[i] = canonical(o.path)
		for j, p := range s.outs[:i] {
			if keys[j] == keys[i] || sameExisting(p.path, o.path) {
				return fmt.Errorf("%s %s and %s %s are the same file: the command would write it twice", p.what, p.path, o.what, o.path)
			}
		}
		if err := s.checkDir(o); err != nil {
			return err
		}
	}
	return nil
}

// checkDir checks the output's directory: it exists (or, for mkdir
// outputs, its nearest existing ancestor is a directory) and, unless
// NoProbe, a file can be created in it.
func (s *Set) checkDir(o file) error {
	dir := filepath.Dir(o.path)
	if o.mkdir {
		for {
			if _, err := os.Lstat(dir); err == nil || filepath.Dir(dir) == dir {
				break
			}
			dir = filepath.Dir(dir)
		}
	}
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		return fmt.Errorf("%s %s: directory %s does not exist", o.what, o.path, dir)
	}
	if s.NoProbe {
		return nil
	}
	if err := safetensors.Probe(filepath.Join(dir, filepath.Base(o.path))); err != nil {
		return fmt.Errorf("%s %s: cannot create a file in %s: %v", o.what, o.path, dir, unwrapPath(err))
	}
	return nil
}

// unwrapPath drops the *fs.PathError wrapper, whose path is the probe's
// random name.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// input is one file an input declaration reads.
type input struct {
	file
	part string // the file read, when it differs from file.path (a shard)
	st   os.FileInfo
}

func (in input) name() string {
	if in.part != "" && in.part != in.path {
		return fmt.Sprintf("%s %s, file %s", in.what, in.path, in.part)
	}
	return fmt.Sprintf("%s %s", in.what, in.path)
}

// expand returns the existing files an input reads: for a checkpoint, the
// files safetensors.CheckpointFiles names; else the path itself. Missing
// files are left to the command, whose open reports them.
func expand(f file) []input {
	parts, err := safetensors.CheckpointFiles(f.path)
	if err != nil {
		parts = []string{f.path}
	}
	var out []input
	for _, p := range parts {
		if st, err := os.Stat(p); err == nil {
			out = append(out, input{file: f, part: p, st: st})
		}
	}
	return out
}

// canonical is path made absolute with the symbolic links of its
// directory resolved (the file itself may not exist yet).
func canonical(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return filepath.Clean(path)
	}
	dir, base := filepath.Split(abs)
	if d, err := filepath.EvalSymlinks(dir); err == nil {
		dir = d
	}
	return filepath.Join(dir, base)
}

// sameExisting reports whether a and b both exist and are one file.
func sameExisting(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}

package iofiles

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheck runs Set.Check over the cases of the package doc.
func TestCheck(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "in.safetensors")
	if err := os.WriteFile(in, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	hard := filepath.Join(dir, "hard")
	sym := filepath.Join(dir, "sym")
	if err := os.Link(in, hard); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(in, sym); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	subLink := filepath.Join(dir, "sublink")
	if err := os.Symlink(sub, subLink); err != nil {
		t.Fatal(err)
	}
	new := filepath.Join(dir, "new.safetensors")
	type out struct {
		what, path string
		mkdir      bool
	}
	for _, c := range []struct {
		name string
		outs []out
		want string // "" : no error
	}{
		{"new file", []out{{"--out", new, false}}, ""},
		{"the input", []out{{"--out", in, false}}, "--out " + in + " is also an input (--model " + in + ")"},
		{"a hard link to it", []out{{"--out", hard, false}}, "is also an input"},
		{"a symbolic link to it", []out{{"--out", sym, false}}, "is also an input"},
		{"written twice", []out{{"--out", new, false}, {"--report", filepath.Join(sub, "..", "new.safetensors"), false}}, "are the same file"},
		{"written twice through a link", []out{{"--out", filepath.Join(sub, "r"), false}, {"--report", filepath.Join(subLink, "r"), false}},
			"--out " + filepath.Join(sub, "r") + " and --report " + filepath.Join(subLink, "r") + " are the same file"},
		{"twice, the same path", []out{{"--out", new, false}, {"--report", new, false}}, "are the same file"},
		{"a directory", []out{{"--out", sub, false}}, "is a directory"},
		{"missing directory", []out{{"--out", filepath.Join(dir, "no", "x"), false}}, "directory " + filepath.Join(dir, "no") + " does not exist"},
		{"missing directory, created", []out{{"--out", filepath.Join(dir, "no", "deeper", "x"), true}}, ""},
		{"under a file", []out{{"--out", filepath.Join(in, "x"), true}}, "not a directory"},
	} {
		var s Set
		s.Input("--model", in)
		for _, o := range c.outs {
			if o.mkdir {
				s.OutputMkdir(o.what, o.path)
			} else {
				s.Output(o.what, o.path)
			}
		}
		err := s.Check()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	// A device: refused as an output replaced by rename, accepted as one
	// written in place.
	var s Set
	s.Output("--out", os.DevNull)
	if err := s.Check(); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("--out %s: %v", os.DevNull, err)
	}
	s = Set{}
	s.Input("--model", in)
	s.OutputStream("--report", os.DevNull)
	if err := s.Check(); err != nil {
		t.Errorf("--report %s: %v", os.DevNull, err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 5 {
		t.Errorf("Check left files: %v", ents)
	}
}

// TestStale: Stale names the writer's temporary files of the output
// directories, each once, and nothing else.
func TestStale(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{".a.safetensors.tmp-999999999-1", ".b.tmp-2", "c.tmp-3", ".notes.tmp-x"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("abc"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var s Set
	s.Output("--out", filepath.Join(dir, "q.safetensors"))
	s.Output("--report", filepath.Join(dir, "r.json"))
	s.OutputMkdir("--out", filepath.Join(dir, "missing", "x"))
	got := s.Stale()
	if len(got) != 2 || !strings.HasPrefix(got[0], filepath.Join(dir, ".a.safetensors.tmp-999999999-1")+" (3 B,") ||
		!strings.Contains(got[0], "process 999999999") || !strings.Contains(got[1], "an earlier version's temporary file") {
		t.Errorf("Stale:\n%s", strings.Join(got, "\n"))
	}
	for _, w := range got {
		if !strings.Contains(w, "delete it") {
			t.Errorf("warning does not say what to do: %s", w)
		}
	}
}

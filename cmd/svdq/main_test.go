package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/svdq/svdq/formats/safetensors"
)

// svdq runs the CLI in-process with args and returns stdout, stderr and
// the exit status.
func svdq(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	app := newApp()
	var o, e bytes.Buffer
	app.Writer, app.ErrWriter = &o, &e
	code = run(app, append([]string{"svdq"}, args...))
	return o.String(), e.String(), code
}

// mustRun runs the CLI and fails the test unless it exits with want.
func mustRun(t *testing.T, want int, args ...string) (stdout, stderr string) {
	t.Helper()
	o, e, code := svdq(t, args...)
	if code != want {
		t.Fatalf("svdq %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, o, e)
	}
	return o, e
}

// tiny is a synthetic FLUX.1-dev checkpoint (width 128, 1 double + 2
// single blocks, 64 calibration rows) shared by the tests of this package.
var tiny struct {
	once         sync.Once
	dir          string
	model, calib string
}

// fastFlags keep quantize quick in tests.
var fastFlags = []string{"--smooth-search", "fast", "--iters", "3", "--rank", "16", "--workers", "2"}

func tinyModel(t *testing.T) (model, calib string) {
	t.Helper()
	tiny.once.Do(func() {
		dir, err := os.MkdirTemp("", "svdq-cmd-test-")
		if err != nil {
			t.Fatal(err)
		}
		tiny.dir = dir
		if _, e, code := svdq(t, "synth", "--arch", "flux-dev", "--scale", "0.04", "--blocks", "1",
			"--samples", "64", "--seed", "3", "--out", dir); code != 0 {
			t.Fatalf("synth: exit %d: %s", code, e)
		}
		tiny.model, tiny.calib = filepath.Join(dir, "model.safetensors"), filepath.Join(dir, "calib.safetensors")
	})
	if tiny.model == "" {
		t.Fatal("tiny model could not be generated")
	}
	return tiny.model, tiny.calib
}

// asSvdq, set to 1 in the environment, makes the test binary run main()
// (TestMain), so that a test can run svdq as a process and signal it.
const asSvdq = "SVDQ_TEST_AS_SVDQ"

// tinyQ is tinyModel quantized with fastFlags (made once, shared).
var tinyQ struct {
	once sync.Once
	path string
}

func tinyQuantized(t *testing.T) string {
	t.Helper()
	m, cal := tinyModel(t)
	tinyQ.once.Do(func() {
		q := filepath.Join(tiny.dir, "q.safetensors")
		if _, e, code := svdq(t, append([]string{"quantize", "--model", m, "--calib", cal, "--out", q}, fastFlags...)...); code != 0 {
			t.Fatalf("quantize: exit %d: %s", code, e)
		}
		tinyQ.path = q
	})
	if tinyQ.path == "" {
		t.Fatal("tiny quantized file could not be made")
	}
	return tinyQ.path
}

func TestMain(m *testing.M) {
	if os.Getenv(asSvdq) == "1" { // this binary run as svdq itself (signals_test.go)
		main()
	}
	code := m.Run()
	if tiny.dir != "" {
		os.RemoveAll(tiny.dir)
	}
	os.Exit(code)
}

// rewrite copies the safetensors file src to dst, passing every tensor
// through edit (which may change its bytes or shape, or drop it by
// returning false).
func rewrite(t *testing.T, src, dst string, edit func(ts *safetensors.Tensor) bool) {
	t.Helper()
	r, err := safetensors.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var ts []safetensors.Tensor
	for _, n := range r.Names() {
		info, _ := r.Info(n)
		b, err := r.Bytes(n)
		if err != nil {
			t.Fatal(err)
		}
		tt := safetensors.Tensor{Spec: safetensors.Spec{Name: n, DType: info.DType, Shape: info.Shape}, Data: bytes.Clone(b)}
		if edit(&tt) {
			ts = append(ts, tt)
		}
	}
	if err := safetensors.WriteFile(dst, ts, r.Metadata()); err != nil {
		t.Fatal(err)
	}
}

// oneLine fails unless s is exactly one non-empty line.
func oneLine(t *testing.T, what, s string) {
	t.Helper()
	if s == "" || strings.Count(strings.TrimSuffix(s, "\n"), "\n") != 0 {
		t.Errorf("%s: want one line, got %q", what, s)
	}
}

// absent fails if path exists, or if a temporary file of the writer is
// left in its directory.
func absent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		t.Errorf("%s exists after a failed run", path)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

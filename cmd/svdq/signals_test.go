//go:build unix

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svdq/svdq/formats/safetensors"
)

// svdqProcess returns the command running this test binary as svdq.
func svdqProcess(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), asSvdq+"=1")
	return cmd
}

// tempFiles lists the safetensors writer's temporary files in dir of at
// least minSize bytes (a writer's is full-size from the start, iofiles'
// probe empty).
func tempFiles(t *testing.T, dir string, minSize int64) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if _, _, ok := safetensors.ParseTemp(e.Name()); ok {
			if fi, err := e.Info(); err == nil && fi.Size() >= minSize {
				out = append(out, e.Name())
			}
		}
	}
	return out
}

// TestSignalRemovesTemp: quantize, signalled while it writes (its
// temporary file .q.safetensors.tmp-PID-N exists), removes the temporary
// file, says so on stderr and dies of the signal; neither the output nor
// a temporary file is left, and the inputs are unchanged.
func TestSignalRemovesTemp(t *testing.T) {
	m, cal := tinyModel(t)
	before, err := os.ReadFile(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP} {
		t.Run(signalName(sig), func(t *testing.T) {
			if signal.Ignored(sig) { // inherited by the child, which leaves it ignored
				t.Skipf("%s is ignored here (nohup?)", signalName(sig))
			}
			dir := t.TempDir()
			out := filepath.Join(dir, "q.safetensors")
			// One worker and the full search: about 2 s of work after the
			// temporary file appears, time enough to signal.
			cmd := svdqProcess("quantize", "--model", m, "--calib", cal, "--out", out, "--workers", "1", "--iters", "100")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			go func() { exited <- cmd.Wait() }()
			deadline := time.After(60 * time.Second)
		wait:
			for {
				select {
				case err := <-exited:
					t.Fatalf("quantize ended before its temporary file was seen: %v\n%s", err, stderr.String())
				case <-deadline:
					cmd.Process.Kill()
					t.Fatal("no temporary file after 60 s")
				case <-time.After(2 * time.Millisecond):
					if len(tempFiles(t, dir, 1)) > 0 {
						break wait
					}
				}
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			err := <-exited
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("quantize: %v, want death by %s\n%s", err, signalName(sig), stderr.String())
			}
			// Death by the signal; or, when the signal was ignored where the
			// test started (nohup: the reset handler ignores it again), exit
			// status 128 + its number.
			if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !(ws.Signaled() && ws.Signal() == sig || ws.ExitStatus() == 128+int(sig)) {
				t.Errorf("quantize: %v, want death by %s", err, signalName(sig))
			}
			want := fmt.Sprintf("svdq: stopped by %s: %s not written (its temporary file removed)", signalName(sig), out)
			if !strings.Contains(stderr.String(), want) {
				t.Errorf("stderr %q lacks %q", stderr.String(), want)
			}
			if left := tempFiles(t, dir, 0); len(left) > 0 {
				t.Errorf("temporary files left: %v", left)
			}
			absent(t, out)
		})
	}
	if after, err := os.ReadFile(m); err != nil || !bytes.Equal(before, after) {
		t.Errorf("the model changed (%v)", err)
	}
}

// TestStaleTemps: temporary files that earlier runs left in the output
// directory are named in a warning, with whether their process still runs,
// and left alone; the run itself succeeds.
func TestStaleTemps(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	gone := svdqProcess("--version") // a process that has ended: its pid is free
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	stale := []struct{ name, says string }{
		{fmt.Sprintf(".q.safetensors.tmp-%d-123", gone.Process.Pid), "which no longer runs"},
		{fmt.Sprintf(".other.safetensors.tmp-%d-456", os.Getppid()), "which still runs on this machine"},
		{".old.safetensors.tmp-789", "an earlier version's temporary file"},
	}
	for _, s := range stale {
		if err := os.WriteFile(filepath.Join(dir, s.name), make([]byte, 3000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, ".notes.tmp-x"), nil, 0o644); err != nil { // not ours
		t.Fatal(err)
	}
	out := filepath.Join(dir, "q.safetensors")
	_, e := mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", out}, fastFlags...)...)
	lines := strings.Split(strings.TrimSpace(e), "\n")
	if len(lines) != len(stale) {
		t.Fatalf("want %d warnings, got:\n%s", len(stale), e)
	}
	for _, s := range stale {
		found := false
		for _, l := range lines {
			if strings.HasPrefix(l, "svdq: warning: "+filepath.Join(dir, s.name)+" (2.9 KiB") && strings.Contains(l, s.says) {
				found = true
			}
		}
		if !found {
			t.Errorf("no warning on %s saying %q:\n%s", s.name, s.says, e)
		}
		if _, err := os.Stat(filepath.Join(dir, s.name)); err != nil {
			t.Errorf("%s: %v (stale files are only reported)", s.name, err)
		}
	}
}

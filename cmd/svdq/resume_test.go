//go:build unix

package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svdq/svdq/quant/model"
)

// records counts the journal records in the work directory of out.
func records(out string) int {
	m, _ := filepath.Glob(filepath.Join(model.WorkDir(out), "layer-*.safetensors"))
	return len(m)
}

// TestKillResume: quantize is killed with SIGKILL three times, each once
// a random number of layers is finished, then resumed with --resume: it
// says what it reused, warns about the killed runs' temporary files and
// writes the bytes of an uninterrupted run; the work directory is gone.
func TestKillResume(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	flags := append(append([]string{}, fastFlags...), "--workers", "1")
	want := filepath.Join(dir, "want.safetensors")
	mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", want}, flags...)...)

	out := filepath.Join(dir, "q.safetensors")
	args := append([]string{"quantize", "--model", m, "--calib", cal, "--out", out}, flags...)
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 21))
	k1 := 1 + rng.IntN(5)
	k2 := k1 + 1 + rng.IntN(5)
	k3 := k2 + 1 + rng.IntN(6) // at most 18 of the 20 layers
	t.Logf("seed %d: kill after %d, %d, %d finished layers", seed, k1, k2, k3)
	for _, k := range []int{k1, k2, k3} {
		cmd := svdqProcess(args...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		killed := false
	poll:
		for {
			select {
			case err := <-done:
				t.Fatalf("run ended before %d layers were finished (%v)", k, err)
			case <-time.After(2 * time.Millisecond):
				if records(out) >= k {
					cmd.Process.Signal(syscall.SIGKILL)
					killed = true
					break poll
				}
			}
		}
		err := <-done
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !killed || !ok || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("run not killed: %v", err)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("%s exists after a kill (%v)", out, err)
		}
		if n := records(out); n < k {
			t.Fatalf("%d records after the kill, want at least %d", n, k)
		}
	}
	o, e := mustRun(t, 0, append(args, "--resume")...)
	re := regexp.MustCompile(`resume: reused (\d+) of 20 layers`)
	mm := re.FindStringSubmatch(o)
	if mm == nil {
		t.Fatalf("no resume message:\n%s", o)
	}
	if n, _ := strconv.Atoi(mm[1]); n < 1 || n > 20 {
		t.Errorf("reused %d layers", n)
	}
	if strings.Count(o, "(reused)") != mustAtoi(t, mm[1]) {
		t.Errorf("%d lines marked (reused), message says %s", strings.Count(o, "(reused)"), mm[1])
	}
	if !strings.Contains(e, "no longer runs") {
		t.Errorf("no warning about the killed runs' temporary files:\n%s", e)
	}
	sameFile(t, out, want)
	if _, err := os.Stat(model.WorkDir(out)); !os.IsNotExist(err) {
		t.Errorf("work directory left: %v", err)
	}
}

func mustAtoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// sameFile fails unless the files at got and want have the same bytes.
func sameFile(t *testing.T, got, want string) {
	t.Helper()
	a, err := os.ReadFile(got)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatalf("%s (%d bytes) differs from %s (%d bytes)", got, len(a), want, len(b))
	}
}

// svdqOnPath writes an executable named svdq that runs this test binary
// as svdq, and returns its directory.
func svdqOnPath(t *testing.T) string {
	t.Helper()
	bin := t.TempDir()
	script := fmt.Sprintf("#!/bin/sh\n%s=1 exec %q \"$@\"\n", asSvdq, os.Args[0])
	if err := os.WriteFile(filepath.Join(bin, "svdq"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// yamlScript returns the shell script of a Job manifest: the block
// scalar under "args:" ("- |" and the lines indented below it).
func yamlScript(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	indent, state := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		trimmed := strings.TrimLeft(l, " ")
		switch {
		case state == 0 && trimmed == "args:":
			state = 1
		case state == 1 && trimmed == "- |":
			state, indent = 2, len(l)-len(trimmed)+2
		case state == 2 && (trimmed == "" || len(l)-len(trimmed) >= indent):
			lines = append(lines, strings.TrimPrefix(l, strings.Repeat(" ", indent)))
		case state == 2:
			return strings.Join(lines, "\n")
		}
	}
	if state != 2 {
		t.Fatalf("%s: no args block script", path)
	}
	return strings.Join(lines, "\n")
}

// yamlValue returns the value of the first "key: value" line, and for
// env entries ("- name: KEY" then "value: V") the value.
func yamlValue(t *testing.T, path, key string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := regexp.MustCompile(`(?m)^\s*` + key + `:\s*(\S+)`).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	if m := regexp.MustCompile(`(?m)- name: ` + key + `\n\s*value:\s*"?([^"\n]*)"?`).FindSubmatch(b); m != nil {
		return string(m[1])
	}
	t.Fatalf("%s: no %s", path, key)
	return ""
}

// runShards runs the shard command of an engine n times at once, shard i
// with the environment env(i), as the engine would.
func runShards(t *testing.T, n int, cmd func(i int) *exec.Cmd) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	outs := make([][]byte, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = cmd(i).CombinedOutput()
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("shard %d: %v\n%s", i, err, outs[i])
		}
	}
}

// TestExamples runs the Kubernetes Indexed Job and the Slurm job array
// of examples/ as local processes (one per index, the engine's variable
// set) and their merge step, and compares the merged file with a single
// run's.
func TestExamples(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	want := filepath.Join(dir, "want.safetensors")
	mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", want}, fastFlags...)...)
	path := svdqOnPath(t) + string(os.PathListSeparator) + os.Getenv("PATH")
	flags := strings.Join(fastFlags, " ")

	t.Run("k8s-indexed-job", func(t *testing.T) {
		ex := "../../examples/k8s-indexed-job/"
		n := mustAtoi(t, yamlValue(t, ex+"shards.yaml", "completions"))
		if p, s := yamlValue(t, ex+"shards.yaml", "parallelism"), yamlValue(t, ex+"shards.yaml", "SHARDS"); p != strconv.Itoa(n) || s != strconv.Itoa(n) {
			t.Fatalf("completions %d, parallelism %s, SHARDS %s: keep them equal", n, p, s)
		}
		if mode := yamlValue(t, ex+"shards.yaml", "completionMode"); mode != "Indexed" {
			t.Fatalf("completionMode %s", mode)
		}
		parts := filepath.Join(t.TempDir(), "parts")
		out := filepath.Join(t.TempDir(), "merged.safetensors")
		env := append(os.Environ(), "PATH="+path, "MODEL="+m, "CALIB="+cal, "PARTS="+parts, "OUT="+out,
			"SHARDS="+strconv.Itoa(n), "SVDQ_FLAGS="+flags)
		shard := yamlScript(t, ex+"shards.yaml")
		runShards(t, n, func(i int) *exec.Cmd {
			c := exec.Command("/bin/sh", "-c", shard)
			c.Env = append(slices.Clip(env), "JOB_COMPLETION_INDEX="+strconv.Itoa(i))
			return c
		})
		c := exec.Command("/bin/sh", "-c", yamlScript(t, ex+"merge.yaml"))
		c.Env = env
		if o, err := c.CombinedOutput(); err != nil {
			t.Fatalf("merge: %v\n%s", err, o)
		}
		sameFile(t, out, want)
	})

	t.Run("slurm-array", func(t *testing.T) {
		ex := "../../examples/slurm-array/"
		b, err := os.ReadFile(ex + "shard.sbatch")
		if err != nil {
			t.Fatal(err)
		}
		am := regexp.MustCompile(`(?m)^#SBATCH --array=0-(\d+)$`).FindSubmatch(b)
		sm := regexp.MustCompile(`(?m)^SHARDS=\$\{SHARDS:-(\d+)\}$`).FindSubmatch(b)
		if am == nil || sm == nil || mustAtoi(t, string(am[1]))+1 != mustAtoi(t, string(sm[1])) {
			t.Fatalf("shard.sbatch: --array=0-(N-1) and SHARDS=N must agree")
		}
		n := mustAtoi(t, string(sm[1]))
		parts := filepath.Join(t.TempDir(), "parts")
		out := filepath.Join(t.TempDir(), "merged.safetensors")
		env := append(os.Environ(), "PATH="+path, "MODEL="+m, "CALIB="+cal, "PARTS="+parts, "OUT="+out, "SVDQ_FLAGS="+flags)
		runShards(t, n, func(i int) *exec.Cmd {
			c := exec.Command("bash", ex+"shard.sbatch")
			c.Env = append(slices.Clip(env), "SLURM_ARRAY_TASK_ID="+strconv.Itoa(i))
			return c
		})
		c := exec.Command("bash", ex+"merge.sbatch")
		c.Env = env
		if o, err := c.CombinedOutput(); err != nil {
			t.Fatalf("merge: %v\n%s", err, o)
		}
		sameFile(t, out, want)
	})
}

// tinyP is shard 1/2 of tinyModel quantized with fastFlags (made once).
var tinyP struct {
	once sync.Once
	path string
}

// tinyPart returns a valid part (shard 1/2) of the tiny model.
func tinyPart(t *testing.T) string {
	t.Helper()
	tinyP.once.Do(func() {
		m, cal := tinyModel(t)
		dir, err := os.MkdirTemp("", "svdq-cmd-part-")
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "part-1.safetensors")
		mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", p, "--shard", "1/2"}, fastFlags...)...)
		tinyP.path = p
	})
	if tinyP.path == "" {
		t.Fatal("no tiny part")
	}
	return tinyP.path
}

// TestMergeCLI: svdq merge joins parts given in any order with --out after
// them, and exits 2 with one line naming the problem for a missing part,
// a repeated one, a bad --shard and bad arguments, writing nothing.
func TestMergeCLI(t *testing.T) {
	m, cal := tinyModel(t)
	dir := t.TempDir()
	want := filepath.Join(dir, "want.safetensors")
	mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", want}, fastFlags...)...)
	p0 := filepath.Join(dir, "part-0.safetensors")
	o, _ := mustRun(t, 0, append([]string{"quantize", "--model", m, "--calib", cal, "--out", p0, "--shard", "0/2"}, fastFlags...)...)
	if !strings.Contains(o, "wrote part "+p0+": shard 0/2") || !strings.Contains(o, "svdq merge") {
		t.Errorf("shard summary:\n%s", o)
	}
	p1 := tinyPart(t)
	out := filepath.Join(dir, "q.safetensors")
	o, _ = mustRun(t, 0, "merge", p1, p0, "--out", out)
	if !strings.Contains(o, "merged 2 parts into "+out) {
		t.Errorf("merge output: %s", o)
	}
	sameFile(t, out, want)

	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"merge", p0, "--out", "OUT"}, "shard 1/2 missing"},
		{[]string{"merge", p0, p1, p1, "--out", "OUT"}, "both shard 1/2"},
		{[]string{"merge", p0, p1}, "--out is required"},
		{[]string{"merge", "--out", "OUT"}, "no parts"},
		{[]string{"merge", p0, p1, "--out", "OUT", "--seed", "3"}, "unknown flag --seed"},
		{[]string{"merge", p0, p1, "--out", p1}, "also an input"},
		{append([]string{"quantize", "--model", m, "--calib", cal, "--out", "OUT", "--shard", "2/2"}, fastFlags...), "I counts from 0"},
		{append([]string{"quantize", "--model", m, "--calib", cal, "--out", "OUT", "--shard", "x"}, fastFlags...), "want I/N"},
		{append([]string{"quantize", "--model", m, "--calib", cal, "--out", "OUT", "--resume"}, fastFlags...), "nothing to resume"},
	} {
		o := filepath.Join(t.TempDir(), "o.safetensors")
		args := slices.Clone(tc.args)
		for i, a := range args {
			if a == "OUT" {
				args[i] = o
			}
		}
		_, e := mustRun(t, 2, args...)
		oneLine(t, "stderr", e)
		if !strings.Contains(e, tc.want) {
			t.Errorf("svdq %s: error %q lacks %q", strings.Join(tc.args, " "), e, tc.want)
		}
		if _, err := os.Stat(o); !os.IsNotExist(err) {
			t.Errorf("svdq %s wrote %s", strings.Join(tc.args, " "), o)
		}
	}
}

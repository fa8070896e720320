package main

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/svdq/svdq/formats/lora"
	"github.com/svdq/svdq/formats/safetensors"
	"github.com/svdq/svdq/quant/model"
)

// readOnlyDir returns a directory no file can be created in: a 0555
// directory, or, where the tests run as root (who writes there anyway),
// /sys; the test is skipped when neither refuses.
func readOnlyDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o555); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(dir, 0o755) })
	for _, d := range []string{dir, "/sys"} {
		if safetensors.Probe(filepath.Join(d, "x")) != nil {
			return d
		}
	}
	t.Skip("no read-only directory here")
	return ""
}

// TestOutputPaths: every path a command writes (output, --report, plots,
// unpack's file, fuse-lora's sidecar) is refused before any work when it
// is an input (the same path, a symbolic or a hard link, a shard of a
// sharded checkpoint), when the command would write it twice, when it is a
// directory, or when its directory takes no file (read-only): exit 2, one
// line naming both, the inputs unchanged and nothing written.
func TestOutputPaths(t *testing.T) {
	m, cal := tinyModel(t)
	q := tinyQuantized(t)
	dir := t.TempDir()
	link := func(kind, target, name string) string {
		p := filepath.Join(dir, name)
		var err error
		if kind == "hard" {
			err = os.Link(target, p)
		} else {
			err = os.Symlink(target, p)
		}
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	modelHard := link("hard", m, "model-hard.safetensors")
	calibSym := link("sym", cal, "calib-sym.safetensors")
	qHard := link("hard", q, "q-hard.safetensors")
	lp := filepath.Join(dir, "style.safetensors")
	if err := lora.Write(lp, []lora.Factors{loraFactors(rand.New(rand.NewPCG(3, 3)), "double_blocks.0.img_attn.qkv", 4, 3*128, 128)},
		lora.WriteOptions{Style: lora.StyleKohya}); err != nil {
		t.Fatal(err)
	}
	loraSym := link("sym", lp, "style-sym.safetensors")
	sideOut := filepath.Join(dir, "p.safetensors") // its sidecar is a hard link to the LoRA
	link("hard", lp, "p.safetensors"+lora.SidecarSuffix)
	udir := filepath.Join(dir, "unpacked")
	if err := os.Mkdir(udir, 0o755); err != nil {
		t.Fatal(err)
	}
	link("hard", q, filepath.Join("unpacked", model.UnpackFile))
	sharded := filepath.Join(dir, "sharded")
	mustRun(t, 0, "synth", "--arch", "flux-dev", "--scale", "0.04", "--blocks", "1", "--samples", "16", "--shards", "2", "--out", sharded)
	shards, _ := filepath.Glob(filepath.Join(sharded, "*-of-*.safetensors"))
	if len(shards) != 2 {
		t.Fatalf("shards %v", shards)
	}
	ro := readOnlyDir(t)
	out := filepath.Join(dir, "out.safetensors")
	rep := filepath.Join(dir, "report.json")
	quantize := func(args ...string) []string {
		return append(append([]string{"quantize", "--model", m, "--calib", cal, "--out", out}, fastFlags...), args...)
	}
	check := func(args ...string) []string {
		return append([]string{"check", "--model", q, "--reference", m, "--calib", cal, "--smooth-search", "off"}, args...)
	}
	inputs := []string{m, cal, q, lp, shards[0], shards[1]}
	sums := map[string][]byte{}
	for _, p := range inputs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sums[p] = b
	}
	for _, c := range []struct {
		name   string
		args   []string
		want   []string // in the one-line error
		unmade []string // paths that must not exist afterwards
	}{
		{"report is the model", quantize("--report", m), []string{"--report " + m, "is also an input (--model " + m + ")"}, []string{out}},
		{"report is the calib file", quantize("--report", cal), []string{"--report " + cal, "--calib"}, []string{out}},
		{"report is a hard link to the model", quantize("--report", modelHard), []string{modelHard, "--model " + m}, []string{out}},
		{"report is a symbolic link to the calib file", quantize("--report", calibSym), []string{calibSym, "--calib " + cal}, []string{out}},
		{"report is --out", quantize("--report", out), []string{"--out " + out + " and --report " + out + " are the same file"}, []string{out}},
		{"report is a directory", quantize("--report", dir), []string{"--report " + dir + ": is a directory"}, []string{out}},
		{"report in a read-only directory", quantize("--report", filepath.Join(ro, "r.json")), []string{"--report " + filepath.Join(ro, "r.json"), "cannot create a file in " + ro}, []string{out}},
		{"report in a missing directory", quantize("--report", filepath.Join(dir, "no", "r.json")), []string{"does not exist"}, []string{out}},
		{"out is the calib file", quantize("--out", cal), []string{"--out " + cal, "--calib " + cal}, nil},
		{"out is a symbolic link to the calib file", quantize("--out", calibSym), []string{"--out " + calibSym, "--calib"}, nil},
		{"out is a shard of the model", []string{"quantize", "--model", sharded, "--calib", cal, "--out", shards[1]},
			[]string{"--out " + shards[1], "--model " + sharded + ", file " + shards[1]}, nil},
		{"out in a read-only directory", quantize("--out", filepath.Join(ro, "q.safetensors"), "--report", rep), []string{"cannot create a file in " + ro}, []string{rep}},
		{"convert OUT is IN", []string{"convert", q, q}, []string{"OUT " + q, "IN " + q}, nil},
		{"convert OUT is a hard link to IN", []string{"convert", q, qHard}, []string{"OUT " + qHard, "IN " + q}, nil},
		{"fuse-lora out is the LoRA", []string{"fuse-lora", "--model", q, "--lora", lp, "--out", loraSym, "--w4a16", "skip"}, []string{"--out " + loraSym, "--lora " + lp}, nil},
		{"fuse-lora out is the model", []string{"fuse-lora", "--model", q, "--lora", lp, "--out", qHard, "--w4a16", "skip"}, []string{"--out " + qHard, "--model " + q}, nil},
		{"fuse-lora sidecar is the LoRA", []string{"fuse-lora", "--model", q, "--lora", lp, "--out", sideOut, "--w4a16", "skip"},
			[]string{"the sidecar of --out " + sideOut + lora.SidecarSuffix, "--lora " + lp}, []string{sideOut}},
		{"check plot is the reference", check("--plot", modelHard), []string{"--plot " + modelHard, "--reference " + m}, nil},
		{"check plot and spectrum are one file", check("--plot", filepath.Join(dir, "e.png"), "--spectrum", "transformer_blocks.0.qkv_proj", "--spectrum-out", filepath.Join(dir, "e.png")),
			[]string{"--plot " + filepath.Join(dir, "e.png") + " and --spectrum-out " + filepath.Join(dir, "e.png") + " are the same file"}, []string{filepath.Join(dir, "e.png")}},
		{"check plot in a read-only directory", check("--plot", filepath.Join(ro, "e.png")), []string{"cannot create a file in " + ro}, nil},
		{"unpack over the model", []string{"unpack", "--model", q, "--out", udir}, []string{"--out " + filepath.Join(udir, model.UnpackFile), "--model " + q}, nil},
		{"calib merge into a link to an input", []string{"calib", "merge", m, cal, "--out", calibSym}, []string{"--out " + calibSym, "also an input", "input " + cal}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, e := mustRun(t, exitBadInput, c.args...)
			oneLine(t, "stderr", e)
			for _, w := range c.want {
				if !strings.Contains(e, w) {
					t.Errorf("error %q does not say %q", strings.TrimSpace(e), w)
				}
			}
			for _, p := range c.unmade {
				absent(t, p)
			}
			for _, p := range inputs {
				if b, err := os.ReadFile(p); err != nil || !bytes.Equal(b, sums[p]) {
					t.Fatalf("%s changed (%v)", p, err)
				}
			}
		})
	}
	// A report is written in place: a device takes it (--out is replaced
	// by a rename and must be a regular file).
	mustRun(t, 0, quantize("--report", os.DevNull)...)
	_, e := mustRun(t, exitBadInput, quantize("--out", os.DevNull)...)
	if !strings.Contains(e, "--out "+os.DevNull+": exists and is not a regular file") {
		t.Errorf("--out %s: %s", os.DevNull, e)
	}
}

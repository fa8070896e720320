package main

import (
	"strings"
	"testing"
)

// TestUsageErrors: a missing required flag, an unknown flag or a bad flag
// value is one line on stderr naming the flag and pointing to the
// command's --help, with exit status 2 and nothing on stdout (urfave/cli
// printed the whole help first); the help marks required flags.
func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"quantize"}, "svdq: quantize: --model is required (svdq quantize --help lists every flag)\n"},
		{[]string{"check", "--model", "q.safetensors"}, "svdq: check: --reference and --calib are required (svdq check --help lists every flag)\n"},
		{[]string{"check"}, "svdq: check: --model, --reference and --calib are required (svdq check --help"},
		{[]string{"unpack", "--model", "q.safetensors"}, "svdq: unpack: --out is required (svdq unpack --help"},
		{[]string{"fuse-lora", "--out", "o.safetensors", "--lora", "l.safetensors"}, "svdq: fuse-lora: --model is required (svdq fuse-lora --help"},
		{[]string{"gpu-check"}, "--model, --reference and --calib are required (svdq gpu-check --help"},
		{[]string{"synth", "--arch", "flux-dev"}, "svdq: synth: --out is required (svdq synth --help"},
		{[]string{"quantize", "--model", "m.safetensors", "--bogus"}, "svdq: quantize: flag provided but not defined: -bogus (svdq quantize --help lists every flag)\n"},
		{[]string{"quantize", "--rank", "x"}, "quantize: invalid value \"x\" for flag -rank"},
		{[]string{"bench", "cpu", "--size", "x"}, "svdq: bench cpu: invalid value \"x\" for flag -size: parse error (svdq bench cpu --help"},
		{[]string{"--bogus"}, "svdq: flag provided but not defined: -bogus (svdq --help"},
	} {
		o, e, code := svdq(t, c.args...)
		if code != exitBadInput || o != "" || !strings.HasPrefix(e, "svdq: ") || !strings.Contains(e, c.want) {
			t.Errorf("svdq %s: exit %d, stdout %q, stderr %q; want exit 2, no stdout, %q", strings.Join(c.args, " "), code, o, e, c.want)
		}
		oneLine(t, strings.Join(c.args, " "), e)
	}
	help, _ := mustRun(t, 0, "quantize", "--help")
	if !strings.Contains(help, "(required)") || strings.Count(help, "(required)") != 1 {
		t.Errorf("quantize --help marks %d required flags, want --model:\n%s", strings.Count(help, "(required)"), help)
	}
	// The required check runs before the command: with every flag, the
	// command itself runs (here: to a missing file).
	_, e := mustRun(t, 2, "unpack", "--model", "/nonexistent/q.safetensors", "--out", t.TempDir())
	if !strings.Contains(e, "/nonexistent/q.safetensors") {
		t.Errorf("unpack of a missing file: %q", e)
	}
}

package kernels

import (
	"bytes"
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
)

// The PTX built by scripts/build-ptx.sh from cuda/, embedded. The driver
// JIT-compiles it for the card at Open.
//
//go:embed ptx
var ptxFS embed.FS

// PTXInfo describes one embedded PTX file, from its header line
// `// svdq-ptx target=sm90a source-sha256=<hex> nvcc="<nvcc --version release line>"`.
type PTXInfo struct {
	File         string // path inside the embedded tree, e.g. "ptx/svdq_sm90a.ptx"
	Target       string // "sm90a" or "sm80"
	SourceSHA256 string // of the CUDA sources it was built from (see sourceHash)
	NVCC         string // e.g. "Cuda compilation tools, release 13.0, V13.0.88"
	Text         []byte // the whole file, header included (a PTX comment)
}

var ptxHeader = regexp.MustCompile(`^// svdq-ptx target=(\w+) source-sha256=([0-9a-f]{64}) nvcc="([^"]*)"$`)

// parsePTX checks and parses the header line of an embedded PTX file.
func parsePTX(file string, text []byte) (PTXInfo, error) {
	line, _, _ := bytes.Cut(text, []byte("\n"))
	m := ptxHeader.FindSubmatch(line)
	if m == nil {
		return PTXInfo{}, fmt.Errorf("kernels: %s: first line %.80q is not an svdq-ptx header (rebuild with scripts/build-ptx.sh)", file, line)
	}
	if !bytes.Contains(text, []byte(".version")) || !bytes.Contains(text, []byte(".target")) {
		return PTXInfo{}, fmt.Errorf("kernels: %s: no .version/.target directive: not PTX", file)
	}
	return PTXInfo{File: file, Target: string(m[1]), SourceSHA256: string(m[2]), NVCC: string(m[3]), Text: text}, nil
}

// ptxTarget names the embedded PTX for a compute capability: sm90a for
// exactly 9.0 (Hopper: INT8 tensor cores, no 4-bit ones), sm80 for 8.x and
// for newer cards (the driver JITs the compute_80 PTX). Below 8.0 there are
// no 4-bit mma instructions and "" is returned.
func ptxTarget(major, minor int) string {
	switch {
	case major == 9 && minor == 0:
		return "sm90a"
	case major >= 8:
		return "sm80"
	}
	return ""
}

// PTXDirEnv names an environment variable that, when set, makes Open load
// svdq_<target>.ptx from that folder instead of the embedded copy (for
// kernel development on the GPU machine, before the PTX is committed).
const PTXDirEnv = "SVDQ_PTX_DIR"

// PTXTargetEnv names an environment variable that forces the PTX target
// ("sm80" or "sm90a"): on a Hopper card, sm80 runs the native 4-bit mma path
// of sm_80..89 (emulated there, slowly), to test it.
const PTXTargetEnv = "SVDQ_PTX_TARGET"

// ptxFor returns the PTX for a compute capability: from $SVDQ_PTX_DIR when
// set, else the embedded file.
func ptxFor(major, minor int) (PTXInfo, error) {
	t := ptxTarget(major, minor)
	if f := os.Getenv(PTXTargetEnv); f != "" && t != "" {
		if f != "sm80" && f != "sm90a" || f == "sm90a" && !(major == 9 && minor == 0) {
			return PTXInfo{}, fmt.Errorf("kernels: %s=%s: not a target for compute capability %d.%d", PTXTargetEnv, f, major, minor)
		}
		t = f
	}
	if t == "" {
		return PTXInfo{}, fmt.Errorf("kernels: compute capability %d.%d is not supported (need 8.0 or newer)", major, minor)
	}
	name := "svdq_" + t + ".ptx"
	if dir := os.Getenv(PTXDirEnv); dir != "" {
		file := filepath.Join(dir, name)
		text, err := os.ReadFile(file)
		if err != nil {
			return PTXInfo{}, fmt.Errorf("kernels: %s=%s: %v", PTXDirEnv, dir, err)
		}
		return parsePTX(file, text)
	}
	file := "ptx/" + name
	text, err := ptxFS.ReadFile(file)
	if err != nil {
		return PTXInfo{}, fmt.Errorf("kernels: %s is not embedded: run scripts/build-ptx.sh on a machine with nvcc and rebuild", file)
	}
	return parsePTX(file, text)
}

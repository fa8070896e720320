package kernels

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sort"
	"testing"
)

// sourceHash is the SHA-256 that scripts/build-ptx.sh records: over the
// files of dir sorted by name, each as "name\n" followed by its bytes.
func sourceHash(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if !e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(n + "\n"))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TestEmbeddedPTX checks that both PTX files are embedded, carry a parsable
// header, were built from the CUDA sources as they are now, and define every
// kernel the host launches.
func TestEmbeddedPTX(t *testing.T) {
	want := sourceHash(t, "cuda")
	for _, cc := range [][2]int{{9, 0}, {8, 0}, {8, 9}, {10, 0}} {
		info, err := ptxFor(cc[0], cc[1])
		if err != nil {
			t.Fatalf("sm_%d%d: %v", cc[0], cc[1], err)
		}
		if info.Target != ptxTarget(cc[0], cc[1]) {
			t.Errorf("%s: header target %s, want %s", info.File, info.Target, ptxTarget(cc[0], cc[1]))
		}
		if info.SourceSHA256 != want {
			t.Errorf("%s was built from other CUDA sources (sha256 %s, kernels/cuda is %s): run scripts/build-ptx.sh",
				info.File, info.SourceSHA256, want)
		}
		if info.NVCC == "" {
			t.Errorf("%s: no nvcc version in the header", info.File)
		}
		for _, name := range kernelNames() {
			if !bytes.Contains(info.Text, []byte(".entry "+name+"(")) {
				t.Errorf("%s does not define kernel %s", info.File, name)
			}
		}
	}
	if _, err := ptxFor(7, 5); err == nil {
		t.Error("sm_75 accepted")
	}
}

func TestPTXTarget(t *testing.T) {
	for _, c := range []struct {
		major, minor int
		want         string
	}{{9, 0, "sm90a"}, {8, 0, "sm80"}, {8, 6, "sm80"}, {8, 9, "sm80"}, {10, 0, "sm80"}, {12, 0, "sm80"}, {7, 5, ""}} {
		if got := ptxTarget(c.major, c.minor); got != c.want {
			t.Errorf("ptxTarget(%d, %d) = %q, want %q", c.major, c.minor, got, c.want)
		}
	}
}

func TestParsePTXHeader(t *testing.T) {
	good := "// svdq-ptx target=sm90a source-sha256=" + string(bytes.Repeat([]byte("ab"), 32)) +
		` nvcc="Cuda compilation tools, release 13.0, V13.0.88"` + "\n//\n.version 9.0\n.target sm_90a\n"
	info, err := parsePTX("x.ptx", []byte(good))
	if err != nil || info.Target != "sm90a" || info.NVCC != "Cuda compilation tools, release 13.0, V13.0.88" {
		t.Fatalf("parsePTX = %+v, %v", info, err)
	}
	for _, bad := range []string{
		"//\n.version 9.0\n.target sm_90a\n",                            // no header
		good[:30] + "\n.version 9.0\n.target sm_90a\n",                  // truncated header
		"// svdq-ptx target=sm90a source-sha256=" + good[39:160] + "\n", // no PTX after it
	} {
		if _, err := parsePTX("x.ptx", []byte(bad)); err == nil {
			t.Errorf("parsePTX accepted %.60q", bad)
		}
	}
}

// TestPTXDirOverride checks that $SVDQ_PTX_DIR replaces the embedded PTX.
func TestPTXDirOverride(t *testing.T) {
	dir := t.TempDir()
	text := "// svdq-ptx target=sm80 source-sha256=" + string(bytes.Repeat([]byte("0"), 64)) + ` nvcc="test"` +
		"\n.version 8.0\n.target sm_80\n"
	if err := os.WriteFile(filepath.Join(dir, "svdq_sm80.ptx"), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(PTXDirEnv, dir)
	info, err := ptxFor(8, 6)
	if err != nil || info.NVCC != "test" {
		t.Fatalf("override: %+v, %v", info, err)
	}
	t.Setenv(PTXTargetEnv, "sm80")
	if info, err := ptxFor(9, 0); err != nil || info.Target != "sm80" {
		t.Fatalf("target override on sm_90: %+v, %v", info, err)
	}
	t.Setenv(PTXTargetEnv, "sm90a")
	if _, err := ptxFor(8, 9); err == nil {
		t.Fatal("sm90a forced on sm_89 was accepted")
	}
	t.Setenv(PTXTargetEnv, "")
	if _, err := ptxFor(9, 0); err == nil {
		t.Fatal("a missing file in the override folder was not reported")
	}
}

package iofiles

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/svdq/svdq/formats/safetensors"
)

// Stale returns one warning per temporary file of the safetensors writer
// found in the output directories (see the package doc), e.g.
//
//	/out/.q.safetensors.tmp-4711-123 (11.2 GiB, 3h ago): temporary file of
//	process 4711, which no longer runs: an interrupted run left it; delete it
func (s *Set) Stale() []string {
	var dirs []string
	for _, o := range s.outs {
		if d := canonical(filepath.Dir(o.path)); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	var out []string
	for _, d := range dirs {
		ts, err := safetensors.TempFiles(d)
		if err != nil {
			continue // a missing directory: OutputMkdir, or Check's error
		}
		for _, t := range ts {
			out = append(out, describe(t))
		}
	}
	return out
}

// describe words the warning about one temporary file.
func describe(t safetensors.Temp) string {
	size, age := "", ""
	if st, err := os.Stat(t.Path); err == nil {
		size = human(st.Size())
		age = time.Since(st.ModTime()).Round(time.Second).String()
	}
	who := "an earlier version's temporary file: an interrupted run left it; delete it"
	switch r := running(t.PID); {
	case t.PID == 0:
	case t.PID == os.Getpid():
		who = "temporary file of an earlier run that had this process number: an interrupted run left it; delete it"
	case r == yes:
		who = fmt.Sprintf("temporary file of process %d, which still runs on this machine: if that is svdq writing %s, leave it; else delete it",
			t.PID, filepath.Base(t.Target))
	case r == no:
		who = fmt.Sprintf("temporary file of process %d, which no longer runs: an interrupted run left it; delete it "+
			"(unless a process on another machine sharing this directory is writing it)", t.PID)
	default:
		who = fmt.Sprintf("temporary file of process %d: unless that process still writes it, an interrupted run left it; delete it", t.PID)
	}
	return fmt.Sprintf("%s (%s, modified %s ago): %s", t.Path, size, age, who)
}

// human formats a byte count with a binary unit.
func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// answer is a yes/no/unknown.
type answer int

const (
	unknown answer = iota
	yes
	no
)

package safetensors

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Temporary files. Create writes into a temporary file in the destination's
// directory named
//
//	.NAME.tmp-PID-DIGITS
//
// (NAME the destination's base name, PID the creating process, DIGITS
// random), which Close renames onto NAME and Abort removes. A process that
// is killed without a chance to run Abort (SIGKILL, a crash, power loss)
// leaves it behind at full size; the fixed pattern lets a later run find
// such files (TempFiles) and name them. AbortAll removes the temporary files
// of every open Writer, for a program's signal handler.

// tempMarker separates the destination's name from PID-DIGITS.
const tempMarker = ".tmp-"

// tempPattern is the os.CreateTemp pattern of a temporary file for the
// destination base name.
func tempPattern(base string) string {
	return "." + base + tempMarker + strconv.Itoa(os.Getpid()) + "-*"
}

// Temp is a Writer's temporary file found on disk.
type Temp struct {
	Path   string // the temporary file
	Target string // the destination it would have been renamed to
	// PID is the process that created it; 0 for a file of an earlier
	// version of this package, whose names carried no PID.
	PID int
}

// ParseTemp reports whether the base name is that of a Writer's temporary
// file (.NAME.tmp-PID-DIGITS, or .NAME.tmp-DIGITS of earlier versions),
// and returns NAME and PID (0 when the name has none).
func ParseTemp(name string) (target string, pid int, ok bool) {
	i := strings.LastIndex(name, tempMarker)
	if i < 2 || name[0] != '.' {
		return "", 0, false
	}
	target, rest := name[1:i], name[i+len(tempMarker):]
	p, digits, two := strings.Cut(rest, "-")
	if !two {
		p, digits = "", rest
	}
	if !allDigits(digits) || (two && !allDigits(p)) {
		return "", 0, false
	}
	if two {
		var err error
		if pid, err = strconv.Atoi(p); err != nil {
			return "", 0, false
		}
	}
	return target, pid, true
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// TempFiles lists the Writer temporary files in dir, sorted by name, other
// than those of Writers open in this process.
func TempFiles(dir string) ([]Temp, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	mine := map[string]bool{}
	registry.Lock()
	for w := range registry.open {
		mine[w.tmp] = true
	}
	registry.Unlock()
	var out []Temp
	for _, e := range ents {
		target, pid, ok := ParseTemp(e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if mine[p] {
			continue
		}
		out = append(out, Temp{Path: p, Target: filepath.Join(dir, target), PID: pid})
	}
	return out, nil
}

// Probe checks that Create could make its temporary file for path, by
// creating one (named as Create names them) and removing it at once, under
// the lock AbortAll takes, so that a signal handler never leaves it
// behind. It does not look at path itself.
func Probe(path string) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.aborted {
		return fmt.Errorf("%s: %w", path, errAborted)
	}
	f, err := os.CreateTemp(dir, tempPattern(base))
	if err != nil {
		return err
	}
	return errors.Join(f.Close(), os.Remove(f.Name()))
}

// registry holds every Writer that Create returned and that is not closed
// or aborted yet; after AbortAll, Create refuses new ones.
var registry = struct {
	sync.Mutex
	open    map[*Writer]bool
	aborted bool
}{open: map[*Writer]bool{}}

// errAborted is Create's error after AbortAll.
var errAborted = errors.New("safetensors: the program is stopping (AbortAll): no new file is created")

// register runs create (which makes w's temporary file) and adds w to the
// registry, under the registry's lock, so that AbortAll never misses a
// temporary file; after AbortAll it fails without running create.
func register(w *Writer, create func() error) error {
	registry.Lock()
	defer registry.Unlock()
	if registry.aborted {
		return fmt.Errorf("%s: %w", w.path, errAborted)
	}
	if err := create(); err != nil {
		return err
	}
	registry.open[w] = true
	return nil
}

func unregister(w *Writer) {
	registry.Lock()
	delete(registry.open, w)
	registry.Unlock()
}

// AbortAll aborts every Writer of this process that is not closed or
// aborted (see Writer.Abort: its temporary file is removed, its
// destination untouched) and makes every later Create fail. It returns the
// destinations of the aborted Writers, sorted, and the errors of removing
// their files. A Writer whose Close has begun is left to finish: its file
// is complete. AbortAll is meant for a signal handler that exits right
// after; it waits for Writes in flight, which take as long as one WriteAt.
func AbortAll() ([]string, error) {
	registry.Lock()
	registry.aborted = true
	ws := make([]*Writer, 0, len(registry.open))
	for w := range registry.open {
		ws = append(ws, w)
	}
	registry.Unlock()
	var paths []string
	var errs []error
	for _, w := range ws {
		if !w.stop() {
			continue // Close or Abort got there first
		}
		w.mu.Lock()
		if err := w.abort(); err != nil {
			errs = append(errs, fmt.Errorf("%s: removing %s: %w", w.path, w.tmp, err))
		}
		w.mu.Unlock()
		paths = append(paths, w.path)
	}
	slices.Sort(paths)
	return paths, errors.Join(errs...)
}

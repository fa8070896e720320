package main

import (
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/schollz/progressbar/v3"
)

// isTerminal reports whether f is a character device (a terminal), the
// condition for drawing progress bars.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// bar is a progress bar on stderr that exists only when stderr is a
// terminal, and lines printed to out around it: printing clears the bar
// first, so lines and bar never interleave. Safe for concurrent use.
type bar struct {
	mu  sync.Mutex
	out io.Writer
	pb  *progressbar.ProgressBar // nil: no terminal
}

// newBar returns a bar counting to total (bytes when bytes is set) with the
// given description; out receives the lines of println.
func newBar(out io.Writer, total int64, desc string, bytes bool) *bar {
	b := &bar{out: out}
	if total > 0 && isTerminal(os.Stderr) {
		b.pb = progressbar.NewOptions64(total,
			progressbar.OptionSetWriter(os.Stderr),
			progressbar.OptionSetDescription(desc),
			progressbar.OptionShowBytes(bytes),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(30),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionClearOnFinish(),
			progressbar.OptionThrottle(100e6),
		)
	}
	return b
}

// println prints one line (clearing the bar first) and advances the bar by
// n; line "" prints nothing.
func (b *bar) println(line string, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pb != nil {
		b.pb.Clear()
	}
	if line != "" {
		fmt.Fprintln(b.out, line)
	}
	if b.pb != nil {
		b.pb.Add64(n)
	}
}

// set moves the bar to done.
func (b *bar) set(done int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pb != nil {
		b.pb.Set64(done)
	}
}

// setTotal changes the bar's total.
func (b *bar) setTotal(total int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pb != nil {
		b.pb.ChangeMax64(total)
	}
}

// finish removes the bar from the terminal.
func (b *bar) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pb != nil {
		b.pb.Finish()
		b.pb.Clear()
	}
}

// mib formats a byte count in MiB with one decimal.
func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// human formats a byte count with a binary unit (KiB, MiB or GiB).
func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

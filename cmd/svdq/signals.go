package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"

	"github.com/svdq/svdq/formats/safetensors"
)

// signals catches every signal that would otherwise end the process
// without running any code (the list is per system: catchSignals; those
// ignored at start stay ignored). On the
// first one, the files being written are aborted (safetensors.AbortAll:
// their temporary files removed, no new one created), one line per
// unfinished file goes to errw, and the process dies of that signal with
// its default action (die), so that a shell or a supervisor sees what
// stopped it. A second signal while aborting kills at once.
type signals struct {
	errw   io.Writer
	ch     chan os.Signal
	caught atomic.Bool // a signal is being handled
	// mu is held by the handler from the signal to the process's death, and
	// by stop: once the handler has the signal, the program cannot exit by
	// itself (with an error the abort caused) before the handler is done.
	mu      sync.Mutex
	stopped bool
}

// catch starts catching signals, except those the process was started
// with ignored (nohup's SIGHUP), which stay ignored.
func catch(errw io.Writer) *signals {
	s := &signals{errw: errw, ch: make(chan os.Signal, 1)}
	for _, sig := range catchSignals {
		if !signal.Ignored(sig) {
			signal.Notify(s.ch, sig)
		}
	}
	go s.handle()
	return s
}

func (s *signals) handle() {
	sig := <-s.ch
	s.mu.Lock() // never released: the process dies holding it
	if s.stopped {
		s.mu.Unlock()
		return // the program is exiting on its own; nothing is open
	}
	s.caught.Store(true)
	signal.Reset(catchSignals...) // a second signal kills at once
	abortWriters(s.errw, sig)
	die(sig)
}

// stop stops catching signals before the program exits normally; if a
// signal is being handled, it blocks until the handler ends the process.
func (s *signals) stop() {
	s.mu.Lock()
	s.stopped = true
	signal.Stop(s.ch)
	s.mu.Unlock()
}

// quiet returns w, silenced once a signal is caught: errors that the abort
// causes in the running command ("file already closed") are not reported.
func (s *signals) quiet(w io.Writer) io.Writer { return quietWriter{s, w} }

type quietWriter struct {
	s *signals
	w io.Writer
}

func (q quietWriter) Write(p []byte) (int, error) {
	if q.s.caught.Load() {
		return len(p), nil
	}
	return q.w.Write(p)
}

// abortWriters aborts every open safetensors writer and says so on errw:
//
//	svdq: stopped by SIGINT: /out/q.safetensors not written (its temporary file removed)
func abortWriters(errw io.Writer, sig os.Signal) {
	paths, err := safetensors.AbortAll()
	name := signalName(sig)
	if len(paths) == 0 {
		fmt.Fprintf(errw, "svdq: stopped by %s\n", name)
	}
	for _, p := range paths {
		fmt.Fprintf(errw, "svdq: stopped by %s: %s not written (its temporary file removed)\n", name, p)
	}
	if err != nil {
		fmt.Fprintf(errw, "svdq: stopped by %s: %v\n", name, err)
	}
}

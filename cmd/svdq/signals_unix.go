//go:build unix

package main

import (
	"os"
	"syscall"
)

// catchSignals are the signals whose default action ends the process
// (SIGPROF, which the Go profiler uses, aside), in signalNames' order.
// SIGPIPE is among them: a closed pipe on stdout (`svdq quantize … | head`)
// would otherwise end the process mid-write.
var catchSignals = func() []os.Signal {
	out := make([]os.Signal, len(signalNames))
	for i, n := range signalNames {
		out[i] = n.s
	}
	return out
}()

// die ends the process with sig's default action (its handler was reset),
// so the exit status says which signal stopped it (128 + its number in a
// shell); should the process survive it, it exits with that status.
func die(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		os.Exit(exitBadInput)
	}
	syscall.Kill(os.Getpid(), s)
	os.Exit(128 + int(s))
}

// signalName is SIGINT, SIGTERM, …
func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		for _, n := range signalNames {
			if n.s == s {
				return n.name
			}
		}
	}
	return sig.String()
}

// signalNames are the caught signals with their names.
var signalNames = []struct {
	s    syscall.Signal
	name string
}{
	{syscall.SIGHUP, "SIGHUP"}, {syscall.SIGINT, "SIGINT"}, {syscall.SIGQUIT, "SIGQUIT"}, {syscall.SIGTERM, "SIGTERM"},
	{syscall.SIGPIPE, "SIGPIPE"}, {syscall.SIGALRM, "SIGALRM"}, {syscall.SIGUSR1, "SIGUSR1"}, {syscall.SIGUSR2, "SIGUSR2"},
	{syscall.SIGXCPU, "SIGXCPU"}, {syscall.SIGXFSZ, "SIGXFSZ"}, {syscall.SIGVTALRM, "SIGVTALRM"},
}

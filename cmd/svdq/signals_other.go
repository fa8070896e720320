//go:build !unix

package main

import (
	"os"
	"syscall"
)

// catchSignals are the signals this system delivers to a program.
var catchSignals = []os.Signal{os.Interrupt, syscall.SIGTERM}

// die exits non-zero: 128 + 2 (as a shell reports SIGINT) for an
// interrupt, else 128 + 15.
func die(sig os.Signal) {
	if sig == os.Interrupt {
		os.Exit(130)
	}
	os.Exit(143)
}

// signalName names sig.
func signalName(sig os.Signal) string { return sig.String() }

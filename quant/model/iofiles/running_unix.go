//go:build unix

package iofiles

import (
	"errors"
	"syscall"
)

// running reports whether a process pid exists on this machine (signal 0:
// EPERM means it exists but belongs to another user).
func running(pid int) answer {
	err := syscall.Kill(pid, 0)
	switch {
	case err == nil, errors.Is(err, syscall.EPERM):
		return yes
	case errors.Is(err, syscall.ESRCH):
		return no
	}
	return unknown
}

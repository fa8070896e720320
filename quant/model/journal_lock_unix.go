//go:build unix

package model

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes an exclusive flock(2) on dir/lock, so that two runs
// writing the same output (the same shard started twice) do not share a
// work directory. The kernel drops the lock when its process dies, even
// by SIGKILL, so a killed run never blocks its resume (on NFS, Linux
// maps flock to a byte-range lock the server holds). The returned file
// holds the lock until closed.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir+"/"+lockName, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("work directory %s: %v", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("work directory %s is in use by another svdq run writing the same output; wait for it or stop it", dir)
		}
		return nil, fmt.Errorf("work directory %s: lock: %v", dir, err)
	}
	return f, nil
}

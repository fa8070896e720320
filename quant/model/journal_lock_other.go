//go:build !unix

package model

import (
	"fmt"
	"os"
)

// lockDir opens dir/lock; without flock(2) nothing stops a second run
// from using the same work directory.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir+"/"+lockName, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("work directory %s: %v", dir, err)
	}
	return f, nil
}

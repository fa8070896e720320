//go:build !unix

package svd

import "time"

// cpuTime is unavailable here: it returns 0 and the CPU-time metrics are
// left out.
func cpuTime() time.Duration { return 0 }

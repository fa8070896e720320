package model

import (
	"runtime"
	"sync"
)

// forEach runs fn(0), …, fn(n-1) on up to workers goroutines (at least
// one), handing out indices in order. Once one fails no new index starts
// (beyond one being handed out at that moment); the running ones finish. It returns the error of the lowest
// index that failed: every lower index was handed out and finished, so the
// message does not depend on scheduling or on workers.
func forEach(n, workers int, fn func(i int) error) error {
	errs := make([]error, n)
	next := make(chan int)
	quit := make(chan struct{})
	var stop sync.Once
	var wg sync.WaitGroup
	for range min(max(workers, 1), max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if errs[i] = fn(i); errs[i] != nil {
					stop.Do(func() { close(quit) })
				}
			}
		}()
	}
dispatch:
	for i := range n {
		select {
		case next <- i:
		case <-quit:
			break dispatch
		}
	}
	close(next)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// eachParallel is forEach on up to GOMAXPROCS goroutines, at most 8: for
// light per-item work (a layer's unpack and repack, a layer's hash) whose
// memory is one item per goroutine.
func eachParallel(n int, fn func(i int) error) error {
	return forEach(n, min(runtime.GOMAXPROCS(0), 8), fn)
}

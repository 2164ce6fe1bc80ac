package restore

import (
	"runtime"
	"sync"
)

// A shim runs with a small GOMAXPROCS (containerd's runc shim manager starts
// it with 4) so that it stays light. Decoding a checkpoint's layers is the
// one CPU-heavy thing it does, and it is on the container's critical path:
// while any pull is running, the shim may use every CPU it is allowed.
var cpus struct {
	sync.Mutex
	users int
	prev  int
}

// useAllCPUs raises GOMAXPROCS to the number of usable CPUs until the
// returned function is called; overlapping callers share the raise, and the
// last one to finish puts the previous value back.
func useAllCPUs() (done func()) {
	cpus.Lock()
	defer cpus.Unlock()
	if cpus.users == 0 {
		cpus.prev = runtime.GOMAXPROCS(0)
		if n := runtime.NumCPU(); n > cpus.prev {
			runtime.GOMAXPROCS(n)
		}
	}
	cpus.users++
	var once sync.Once
	return func() {
		once.Do(func() {
			cpus.Lock()
			defer cpus.Unlock()
			cpus.users--
			if cpus.users == 0 && runtime.GOMAXPROCS(0) != cpus.prev {
				runtime.GOMAXPROCS(cpus.prev)
			}
		})
	}
}

package restore

import (
	"runtime"
	"sync"
)

// Decoding a checkpoint's layers is the one CPU-heavy thing a shim does, and
// it is on the container's critical path. containerd's runc shim manager
// starts shims with GOMAXPROCS=4 whatever the machine: on a large node that
// leaves CPUs idle during a pull, on a small one it runs more threads than
// there are CPUs (on 2 CPUs, a pull took 0.45 s with 4 against 0.41 s with
// 2, median of 10). While any pull runs, GOMAXPROCS is the number of CPUs
// the shim may use, plus one for each thread the pull runs at a lower
// priority: such a thread holds its P while the kernel lets others run, and
// the goroutines that feed CRIU must not wait for a P behind it.
var cpus struct {
	sync.Mutex
	users int
	prev  int // GOMAXPROCS before the first of the overlapping pulls
	set   int // the largest setting asked for by the overlapping pulls
}

// pullCPUs sets GOMAXPROCS to the number of usable CPUs plus lowered until
// the returned function is called; overlapping callers share the largest
// setting, and the last one to finish puts the previous value back.
func pullCPUs(lowered int) (done func()) {
	cpus.Lock()
	defer cpus.Unlock()
	if cpus.users == 0 {
		cpus.prev, cpus.set = runtime.GOMAXPROCS(0), 0
	}
	if n := runtime.NumCPU() + lowered; n > cpus.set {
		cpus.set = n
		if n != runtime.GOMAXPROCS(0) {
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

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
	shared
	prev int // GOMAXPROCS before the first of the overlapping pulls
	set  int // the largest setting asked for by the overlapping pulls
}

// pullCPUs sets GOMAXPROCS to the number of usable CPUs plus lowered until
// the returned function is called; overlapping callers share the largest
// setting, and the last one to finish puts the previous value back.
func pullCPUs(lowered int) (done func()) {
	return cpus.hold(func(first bool) {
		if first {
			cpus.prev, cpus.set = runtime.GOMAXPROCS(0), 0
		}
		if n := runtime.NumCPU() + lowered; n > cpus.set {
			cpus.set = n
			if n != runtime.GOMAXPROCS(0) {
				runtime.GOMAXPROCS(n)
			}
		}
	}, func() {
		if runtime.GOMAXPROCS(0) != cpus.prev {
			runtime.GOMAXPROCS(cpus.prev)
		}
	})
}

// shared is a process-wide setting that overlapping pulls hold together.
type shared struct {
	mu    sync.Mutex
	users int
}

// hold calls take, under the lock, with whether no one held the setting
// before, and returns the function that ends this hold (once, however
// often it is called); the last hold to end calls giveBack, under the lock.
func (s *shared) hold(take func(first bool), giveBack func()) (done func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	take(s.users == 0)
	s.users++
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.users--; s.users == 0 {
				giveBack()
			}
		})
	}
}

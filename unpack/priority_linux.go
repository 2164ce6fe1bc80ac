//go:build linux

package unpack

import (
	"runtime"

	"golang.org/x/sys/unix"
)

// LowerPriority runs the calling goroutine, until the returned function is
// called, on a thread of its own with the given nice value (Linux keeps one
// per thread), so that it gets only the CPU time nothing else wants.
//
// The thread is put back to the process's priority and returned to the Go
// runtime afterwards, never ended: a locked goroutine that exits ends its
// thread, and a child process started from that thread with a parent-death
// signal (runc, by the runc shim) would be killed with it.
func LowerPriority(nice int) (restore func()) {
	runtime.LockOSThread()
	tid := unix.Gettid()
	// getpriority(2) returns 20-nice for threads.
	prev, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	prev = 20 - prev
	if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil {
		runtime.UnlockOSThread()
		return func() {}
	}
	return func() {
		// Raising it back needs CAP_SYS_NICE, which a shim (root) has;
		// without it the thread stays a little slower, nothing worse.
		_ = unix.Setpriority(unix.PRIO_PROCESS, tid, prev)
		runtime.UnlockOSThread()
	}
}

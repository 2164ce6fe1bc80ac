//go:build linux

package loopback

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// inNewNetns starts a process in a network namespace of its own, whose lo
// is down, or skips the test where that needs privileges it lacks.
func inNewNetns(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: a new network namespace")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// loUp reports whether lo is up in process pid's network namespace.
func loUp(t *testing.T, pid int) bool {
	t.Helper()
	ns, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	type result struct {
		up  bool
		err error
	}
	res := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: err}
			return
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			res <- result{err: err}
			return
		}
		defer unix.Close(fd)
		ifr, _ := unix.NewIfreq("lo")
		err = unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr)
		res <- result{up: ifr.Uint16()&unix.IFF_UP != 0, err: err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.up
}

// The hook, given the state runc passes it, sets lo up in the process's
// namespace, and leaves it so when run again.
func TestRunHook(t *testing.T) {
	pid := inNewNetns(t)
	if loUp(t, pid) {
		t.Fatal("lo is up in a new network namespace already: the test shows nothing")
	}
	state := fmt.Sprintf(`{"ociVersion":"1.2.0","id":"c","status":"creating","pid":%d,"bundle":"/b"}`, pid)
	for i := 0; i < 2; i++ {
		if err := RunHook(strings.NewReader(state)); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if !loUp(t, pid) {
			t.Fatalf("run %d: lo is still down", i+1)
		}
	}
}

func TestRunHookBadState(t *testing.T) {
	for _, state := range []string{``, `{`, `{"pid":0}`, `{"pid":-3}`} {
		if err := RunHook(strings.NewReader(state)); err == nil {
			t.Errorf("state %q: no error", state)
		}
	}
	if err := Up(1 << 30); err == nil {
		t.Error("a pid that does not exist: no error")
	}
}

func TestHook(t *testing.T) {
	h := Hook("/usr/local/bin/containerd-shim-snapboot-v1")
	if h.Path != "/usr/local/bin/containerd-shim-snapboot-v1" || len(h.Args) != 2 || h.Args[1] != HookArg || h.Timeout == nil || *h.Timeout <= 0 {
		t.Fatalf("hook %+v", h)
	}
}

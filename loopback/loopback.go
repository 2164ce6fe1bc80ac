//go:build linux

// Package loopback brings up the loopback interface of a restored
// container's network namespace. For a container whose spec has runc make
// a new network namespace, runc sets lo up when it creates the container,
// but runc's restore (CRIU with that namespace left empty, to be set up by
// the spec's hooks) does not: the clone would have no 127.0.0.1, which a
// cold start has. snapboot adds Hook to the restore's spec as a
// createRuntime hook, which runc runs once CRIU has made the namespaces
// and before it restores sockets or resumes the app; the shim binary runs
// it (see HookArg).
package loopback

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// HookArg is the argument the hook's binary (the shim's) is run with.
const HookArg = "snapboot-loopback-up"

// Hook returns the createRuntime hook that runs binary (the shim's
// executable) with HookArg.
func Hook(binary string) specs.Hook {
	timeout := 10
	return specs.Hook{Path: binary, Args: []string{binary, HookArg}, Timeout: &timeout}
}

// RunHook is the hook's process: it reads the container's state (OCI
// runtime state, with the restored root task's pid) from stdin and brings
// up lo in that task's network namespace.
func RunHook(stdin io.Reader) error {
	var state specs.State
	if err := json.NewDecoder(io.LimitReader(stdin, 1<<20)).Decode(&state); err != nil {
		return fmt.Errorf("read the container's state: %w", err)
	}
	if state.Pid <= 0 {
		return errors.New("the container's state has no pid")
	}
	return Up(state.Pid)
}

// Up sets lo up in the network namespace of process pid (the kernel then
// gives it 127.0.0.1 and ::1).
func Up(pid int) error {
	ns, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread joins the namespace and is never handed back: the
		// goroutine ends locked, and the runtime ends the thread with it.
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("join the network namespace of %d: %w", pid, err)
			return
		}
		errc <- setUp("lo")
	}()
	return <-errc
}

// setUp sets interface name up in the calling thread's network namespace.
func setUp(name string) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("flags of %s: %w", name, err)
	}
	flags := ifr.Uint16()
	if flags&unix.IFF_UP != 0 {
		return nil
	}
	ifr.SetUint16(flags | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

//go:build linux

package restorehook

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// RunHook is the hook's process: it reads the container's state (OCI
// runtime state: the restored root task's pid, the bundle) from stdin, and
// the spec from the bundle, and applies it (Apply).
func RunHook(stdin io.Reader) error {
	var state specs.State
	if err := json.NewDecoder(io.LimitReader(stdin, 1<<20)).Decode(&state); err != nil {
		return fmt.Errorf("read the container's state: %w", err)
	}
	if state.Pid <= 0 {
		return errors.New("the container's state has no pid")
	}
	data, err := os.ReadFile(filepath.Join(state.Bundle, "config.json"))
	if err != nil {
		return fmt.Errorf("read the container's spec: %w", err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("parse the container's spec: %w", err)
	}
	return Apply(state.Pid, &spec)
}

// Apply sets lo up in process pid's network namespace if the spec has runc
// make it, writes the spec's sysctls the hook writes (see package doc)
// into pid's namespaces, joining each once, and gives pid the spec's I/O
// priority.
func Apply(pid int, spec *specs.Spec) error {
	if ioprio, ok, err := IOPriority(spec); err != nil {
		return err
	} else if ok {
		if _, _, errno := unix.Syscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(pid), uintptr(ioprio)); errno != 0 {
			return fmt.Errorf("set the I/O priority of %d: %w", pid, errno)
		}
	}
	byNS := hookSysctls(spec)
	for _, ns := range []string{"net", "ipc"} {
		upLo := ns == "net" && newNetworkNamespace(spec)
		if len(byNS[ns]) == 0 && !upLo {
			continue
		}
		if err := inNamespace(pid, ns, func() error {
			if upLo {
				if err := setUp("lo"); err != nil {
					return err
				}
			}
			return writeSysctls(byNS[ns])
		}); err != nil {
			return err
		}
	}
	return nil
}

// writeSysctls writes sysctls (dotted names), in the order of their
// names.
func writeSysctls(sysctls map[string]string) error {
	keys := make([]string, 0, len(sysctls))
	for key := range sysctls {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	for _, key := range keys {
		if err := writeSysctl(key, sysctls[key]); err != nil {
			return fmt.Errorf("sysctl %s: %w", key, err)
		}
	}
	return nil
}

// ioprioWhoProcess is IOPRIO_WHO_PROCESS: ioprio_set(2) of one thread.
const ioprioWhoProcess = 1

var nsFlags = map[string]int{"net": unix.CLONE_NEWNET, "ipc": unix.CLONE_NEWIPC}

// inNamespace runs fn on a thread that has joined process pid's namespace
// ns (its name under /proc/PID/ns), which must not be the hook's own.
func inNamespace(pid int, ns string, fn func() error) error {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/" + ns)
	if err != nil {
		return fmt.Errorf("%s namespace of %d: %w", ns, pid, err)
	}
	defer f.Close()
	// Never the hook's own (the node's): runc hands it the container's.
	// This thread's, not the process's: a thread that joined the
	// container's namespaces before may be the main one.
	var theirs, ours unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &theirs); err != nil {
		return err
	}
	if err := unix.Stat("/proc/thread-self/ns/"+ns, &ours); err != nil {
		return err
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return fmt.Errorf("process %d is in the hook's own %s namespace", pid, ns)
	}
	if err := InNamespace(f, nsFlags[ns], fn); err != nil {
		return fmt.Errorf("%s namespace of %d: %w", ns, pid, err)
	}
	return nil
}

// InNamespace runs fn on a thread that has joined the namespace ns (a
// /proc/PID/ns file or a bind mount of one) of type flag (CLONE_NEWNET,
// ...). The thread stays locked, so it ends with the goroutine; if it is
// the process's main thread, Go parks it for good.
func InNamespace(ns *os.File, flag int, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(int(ns.Fd()), flag); err != nil {
			errc <- fmt.Errorf("join: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// writeSysctl writes a sysctl through /proc/sys, which resolves the
// network and IPC ones in the calling thread's namespaces.
func writeSysctl(key, value string) error {
	name := strings.ReplaceAll(key, ".", "/")
	if !filepath.IsLocal(name) {
		return fmt.Errorf("not a sysctl name: %q", key)
	}
	f, err := os.OpenFile(filepath.Join("/proc/sys", name), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte(value))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// setUp sets interface name up in the calling thread's network namespace
// (for lo, the kernel then gives it 127.0.0.1 and ::1).
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

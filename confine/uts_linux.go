//go:build linux

package confine

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// utsNamesOf returns the host name and domain name of the UTS namespace at
// path, or of the calling process's when path is "" (this node's, for a
// shim).
func utsNamesOf(path string) (host, domain string, err error) {
	read := func() error {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return err
		}
		host, domain = unix.ByteSliceToString(u.Nodename[:]), unix.ByteSliceToString(u.Domainname[:])
		return nil
	}
	if path == "" {
		err = read()
		return host, domain, err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", "", fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	defer f.Close()
	if err := restorehook.InNamespace(f, unix.CLONE_NEWUTS, read); err != nil {
		return "", "", fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	return host, domain, nil
}

// ipcSysctlsOf returns the IPC sysctls snapboot sets (ipcSysctls' keys) of
// the IPC namespace at path, or of a new IPC namespace (what the kernel
// gives one, on this node) when path is "". They are read through
// /proc/sys, which shows the reading thread's.
func ipcSysctlsOf(path string) (map[string]string, error) {
	if path == "" {
		freshOnce.Do(func() { fresh, freshErr = readIPCSysctls(inNewIPCNamespace) })
		return maps.Clone(fresh), freshErr
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("IPC namespace %s: %w", path, err)
	}
	defer f.Close()
	values, err := readIPCSysctls(func(read func() error) error { return restorehook.InNamespace(f, unix.CLONE_NEWIPC, read) })
	if err != nil {
		return nil, fmt.Errorf("IPC namespace %s: %w", path, err)
	}
	return values, nil
}

// A new IPC namespace's sysctls, read once per process.
var (
	freshOnce sync.Once
	fresh     map[string]string
	freshErr  error
)

// readIPCSysctls reads ipcSysctls' keys through /proc/sys in a thread that
// in sets up.
func readIPCSysctls(in func(read func() error) error) (map[string]string, error) {
	values := map[string]string{}
	err := in(func() error {
		for key := range ipcSysctls {
			data, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
			if err != nil {
				return err
			}
			values[key] = strings.Join(strings.Fields(string(data)), " ")
		}
		return nil
	})
	return values, err
}

// inNewIPCNamespace runs read in a thread of its own in a new IPC
// namespace, and puts the thread back in the process's afterwards (it
// ends with its goroutine where it cannot be put back).
func inNewIPCNamespace(read func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/ipc")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer own.Close()
		if err := unix.Unshare(unix.CLONE_NEWIPC); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("a new IPC namespace: %w", err)
			return
		}
		rerr := read()
		if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWIPC); err != nil {
			errc <- errors.Join(rerr, fmt.Errorf("back to the process's IPC namespace: %w", err))
			return // the thread stays locked, and ends with the goroutine
		}
		runtime.UnlockOSThread()
		errc <- rerr
	}()
	return <-errc
}

//go:build linux

package confine

import (
	"fmt"
	"os"
	"strings"

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
// the IPC namespace at path, read through /proc/sys, which shows the
// reading thread's.
func ipcSysctlsOf(path string) (map[string]string, error) {
	values := map[string]string{}
	read := func() error {
		for key := range ipcSysctls {
			data, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
			if err != nil {
				return err
			}
			values[key] = strings.Join(strings.Fields(string(data)), " ")
		}
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("IPC namespace %s: %w", path, err)
	}
	defer f.Close()
	if err := restorehook.InNamespace(f, unix.CLONE_NEWIPC, read); err != nil {
		return nil, fmt.Errorf("IPC namespace %s: %w", path, err)
	}
	return values, nil
}

//go:build linux

package restore

import (
	"fmt"
	"os"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// SaveUTS is for a container that joins a UTS namespace by path, as the
// containers of a Kubernetes pod join their sandbox's: CRIU joins it, but
// then writes the donor's hostname and domain name into it, which renames
// the whole pod. SaveUTS reads the namespace's names before the restore; the
// returned function puts them back after it. Both are no-ops for a container
// with a UTS namespace of its own.
func SaveUTS(spec *specs.Spec) (func() error, error) {
	noop := func() error { return nil }
	if spec == nil {
		return noop, nil
	}
	path := ""
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if ns.Type == specs.UTSNamespace {
				path = ns.Path
			}
		}
	}
	if path == "" {
		return noop, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return noop, fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	var host, domain string
	if err := inUTSNamespace(f, func() error {
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			return err
		}
		host, domain = unix.ByteSliceToString(u.Nodename[:]), unix.ByteSliceToString(u.Domainname[:])
		return nil
	}); err != nil {
		f.Close()
		return noop, fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	return func() error {
		defer f.Close()
		return inUTSNamespace(f, func() error {
			if err := unix.Sethostname([]byte(host)); err != nil {
				return err
			}
			return unix.Setdomainname([]byte(domain))
		})
	}, nil
}

// inUTSNamespace runs fn on a thread that has joined the UTS namespace ns.
func inUTSNamespace(ns *os.File, fn func() error) error {
	return restorehook.InNamespace(ns, unix.CLONE_NEWUTS, fn)
}

// SetSpecHostname gives a restored container with a UTS namespace of its
// own the names its cold start would have, where CRIU restores the
// donor's: the spec's host name and domain name, or, where the spec sets
// none, this node's (runc's create leaves the namespace it makes with its
// own), and the kernel.domainname sysctl last, as runc writes sysctls
// after the names. It does nothing for a container that joins a namespace
// by path (see SaveUTS).
func SetSpecHostname(spec *specs.Spec, pid uint32) error {
	if spec == nil || pid == 0 || spec.Linux == nil {
		return nil
	}
	own := false
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.UTSNamespace {
			own = ns.Path == ""
		}
	}
	if !own {
		return nil
	}
	var node unix.Utsname
	if err := unix.Uname(&node); err != nil {
		return err
	}
	host, domain := unix.ByteSliceToString(node.Nodename[:]), unix.ByteSliceToString(node.Domainname[:])
	if spec.Hostname != "" {
		host = spec.Hostname
	}
	if spec.Domainname != "" {
		domain = spec.Domainname
	}
	for key, v := range spec.Linux.Sysctl {
		if restorehook.SysctlKey(key) == "kernel.domainname" {
			domain = v
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/uts", pid))
	if err != nil {
		return err
	}
	defer f.Close()
	return inUTSNamespace(f, func() error {
		if err := unix.Sethostname([]byte(host)); err != nil {
			return err
		}
		return unix.Setdomainname([]byte(domain))
	})
}

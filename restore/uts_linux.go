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
	host, domain, err := restorehook.UTSNames(f)
	if err != nil {
		f.Close()
		return noop, fmt.Errorf("UTS namespace %s: %w", path, err)
	}
	return func() error {
		defer f.Close()
		return setUTSNames(f, host, domain)
	}, nil
}

// setUTSNames sets the host name and domain name of the UTS namespace ns.
func setUTSNames(ns *os.File, host, domain string) error {
	return restorehook.InNamespace(ns, unix.CLONE_NEWUTS, func() error {
		if err := unix.Sethostname([]byte(host)); err != nil {
			return err
		}
		return unix.Setdomainname([]byte(domain))
	})
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
	nodeHost, nodeDomain, err := restorehook.UTSNames(nil)
	if err != nil {
		return err
	}
	host, domain := restorehook.ColdStartUTSNames(spec, nodeHost, nodeDomain)
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/uts", pid))
	if err != nil {
		return err
	}
	defer f.Close()
	return setUTSNames(f, host, domain)
}

package confine

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/utsns"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/restorehook"
)

// fitUTSNames gives the UTS namespace CRIU restores (utsns-*.img) the
// names the container's cold start would have, before the app runs: CRIU
// writes the donor's. In a namespace of the container's own, those are the
// spec's host name and domain name, the node's where the spec sets none
// (runc's create leaves the namespace it makes with its own), and the
// kernel.domainname sysctl over both; in one the spec joins by path (a
// pod's), the names it has now: CRIU writes them into it, so without this
// the whole pod would be renamed. It returns
// the images it changed.
func fitUTSNames(imagesDir string, names []string, spec *specs.Spec, utsNames func(path string) (host, domain string, err error)) (map[string]*crit.CriuImage, error) {
	if spec.Linux == nil || utsNames == nil {
		return nil, nil
	}
	uts, has := restorehook.SpecNamespace(spec, specs.UTSNamespace)
	path := uts.Path
	if !has {
		return nil, nil // the node's UTS namespace, which CRIU leaves alone
	}
	host, domain, err := utsNames(path)
	if err != nil {
		return nil, fmt.Errorf("the UTS names the container should have: %w", err)
	}
	if path == "" {
		host, domain = coldStartUTSNames(spec, host, domain)
	}
	out := map[string]*crit.CriuImage{}
	for _, name := range names {
		if !strings.HasPrefix(name, "utsns-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		img, err := decodeImage(filepath.Join(imagesDir, name), &utsns.UtsnsEntry{})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if len(img.Entries) != 1 {
			return nil, fmt.Errorf("%w: %s has %d entries, want 1", ErrRefused, name, len(img.Entries))
		}
		e := img.Entries[0].Message.(*utsns.UtsnsEntry)
		if e.GetNodename() == host && e.GetDomainname() == domain {
			continue
		}
		e.Nodename, e.Domainname = &host, &domain
		out[name] = img
	}
	return out, nil
}

// coldStartUTSNames returns the host name and domain name a container
// with a UTS namespace of its own starts with, on a node whose names are
// nodeHost and nodeDomain: runc's create leaves the namespace it makes
// with the node's, sets the spec's names where it has them, and writes the
// kernel.domainname sysctl after them.
func coldStartUTSNames(spec *specs.Spec, nodeHost, nodeDomain string) (host, domain string) {
	host, domain = nodeHost, nodeDomain
	if spec == nil {
		return host, domain
	}
	if spec.Hostname != "" {
		host = spec.Hostname
	}
	if spec.Domainname != "" {
		domain = spec.Domainname
	}
	if spec.Linux != nil {
		for key, v := range spec.Linux.Sysctl {
			if restorehook.SysctlKey(key) == "kernel.domainname" {
				domain = v
			}
		}
	}
	return host, domain
}

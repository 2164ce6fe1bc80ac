//go:build linux

package restore

import (
	"context"
	"fmt"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/confine"
	"github.com/snapboot/snapboot/seccompfilter"
)

// seccompFilter derives the filter runc installs on this node for
// profile, kept under the cache root (seccomp/) once derived.
func (r *Restorer) seccompFilter(ctx context.Context, profile *specs.LinuxSeccomp, runc string) ([]byte, error) {
	if runc == "" {
		runc = "runc"
	}
	p := seccompfilter.Prober{
		Runc: runc,
		Dir:  filepath.Join(r.cfg.Cache.Root, "seccomp"),
		// Not in tmp/, which the cache clears by age: a probe's bundle
		// goes only once its container is deleted.
		TmpDir: filepath.Join(r.cfg.Cache.Root, "seccomp", "probes"),
		Run:    r.RunCommand,
	}
	return p.Filter(ctx, profile)
}

// startSeccompFilter derives the spec's filter beside the pull, if the
// spec has a seccomp profile; wait returns it.
func (r *Restorer) startSeccompFilter(ctx context.Context, spec *specs.Spec, runc string) (wait func() ([]byte, error)) {
	if spec.Linux == nil || spec.Linux.Seccomp == nil {
		return func() ([]byte, error) { return nil, nil }
	}
	var filter []byte
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		filter, err = r.SeccompFilter(ctx, spec.Linux.Seccomp, runc)
	}()
	return func() ([]byte, error) {
		<-done
		if err != nil {
			return nil, fmt.Errorf("%w: the seccomp filter runc installs for the spec's profile: %w", confine.ErrRefused, err)
		}
		return filter, nil
	}
}

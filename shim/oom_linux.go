//go:build linux

package shim

import (
	"context"
	"fmt"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/containerd/v2/pkg/oom"
	oomv1 "github.com/containerd/containerd/v2/pkg/oom/v1"
	oomv2 "github.com/containerd/containerd/v2/pkg/oom/v2"
)

// The runc task service starts watching a container's cgroup for OOM kills
// when it creates the init process, which a restore does only at Start; a
// restored container would then be OOM-killed without a TaskOOM event, and
// Kubernetes would not report OOMKilled. snapboot watches the cgroups of
// restored containers itself, with containerd's own watchers.

// newOOMWatcher returns containerd's OOM watcher for this host's cgroup
// version, running until ctx ends; its events go to publisher.
func newOOMWatcher(ctx context.Context, publisher events.Publisher) (oom.Watcher, error) {
	var (
		w   oom.Watcher
		err error
	)
	if cgroups.Mode() == cgroups.Unified {
		w, err = oomv2.New(publisher)
	} else {
		w, err = oomv1.New(publisher)
	}
	if err != nil {
		return nil, fmt.Errorf("OOM watcher: %w", err)
	}
	go w.Run(ctx)
	return w, nil
}

// loadCgroup returns the cgroup of process pid: a cgroup1.Cgroup or a
// *cgroupsv2.Manager, as the host uses.
func loadCgroup(pid int) (any, error) {
	if cgroups.Mode() == cgroups.Unified {
		path, err := cgroupsv2.PidGroupPath(pid)
		if err != nil {
			return nil, err
		}
		return cgroupsv2.Load(path)
	}
	return cgroup1.Load(cgroup1.PidPath(pid))
}

// watchOOM watches the cgroup of a restored container's init process.
func (s *service) watchOOM(id string, pid int) error {
	if s.oom == nil {
		return fmt.Errorf("no OOM watcher")
	}
	cg, err := loadCgroup(pid)
	if err != nil {
		return fmt.Errorf("cgroup of pid %d: %w", pid, err)
	}
	return s.oom.Add(id, cg)
}

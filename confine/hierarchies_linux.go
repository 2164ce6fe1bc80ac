//go:build linux

package confine

import (
	"path"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// runcManaged are the cgroup v1 controllers (and named hierarchies) runc's
// cgroupfs manager makes a container's cgroup in.
var runcManaged = map[string]bool{
	"cpuset": true, "devices": true, "memory": true, "cpu": true, "cpuacct": true, "pids": true, "blkio": true,
	"hugetlb": true, "net_cls": true, "net_prio": true, "perf_event": true, "freezer": true, "rdma": true,
	"misc": true, "name=systemd": true,
}

// cgroupHierarchies returns this node's cgroup v1 hierarchies by the name
// runc gives their binds in a container (the base name of their mount
// point): the first mount of each hierarchy's root, as runc's cgroupfs
// manager finds it (a node whose hierarchies are mounted from elsewhere,
// nested in a container, keeps runc's binds).
// The manager makes a container's cgroup at that mount point joined with
// the spec's (absolute) cgroups path, whatever the mount's root, in the
// hierarchies of the controllers it knows (not in a named hierarchy of
// another init system's, such as name=elogind).
func cgroupHierarchies() map[string]cgroupHierarchy {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup" || m.Root != "/", false
	})
	if err != nil {
		return nil
	}
	out := map[string]cgroupHierarchy{}
	for _, m := range mounts {
		name := path.Base(m.Mountpoint)
		if _, dup := out[name]; dup {
			continue
		}
		h := cgroupHierarchy{Mountpoint: m.Mountpoint}
		for _, o := range strings.Split(m.VFSOptions, ",") {
			h.Managed = h.Managed || runcManaged[o]
		}
		out[name] = h
	}
	return out
}

// v1Controllers are the kernel's cgroup v1 controllers.
var v1Controllers = map[string]bool{
	"cpuset": true, "cpu": true, "cpuacct": true, "io": true, "blkio": true, "memory": true, "devices": true,
	"freezer": true, "net_cls": true, "perf_event": true, "net_prio": true, "hugetlb": true, "pids": true,
	"rdma": true, "misc": true, "debug": true,
}

// cgroupNames returns the names of this node's cgroup v1 hierarchies'
// controllers and named hierarchies ("name=systemd"), as their mounts'
// options list them.
func cgroupNames() map[string]bool {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup", false
	})
	if err != nil {
		return nil
	}
	out := map[string]bool{}
	for _, m := range mounts {
		for _, o := range strings.Split(m.VFSOptions, ",") {
			if v1Controllers[o] || strings.HasPrefix(o, "name=") {
				out[o] = true
			}
		}
	}
	return out
}

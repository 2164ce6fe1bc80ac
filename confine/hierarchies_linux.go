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

// v1Controllers are the kernel's cgroup v1 controllers.
var v1Controllers = map[string]bool{
	"cpuset": true, "cpu": true, "cpuacct": true, "io": true, "blkio": true, "memory": true, "devices": true,
	"freezer": true, "net_cls": true, "perf_event": true, "net_prio": true, "hugetlb": true, "pids": true,
	"rdma": true, "misc": true, "debug": true,
}

// cgroupV1Mounts reads this node's cgroup v1 mounts. It returns:
//   - its hierarchies by the name runc gives their binds in a container
//     (the base name of their mount point): the first mount of each
//     hierarchy's root, as runc's cgroupfs manager finds it (a node whose
//     hierarchies are mounted from elsewhere, nested in a container, keeps
//     runc's binds). The manager makes a container's cgroup at that mount
//     point joined with the spec's (absolute) cgroups path, whatever the
//     mount's root, in the hierarchies of the controllers it knows (not in
//     a named hierarchy of another init system's, such as name=elogind);
//   - the names of their controllers and named hierarchies
//     ("name=systemd"), as the mounts' options list them.
func cgroupV1Mounts() (hierarchies map[string]cgroupHierarchy, names map[string]bool) {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup", false
	})
	if err != nil {
		return nil, nil
	}
	hierarchies, names = map[string]cgroupHierarchy{}, map[string]bool{}
	for _, m := range mounts {
		opts := strings.Split(m.VFSOptions, ",")
		for _, o := range opts {
			if v1Controllers[o] || strings.HasPrefix(o, "name=") {
				names[o] = true
			}
		}
		name := path.Base(m.Mountpoint)
		if _, dup := hierarchies[name]; dup || m.Root != "/" {
			continue
		}
		h := cgroupHierarchy{Mountpoint: m.Mountpoint}
		for _, o := range opts {
			h.Managed = h.Managed || runcManaged[o]
		}
		hierarchies[name] = h
	}
	return hierarchies, names
}

//go:build linux

package confine

import (
	"path"

	"github.com/moby/sys/mountinfo"
)

// cgroupHierarchies returns this node's cgroup v1 hierarchies by the name
// runc gives their binds in a container (the base name of their mount
// point), with their mount points: the first mount of each, as runc's
// cgroupfs manager, which makes a container's cgroup at the mount point
// joined with the spec's (absolute) cgroups path, whatever the mount's
// root.
func cgroupHierarchies() map[string]string {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup", false
	})
	if err != nil {
		return nil
	}
	out := map[string]string{}
	for _, m := range mounts {
		if _, dup := out[path.Base(m.Mountpoint)]; !dup {
			out[path.Base(m.Mountpoint)] = m.Mountpoint
		}
	}
	return out
}

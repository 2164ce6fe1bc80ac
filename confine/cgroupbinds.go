package confine

import (
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	"github.com/snapboot/snapboot/criuconf"
)

// cgroupBindKeyPrefix names the external mounts rebindCgroups gives CRIU.
const cgroupBindKeyPrefix = "snapboot-cgroup-"

// cgroupHierarchy is a cgroup v1 hierarchy of the node: where it is
// mounted, and whether runc makes containers' cgroups in it (it knows
// every controller of it).
type cgroupHierarchy struct {
	Mountpoint string
	Managed    bool
}

// rebindCgroups points the cgroup v1 hierarchies runc binds by key at the
// container's own cgroups. For a spec without a cgroup namespace runc
// binds each hierarchy at <cgroup mount>/<name> by key, and at a restore
// maps every key to the directory of its own cgroup (it reads
// /proc/self/cgroup: the shim's cgroup, not the container's), where a
// cold start binds the container's. So each such mount gets a key of
// snapboot's own, and the CRIU config maps it (external mnt[KEY]:PATH) to
// the container's cgroup in the host's hierarchy of the same name, which
// runc has made by the time CRIU mounts (see RuncCgroupPath for where
// that is). With a cgroups path runc would not put there, or in a
// hierarchy runc makes no cgroup in, the mounts stay runc's.
//
// nodeHierarchies is called only then (it reads the node's mount table).
// mountImages are the mount images checkMounts decoded and accepted; the
// ones it changes are returned, with the config's mappings.
func rebindCgroups(mountImages map[string]*crit.CriuImage, spec *specs.Spec, nodeHierarchies func() map[string]cgroupHierarchy) (map[string]*crit.CriuImage, []string, error) {
	if spec.Linux == nil || nodeHierarchies == nil {
		return nil, nil, nil
	}
	cgPath, ok := RuncCgroupPath(spec.Linux.CgroupsPath)
	if !ok || !criuconf.Word(cgPath) {
		return nil, nil, nil
	}
	var cgroupDests []string // the spec's cgroup mounts
	for _, m := range spec.Mounts {
		if isCgroup(m) {
			cgroupDests = append(cgroupDests, path.Clean(m.Destination))
		}
	}
	if len(cgroupDests) == 0 {
		return nil, nil, nil
	}
	if hasCgroupNamespace(spec) {
		return nil, nil, nil
	}
	hierarchies := nodeHierarchies()
	if len(hierarchies) == 0 {
		return nil, nil, nil
	}
	rewritten := map[string]*crit.CriuImage{}
	var external []string
	for _, name := range slices.Sorted(maps.Keys(mountImages)) {
		img := mountImages[name]
		changed := false
		for _, e := range img.Entries {
			m, ok := e.Message.(*mnt.MntEntry)
			if !ok || mnt.Fstype(m.GetFstype()) != mnt.Fstype_CGROUP || m.ExtKey == nil {
				continue
			}
			// Only runc's own binds: the key is the mount point, a
			// hierarchy right under one of the spec's cgroup mounts,
			// named after the host's hierarchy (checkMounts made it
			// read-only where that mount is). Any other key stays as
			// it is, and so does a hierarchy this node does not have
			// where runc's restore could find it, or runc makes no
			// cgroup in.
			at := m.GetMountpoint()
			if path.Clean(m.GetExtKey()) != at || !slices.Contains(cgroupDests, path.Dir(at)) {
				continue
			}
			h, ok := hierarchies[path.Base(at)]
			if !ok || !h.Managed || !criuconf.Word(h.Mountpoint) {
				continue
			}
			key := fmt.Sprintf("%s%d", cgroupBindKeyPrefix, len(external))
			m.ExtKey = proto.String(key)
			external = append(external, fmt.Sprintf("mnt[%s]:%s", key, path.Join(h.Mountpoint, cgPath)))
			changed = true
		}
		if changed {
			rewritten[name] = img
		}
	}
	return rewritten, external, nil
}

// RuncCgroupPath is where, below each cgroup v1 hierarchy's mount point,
// runc makes the cgroup of a container whose spec has cgroupsPath:
//   - a cgroupfs path (absolute, as containerd gives one): that path;
//   - a systemd path, slice:prefix:name (containerd's CRI plugin with
//     SystemdCgroup, kubelet's systemd cgroup driver): the slice expanded
//     as systemd nests slices (a-b.slice is /a.slice/a-b.slice; none is
//     system.slice), then the unit, prefix-name.scope (or name itself
//     when it is a slice), as runc's systemd cgroup manager places it on
//     cgroup v1.
//
// It says false for anything else (a relative or unclean path, one runc
// would refuse): that container's mounts stay runc's. A systemd path with
// the cgroupfs driver (which runc would take as a relative path) maps to a
// directory that runc did not make; CRIU then fails to mount it, and the
// container cold-starts.
func RuncCgroupPath(cgroupsPath string) (string, bool) {
	if path.IsAbs(cgroupsPath) {
		return cgroupsPath, !strings.Contains(cgroupsPath, ":") && path.Clean(cgroupsPath) == cgroupsPath
	}
	parts := strings.Split(cgroupsPath, ":")
	if len(parts) != 3 || strings.Contains(parts[1], "/") || parts[2] == "" || strings.Contains(parts[2], "/") {
		return "", false
	}
	slice := "/system.slice"
	if parts[0] != "" {
		var ok bool
		if slice, ok = expandSlice(parts[0]); !ok {
			return "", false
		}
	}
	unit := parts[1] + "-" + parts[2] + ".scope"
	if strings.HasSuffix(parts[2], ".slice") {
		unit = parts[2]
	}
	return path.Join(slice, unit), true
}

// expandSlice turns a systemd slice's name into its path in the cgroup
// hierarchy: each dash a level (a-b-c.slice is
// /a.slice/a-b.slice/a-b-c.slice), -.slice the root. Names systemd would
// refuse (an empty part, a slash) say false.
func expandSlice(slice string) (string, bool) {
	name, ok := strings.CutSuffix(slice, ".slice")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	if name == "-" {
		return "/", true
	}
	var p, prefix string
	for _, part := range strings.Split(name, "-") {
		if part == "" {
			return "", false
		}
		p += "/" + prefix + part + ".slice"
		prefix += part + "-"
	}
	return p, true
}

package confine

import (
	"math"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// idMaps are the uid and gid maps of a spec's user namespace: which of
// the node's ids its ids are.
type idMaps struct {
	uids, gids []specs.LinuxIDMapping
}

func specIDMaps(spec *specs.Spec) *idMaps {
	m := &idMaps{}
	if spec.Linux != nil {
		m.uids, m.gids = spec.Linux.UIDMappings, spec.Linux.GIDMappings
	}
	return m
}

// unmappedID is the node's id of an id the namespace does not map: -1,
// which owns no file.
const unmappedID = math.MaxUint32

// uid and gid return the node's id of the namespace's id.
func (m *idMaps) uid(id uint32) uint32 { return toNode(id, m.uids) }
func (m *idMaps) gid(id uint32) uint32 { return toNode(id, m.gids) }

// maps reports whether the namespace maps both the node's uid and gid.
func (m *idMaps) maps(uid, gid uint32) bool {
	return inRanges(uid, m.uids) && inRanges(gid, m.gids)
}

func toNode(id uint32, ranges []specs.LinuxIDMapping) uint32 {
	for _, r := range ranges {
		if id >= r.ContainerID && uint64(id-r.ContainerID) < uint64(r.Size) {
			return r.HostID + (id - r.ContainerID)
		}
	}
	return unmappedID
}

func inRanges(node uint32, ranges []specs.LinuxIDMapping) bool {
	for _, r := range ranges {
		if node >= r.HostID && uint64(node-r.HostID) < uint64(r.Size) {
			return true
		}
	}
	return false
}

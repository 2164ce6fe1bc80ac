package confine

import (
	"fmt"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// propagation is what a restored mount may receive from, and send to,
// mounts outside the container. CRIU binds the container's root and every
// external mount from the node's mount tree and then makes each one
// shared, a slave or private as its image says: left shared, a bind stays
// in the peer group of the node's mount it came from, so that mounts made
// on either side appear on the other; made a slave, it receives the
// node's. runc gives a cold start the spec's propagation instead.
type propagation struct {
	shared bool // may stay a peer of the node's mount
	slave  bool // may receive the node's mounts
}

// propagationOf maps runc's propagation options; ok is false for an
// option that is not one.
func propagationOf(option string) (p propagation, ok bool) {
	switch option {
	case "private", "rprivate", "unbindable", "runbindable":
		return propagation{}, true
	case "slave", "rslave":
		return propagation{slave: true}, true
	case "shared", "rshared":
		// The node's mount may itself be a slave: its peers are too.
		return propagation{shared: true, slave: true}, true
	}
	return propagation{}, false
}

// rootPropagation is what runc gives the container's mount namespace
// before it mounts anything: the spec's rootfs propagation, rslave where
// the spec has none. A bind without a propagation option of its own keeps
// what its source has there.
func rootPropagation(spec *specs.Spec) propagation {
	if spec.Linux != nil {
		if p, ok := propagationOf(spec.Linux.RootfsPropagation); ok {
			return p
		}
	}
	return propagation{slave: true}
}

// bindPropagation is what runc gives one of the spec's bind mounts: its
// last propagation option (runc applies them in order), or the root's.
func (r *mountRules) bindPropagation(m specs.Mount) propagation {
	p := r.rootProp
	for _, o := range m.Options {
		if q, ok := propagationOf(o); ok {
			p = q
		}
	}
	return p
}

// keyPropagation checks e, an external mount with key: the spec's binds
// the key may stand for (binds) each allow its propagation, and any other
// key (runc's device nodes, /dev/null over masked files, cgroup v1
// hierarchies) the root's.
func (r *mountRules) keyPropagation(key string, binds []specs.Mount, e *mnt.MntEntry) error {
	if key == nullKey || r.devices[key] || len(binds) == 0 {
		return r.rootProp.allows(e, "the spec's rootfs propagation")
	}
	for _, m := range binds {
		if err := r.bindPropagation(m).allows(e, "the spec's propagation of "+m.Destination); err != nil {
			return err
		}
	}
	return nil
}

// allows checks that e, an external mount CRIU binds from the node, does
// not share more with the node's mounts than what, the spec's option,
// gives a cold start. CRIU makes a peer group of the images' own
// (internal sharing) anew, private to the container.
func (p propagation) allows(e *mnt.MntEntry, what string) error {
	return p.check(e, what, e.GetInternalSharing())
}

// allowsRoot is allows for the container's root, which CRIU makes shared
// as it is bound, internal sharing or not.
func (p propagation) allowsRoot(e *mnt.MntEntry, what string) error {
	return p.check(e, what, false)
}

func (p propagation) check(e *mnt.MntEntry, what string, internal bool) error {
	if e.GetSharedId() != 0 && !internal && !p.shared {
		return fmt.Errorf("%s is shared (peer group %d) with the node's mount it is bound from, which %s does not allow", e.GetMountpoint(), e.GetSharedId(), what)
	}
	if e.GetMasterId() != 0 && !p.slave {
		return fmt.Errorf("%s is a slave (of peer group %d) of the node's mounts, which %s does not allow", e.GetMountpoint(), e.GetMasterId(), what)
	}
	return nil
}

package confine

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/userns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/snapboot/snapboot/restorehook"
)

// nsID reads one namespace's id from a task's ids; ok is false when the
// image leaves it out.
type nsID func(*criucore.TaskKobjIdsEntry) (id uint32, ok bool)

// nsIDs maps the spec's namespace types to where CRIU keeps their ids.
var nsIDs = map[specs.LinuxNamespaceType]nsID{
	specs.PIDNamespace:     func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetPidNsId(), i.PidNsId != nil },
	specs.NetworkNamespace: func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetNetNsId(), i.NetNsId != nil },
	specs.MountNamespace:   func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetMntNsId(), i.MntNsId != nil },
	specs.IPCNamespace:     func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetIpcNsId(), i.IpcNsId != nil },
	specs.UTSNamespace:     func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetUtsNsId(), i.UtsNsId != nil },
	specs.UserNamespace:    func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetUserNsId(), i.UserNsId != nil },
	specs.CgroupNamespace:  func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetCgroupNsId(), i.CgroupNsId != nil },
	specs.TimeNamespace:    func(i *criucore.TaskKobjIdsEntry) (uint32, bool) { return i.GetTimeNsId(), i.TimeNsId != nil },
}

// checkNamespaces refuses a checkpoint whose tasks would be restored in
// CRIU's own namespaces, the host's, for a namespace the spec gives the
// container. CRIU creates a namespace for the root task only where the
// task's id (ids-<pid>.img) differs from the id the dumping CRIU had
// (inventory.img's root_ids), and runc creates none itself: images that
// repeat root_ids, or leave an id out, would run the clone in the host's
// IPC, UTS, mount or PID namespace. (A root task that is not PID 1 is
// CRIU's own business: it restores one only into the PID namespace runc
// hands it, the spec's, and fails otherwise.)
func checkNamespaces(imagesDir string, names []string, spec *specs.Spec) error {
	var wanted []specs.LinuxNamespaceType
	if spec.Linux != nil {
		for _, ns := range spec.Linux.Namespaces {
			if _, known := nsIDs[ns.Type]; !known {
				return fmt.Errorf("%w: unknown namespace type %q in the spec", ErrRefused, ns.Type)
			}
			wanted = append(wanted, ns.Type)
		}
	}
	if len(wanted) == 0 {
		return nil // the host's namespaces, all of them
	}
	inv, err := decodeOne(filepath.Join(imagesDir, "inventory.img"), &inventory.InventoryEntry{})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	root := inv.Entries[0].Message.(*inventory.InventoryEntry).GetRootIds()
	if root == nil {
		return fmt.Errorf("%w: inventory.img has no namespace ids of the dumping CRIU", ErrRefused)
	}
	ownUserNS := slices.Contains(wanted, specs.UserNamespace)
	ownTimeNS := slices.Contains(wanted, specs.TimeNamespace)
	tasks := 0
	for _, name := range names {
		if !strings.HasPrefix(name, "ids-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		img, err := decodeOne(filepath.Join(imagesDir, name), &criucore.TaskKobjIdsEntry{})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		ids := img.Entries[0].Message.(*criucore.TaskKobjIdsEntry)
		tasks++
		for _, typ := range wanted {
			id, ok := nsIDs[typ](ids)
			outside, known := nsIDs[typ](root)
			switch {
			case !ok || !known:
				return fmt.Errorf("%w: %s has no %s namespace id, CRIU would restore the task in the host's", ErrRefused, name, typ)
			case id == outside:
				return fmt.Errorf("%w: %s puts the task in the host's %s namespace, the spec gives the container its own", ErrRefused, name, typ)
			}
		}
		// A user namespace the spec does not have would come with the
		// image's uid and gid maps (userns.img): uid 1000 inside could be
		// root outside, past the checks on the credentials.
		if id, ok := nsIDs[specs.UserNamespace](ids); ok && !ownUserNS {
			if outside, known := nsIDs[specs.UserNamespace](root); !known || id != outside {
				return fmt.Errorf("%w: %s puts the task in a user namespace of its own, the spec has none", ErrRefused, name)
			}
		}
		// A time namespace the spec does not have would come with the
		// images' clock offsets (timens-*.img), which CRIU writes as root:
		// a cold start's process may make none without CAP_SYS_ADMIN.
		if id, ok := nsIDs[specs.TimeNamespace](ids); ok && !ownTimeNS {
			if outside, known := nsIDs[specs.TimeNamespace](root); !known || id != outside {
				return fmt.Errorf("%w: %s puts the task in a time namespace of its own, the spec has none", ErrRefused, name)
			}
		}
		if ownUserNS {
			id, _ := nsIDs[specs.UserNamespace](ids)
			if err := checkUserNSMaps(imagesDir, id, spec.Linux); err != nil {
				return err
			}
		}
	}
	if tasks == 0 {
		return fmt.Errorf("%w: no task namespace ids (ids-*.img) in the checkpoint", ErrRefused)
	}
	return nil
}

// checkNodePIDs refuses a spec without a PID namespace of its own, which
// restores in the node's, unless its capabilities could choose PIDs
// there: CRIU gives each restored process its image's PID, where a cold
// start gets the next free one. A process with a chosen PID could take
// over a node daemon's pid file, or another container's place in the
// node's process tree, once its process is gone; the kernel lets only
// CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN in the PID namespace's user
// namespace, the node's, choose them (clone3's set_tid, ns_last_pid).
//
// A spec that joins a PID namespace by path joins the node's where the path
// names the shim's own (nodePIDNS), or cannot be read. In another one (a
// pod's shared one) the restored processes get their PIDs in it, which a
// cold start could not choose either; CRIU fails where one is taken, and
// the README says what is left.
func checkNodePIDs(spec *specs.Spec, m masks) error {
	if ns, ok := restorehook.SpecNamespace(spec, specs.PIDNamespace); ok && (ns.Path == "" || !mayBeSameNamespace(ns.Path, nodePIDNS)) {
		return nil
	}
	caps, nodeCaps := grantedCaps(spec, m)
	if nodeCaps && caps&(1<<unix.CAP_CHECKPOINT_RESTORE|1<<unix.CAP_SYS_ADMIN) != 0 {
		return nil
	}
	return fmt.Errorf("%w: the spec has no PID namespace of its own, and CRIU would give the restored processes the checkpoint's PIDs in the node's, which the spec's capabilities (no CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN on the node) could not choose", ErrRefused)
}

// nodePIDNS names the node's PID namespace: the shim's.
var nodePIDNS = "/proc/self/ns/pid"

// mayBeSameNamespace reports whether the namespace files a and b may be
// the same namespace: they are, or one cannot be read.
func mayBeSameNamespace(a, b string) bool {
	var sa, sb unix.Stat_t
	if unix.Stat(a, &sa) != nil || unix.Stat(b, &sb) != nil {
		return true
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// checkUserNSMaps refuses a user namespace whose uid or gid map is not the
// spec's: CRIU writes the maps from the image.
func checkUserNSMaps(imagesDir string, id uint32, l *specs.Linux) error {
	name := fmt.Sprintf("userns-%d.img", id)
	img, err := decodeOne(filepath.Join(imagesDir, name), &userns.UsernsEntry{})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if len(l.UIDMappings) == 0 || len(l.GIDMappings) == 0 {
		return fmt.Errorf("%w: the spec's user namespace lists no uid or gid maps, so snapboot cannot tell which of the node's ids its users are", ErrRefused)
	}
	e := img.Entries[0].Message.(*userns.UsernsEntry)
	if !sameMaps(e.GetUidMap(), l.UIDMappings) || !sameMaps(e.GetGidMap(), l.GIDMappings) {
		return fmt.Errorf("%w: the checkpoint's user namespace (%s) maps uids %s and gids %s, the spec's maps uids %s and gids %s; CRIU would make it with the checkpoint's maps",
			ErrRefused, name, imageMaps(e.GetUidMap()), imageMaps(e.GetGidMap()), specMaps(l.UIDMappings), specMaps(l.GIDMappings))
	}
	return nil
}

// imageMaps and specMaps write id maps as uid_map does, one
// "inside outside count" per range, ranges separated by commas.
func imageMaps(m []*userns.UidGidExtent) string {
	var out []string
	for _, x := range m {
		out = append(out, fmt.Sprintf("%d %d %d", x.GetFirst(), x.GetLowerFirst(), x.GetCount()))
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func specMaps(m []specs.LinuxIDMapping) string {
	var out []string
	for _, x := range m {
		out = append(out, fmt.Sprintf("%d %d %d", x.ContainerID, x.HostID, x.Size))
	}
	return "[" + strings.Join(out, ", ") + "]"
}

func sameMaps(image []*userns.UidGidExtent, spec []specs.LinuxIDMapping) bool {
	if len(image) != len(spec) {
		return false
	}
	for i, x := range image {
		m := spec[i]
		if x.GetFirst() != m.ContainerID || x.GetLowerFirst() != m.HostID || x.GetCount() != m.Size {
			return false
		}
	}
	return true
}

// decodeOne decodes an image that holds exactly one entry of msg's type.
// go-criu picks the type from the image's magic: an image of another kind
// under this name is refused here, not taken for msg's type.
func decodeOne(path string, msg proto.Message) (*crit.CriuImage, error) {
	img, err := decodeImage(path, msg)
	if err != nil {
		return nil, err
	}
	if len(img.Entries) != 1 {
		return nil, fmt.Errorf("decode %s: %d entries, want 1", filepath.Base(path), len(img.Entries))
	}
	if got := img.Entries[0].Message; got == nil || got.ProtoReflect().Descriptor() != msg.ProtoReflect().Descriptor() {
		return nil, fmt.Errorf("decode %s: not a %s image", filepath.Base(path), msg.ProtoReflect().Descriptor().Name())
	}
	return img, nil
}

// checkpointNetns returns the network namespace id of the checkpoint's
// tasks (known is false without task ids), and refuses tasks in more than
// one network namespace, or images of more than one (netns-*.img): CRIU
// would make the others and fill them from the images (links, addresses,
// routes, firewall rules) as root, where runc leaves the container's own
// empty for its hooks or joins the one the spec names.
func checkpointNetns(imagesDir string, names []string) (id uint32, known bool, err error) {
	images := 0
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, "netns-") && strings.HasSuffix(name, ".img"):
			if images++; images > 1 {
				return 0, false, fmt.Errorf("the checkpoint has more than one network namespace (%s); CRIU would make and fill the others as root", name)
			}
		case strings.HasPrefix(name, "ids-") && strings.HasSuffix(name, ".img"):
			img, err := decodeOne(filepath.Join(imagesDir, name), &criucore.TaskKobjIdsEntry{})
			if err != nil {
				return 0, false, err
			}
			ids := img.Entries[0].Message.(*criucore.TaskKobjIdsEntry)
			if ids.NetNsId == nil {
				continue
			}
			if known && ids.GetNetNsId() != id {
				return 0, false, fmt.Errorf("the checkpoint's tasks are in more than one network namespace (%s: %d, another: %d); CRIU would make and fill the others as root", name, ids.GetNetNsId(), id)
			}
			id, known = ids.GetNetNsId(), true
		}
	}
	return id, known, nil
}

// emptyConntrack returns, to be written empty, the conntrack images
// (netns-ct-*.img, netns-exp-*.img) that have entries, unless the spec
// grants CAP_NET_ADMIN where the sockets are (capsCount): CRIU sends their
// netlink messages to the kernel's netfilter as they are, as root, in the
// container's network namespace, even in one runc leaves empty or the
// spec joins (a pod's): conntrack entries and expectations, NAT mappings
// included, that the cold start could not make. rewritten values are nil:
// empty raw images.
func emptyConntrack(imagesDir string, names []string, spec *specs.Spec, m masks, capsCount bool) (map[string]*crit.CriuImage, error) {
	caps, _ := grantedCaps(spec, m)
	if capsCount && caps&(1<<unix.CAP_NET_ADMIN) != 0 {
		return nil, nil
	}
	var out map[string]*crit.CriuImage
	for _, name := range names {
		if !strings.HasSuffix(name, ".img") || !strings.HasPrefix(name, "netns-ct-") && !strings.HasPrefix(name, "netns-exp-") {
			continue
		}
		fi, err := os.Stat(filepath.Join(imagesDir, name))
		if err != nil {
			return nil, err
		}
		if fi.Size() > 0 {
			if out == nil {
				out = map[string]*crit.CriuImage{}
			}
			out[name] = nil
		}
	}
	return out, nil
}

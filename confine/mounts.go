package confine

import (
	"fmt"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/restorehook"
)

const (
	msRdonly = 0x1 // MS_RDONLY in a mount entry's flags
	msNosuid = 0x2 // MS_NOSUID
	msNodev  = 0x4 // MS_NODEV
	msNoexec = 0x8 // MS_NOEXEC
)

// flagOptions are the spec's mount options a restored mount must keep as
// its flags: CRIU mounts (and remounts a bind) with the image's flags, so
// a crafted one could run a volume's setuid programs, open its devices
// or execute from a noexec /dev/shm. Every dump has them, as the kernel
// shows the mounts runc made.
var flagOptions = []struct {
	option string
	flag   uint32
}{{"nosuid", msNosuid}, {"nodev", msNodev}, {"noexec", msNoexec}}

// keepsFlags checks that e has the flags of the spec's options.
func keepsFlags(e *mnt.MntEntry, options []string, what string) error {
	for _, f := range flagOptions {
		if slices.Contains(options, f.option) && e.GetFlags()&f.flag == 0 {
			return fmt.Errorf("%s is not %s, the spec mounts %s %s", e.GetMountpoint(), f.option, what, f.option)
		}
	}
	return nil
}

// nullKey is the external-mount key runc gives CRIU for the masked paths
// that are files: /dev/null bound over them.
const nullKey = "/dev/null"

// mountRules is what the spec allows the restored mount tree to hold.
type mountRules struct {
	byDest    map[string]specs.Mount // the spec's mounts by destination
	devices   map[string]bool        // device nodes runc binds from the host
	masked    []string               // cleaned
	readonly  []string               // cleaned
	hostHas   func(string) bool      // whether a path exists in the host's /proc or /sys
	imageName string
	rootRO    bool            // the spec's root is read-only
	rootProp  propagation     // what the spec's rootfs propagation lets the root, and binds without their own, be
	userns    bool            // the spec has a user namespace
	memPages  uint64          // the node's memory, in pages
	cgroupNS  bool            // the spec has a cgroup namespace
	ids       map[uint32]bool // mount ids of the images checked so far
}

// checkMounts refuses a checkpoint whose mount tree (mountpoints-*.img)
// would give the clone more than its spec: CRIU rebuilds the mount tree
// from the images, and runc applies nothing of the spec's over it. Every
// mount must be the container's root, a fresh tmpfs (nosuid or read-only),
// devpts or mqueue at one of the spec's destinations or masked
// directories, one of the spec's own mounts (bind mounts at their external
// key, proc, sysfs and cgroup file systems at the spec's destinations), or
// a read-only view of a path the spec makes read-only;
// one a place, on the mount its place is in. Every masked path and
// read-only path of the spec that the host's kernel has must be masked or
// read-only in the images, and every mount the spec makes read-only (the
// root too) must be read-only.
//
// hostHas reports whether a masked or read-only path exists on this host:
// runc masks only what exists, so a donor's images hold masks for exactly
// those paths.
//
// It returns the mount images it decoded, by name.
func checkMounts(imagesDir string, names []string, spec *specs.Spec, hostHas func(string) bool) (map[string]*crit.CriuImage, error) {
	r := mountRules{byDest: map[string]specs.Mount{}, devices: map[string]bool{}, hostHas: hostHas, ids: map[uint32]bool{},
		rootRO: spec.Root != nil && spec.Root.Readonly, cgroupNS: hasCgroupNamespace(spec), rootProp: rootPropagation(spec), memPages: nodeMemPages()}
	_, r.userns = restorehook.SpecNamespace(spec, specs.UserNamespace)
	for _, m := range spec.Mounts {
		r.byDest[path.Clean(m.Destination)] = m
	}
	for _, d := range runcDevices {
		r.devices[d.Path] = true
	}
	if spec.Linux != nil {
		r.masked, r.readonly = cleaned(spec.Linux.MaskedPaths), cleaned(spec.Linux.ReadonlyPaths)
		for _, d := range spec.Linux.Devices {
			r.devices[path.Clean(d.Path)] = true
		}
	}
	images := map[string]*crit.CriuImage{}
	for _, name := range names {
		if !strings.HasPrefix(name, "mountpoints-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		if len(images) > 0 {
			// CRIU binds the first namespace's root from the container's
			// rootfs, and mounts the others' roots as the images say.
			return nil, fmt.Errorf("%w: the checkpoint has more than one mount namespace (%s), whose roots CRIU would mount from the images", ErrRefused, name)
		}
		img, entries, err := decodeMounts(filepath.Join(imagesDir, name))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRefused, err)
		}
		r.imageName = name
		if err := r.check(entries); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRefused, err)
		}
		images[name] = img
	}
	return images, nil
}

func decodeMounts(p string) (*crit.CriuImage, []*mnt.MntEntry, error) {
	img, err := decodeImage(p, &mnt.MntEntry{})
	if err != nil {
		return nil, nil, err
	}
	out := make([]*mnt.MntEntry, 0, len(img.Entries))
	for _, e := range img.Entries {
		m, ok := e.Message.(*mnt.MntEntry)
		if !ok {
			return nil, nil, fmt.Errorf("decode %s: not a mount entry", filepath.Base(p))
		}
		out = append(out, m)
	}
	return img, out, nil
}

func (r *mountRules) check(entries []*mnt.MntEntry) error {
	ids := map[uint32]bool{}
	for _, e := range entries {
		ids[e.GetMntId()] = true
	}
	var root *mnt.MntEntry
	byID, at := map[uint32]*mnt.MntEntry{}, map[string]bool{}
	for _, e := range entries {
		for _, p := range []string{e.GetMountpoint(), e.GetRoot()} {
			if !path.IsAbs(p) || path.Clean(p) != p {
				return fmt.Errorf("%s: mount %d has the path %q, which is not clean and absolute", r.imageName, e.GetMntId(), p)
			}
		}
		// One mount a place: a second one there would hide the first, and
		// the masks on it.
		if at[e.GetMountpoint()] {
			return fmt.Errorf("%s: two mounts at %s", r.imageName, e.GetMountpoint())
		}
		at[e.GetMountpoint()] = true
		// CRIU looks parents up across every mount namespace's images.
		if r.ids[e.GetMntId()] {
			return fmt.Errorf("%s: mount id %d used twice", r.imageName, e.GetMntId())
		}
		r.ids[e.GetMntId()] = true
		byID[e.GetMntId()] = e
	}
	for _, e := range entries {
		// Its parent is the mount its place is in: a mask whose parent is
		// mounted elsewhere could go on before the file system it masks,
		// and end up under it.
		if parent := byID[e.GetParentMntId()]; parent != nil && parent != coveringMount(e.GetMountpoint(), entries) {
			return fmt.Errorf("%s: %s is mounted on %s, which is not the mount it is in", r.imageName, e.GetMountpoint(), parent.GetMountpoint())
		}
		if !ids[e.GetParentMntId()] {
			if root != nil {
				return fmt.Errorf("%s: more than one root mount", r.imageName)
			}
			root = e
			continue
		}
		if err := r.allowed(e, entries); err != nil {
			return fmt.Errorf("%s: %w", r.imageName, err)
		}
	}
	if root == nil || root.GetMountpoint() != "/" || root.GetRoot() != "/" {
		return fmt.Errorf("%s: no root mount at /", r.imageName)
	}
	if root.GetExtMount() || root.GetDeleted() || root.ExtKey != nil {
		return fmt.Errorf("%s: the root mount is external or deleted", r.imageName)
	}
	if err := r.rootProp.allowsRoot(root, "the spec's rootfs propagation"); err != nil {
		return fmt.Errorf("%s: %w", r.imageName, err)
	}
	if err := checkAliases(entries, root); err != nil {
		return fmt.Errorf("%s: %w", r.imageName, err)
	}
	// CRIU remounts the root with the image's flags.
	if r.rootRO && !isReadOnly(root) {
		return fmt.Errorf("%s: the root is read-write, the spec makes it read-only", r.imageName)
	}
	for _, p := range r.masked {
		if err := r.covered(p, entries, isMask, "masked"); err != nil {
			return fmt.Errorf("%s: %w", r.imageName, err)
		}
	}
	for _, p := range r.readonly {
		if err := r.covered(p, entries, isReadOnly, "read-only"); err != nil {
			return fmt.Errorf("%s: %w", r.imageName, err)
		}
	}
	return nil
}

// allowed checks one mount that is not the root.
func (r *mountRules) allowed(e *mnt.MntEntry, entries []*mnt.MntEntry) error {
	where := e.GetMountpoint()
	specMount, inSpec := runcMountOf(r.byDest, e)
	if inSpec && slices.Contains(specMount.Options, "ro") && !isReadOnly(e) {
		return fmt.Errorf("%s is read-write, the spec mounts it read-only", where)
	}
	if inSpec && !isCgroup(specMount) {
		if err := keepsFlags(e, specMount.Options, "it"); err != nil {
			return err
		}
	}
	if e.GetWithPlugin() {
		return fmt.Errorf("%s is restored by a CRIU plugin", where)
	}
	// CRIU's older external flag takes the entry's root for a key runc
	// maps, past the checks of external mounts; and a deleted mount's
	// root CRIU makes and removes as root.
	if e.GetExtMount() {
		return fmt.Errorf("%s is an external mount in CRIU's older form (ext_mount), keyed by its root %q", where, e.GetRoot())
	}
	if e.GetDeleted() {
		return fmt.Errorf("%s is a mount whose root was deleted", where)
	}
	if e.ExtKey != nil {
		// CRIU binds the host path runc maps the key to.
		return r.external(e)
	}
	switch fs := mnt.Fstype(e.GetFstype()); fs {
	case mnt.Fstype_TMPFS, mnt.Fstype_DEVPTS, mnt.Fstype_MQUEUE:
		// Fresh instances. CRIU would resolve a bind of a path within one
		// (a symbolic link in a tmpfs's restored contents) in the host's
		// mount tree.
		if e.GetRoot() != "/" {
			return fmt.Errorf("%s binds %s of a %s mount", where, e.GetRoot(), mnt.Fstype(e.GetFstype()))
		}
		// CRIU unpacks a tmpfs's contents with tar, as root: setuid
		// programs too, which only nosuid (or read-only) keeps unused.
		if mnt.Fstype(e.GetFstype()) == mnt.Fstype_TMPFS && e.GetFlags()&(msNosuid|msRdonly) == 0 {
			return fmt.Errorf("%s is a tmpfs without nosuid", where)
		}
		// Where runc mounts one: a mount of the spec's, of its type, or a
		// masked directory (a read-only tmpfs). CRIU would make a mount
		// point the spec does not have as root where it is missing, in a
		// volume too, and one at a volume's place would hide the volume.
		if !inSpec && !slices.Contains(r.masked, where) {
			return fmt.Errorf("%s is a %s mount the spec does not have", where, mnt.Fstype(e.GetFstype()))
		}
		if inSpec && specMount.Type != fsTypeNames[fs] {
			return fmt.Errorf("%s is a %s mount, the spec mounts %s there", where, fsTypeNames[fs], describeType(specMount))
		}
		// CRIU mounts it with the image's options.
		if inSpec && fs == mnt.Fstype_TMPFS {
			return checkTmpfsOptions(e, specMount, r.userns, r.memPages)
		}
		return nil
	case mnt.Fstype_PROC, mnt.Fstype_SYSFS:
		want := map[mnt.Fstype]string{mnt.Fstype_PROC: "proc", mnt.Fstype_SYSFS: "sysfs"}[fs]
		if inSpec && specMount.Type == want && e.GetRoot() == "/" {
			return nil
		}
		// runc's read-only paths: the file system bound over itself.
		if parent := coveringMount(where, entries); parent != nil && parent.GetFstype() == e.GetFstype() &&
			slices.Contains(r.readonly, where) && isReadOnly(e) &&
			e.GetRoot() == "/"+strings.TrimPrefix(strings.TrimPrefix(where, parent.GetMountpoint()), "/") {
			return nil
		}
		return fmt.Errorf("%s mounts %s, which the spec does not mount there", where, want)
	case mnt.Fstype_CGROUP, mnt.Fstype_CGROUP2:
		dest, m, ok := r.cgroupMount(where)
		if !ok {
			return fmt.Errorf("%s is a cgroup mount the spec does not have", where)
		}
		// Not bound from the host by key: CRIU mounts the file system
		// itself, with the image's root as it is (runc's cgroup roots
		// rewrite cgroup.img, not the mounts). The kernel shows a new
		// cgroup mount from the root of the mounting task's cgroup
		// namespace: without one of the container's own, that is the
		// host's whole hierarchy. runc binds a container's cgroup v1
		// hierarchies by key when it has no cgroup namespace; with one,
		// checkCgroups makes sure CRIU creates it before the mounts.
		// On cgroup v2 without a cgroup namespace runc's cold start
		// mounts cgroup2 itself too, from the hierarchy's root.
		if !r.cgroupNS && (fs == mnt.Fstype_CGROUP || e.GetRoot() != "/") {
			return fmt.Errorf("%s is a cgroup file system CRIU would mount in the host's cgroup namespace (the whole hierarchy), and the spec has no cgroup namespace", where)
		}
		if slices.Contains(m.Options, "ro") && !isReadOnly(e) {
			return fmt.Errorf("%s is a read-write cgroup mount, the spec mounts %s read-only", where, dest)
		}
		return nil
	default:
		return fmt.Errorf("%s is a mount of type %s, which snapboot does not restore", where, mnt.Fstype(e.GetFstype()))
	}
}

// external checks a mount CRIU binds from the host: runc maps a key for
// each of the spec's bind mounts, the cgroup v1 hierarchies under the spec's
// cgroup mount, every device node, and /dev/null for masked files. A key
// runc does not map fails the restore.
func (r *mountRules) external(e *mnt.MntEntry) error {
	where, key := e.GetMountpoint(), path.Clean(e.GetExtKey())
	binds := bindsForKey(r.byDest, key)
	if err := r.keyPropagation(key, binds, e); err != nil {
		return err
	}
	if key == nullKey {
		return nil // runc's /dev/null, bound over a masked file
	}
	// runc keys a mount by its destination with the rootfs's links
	// resolved, when it dumps as when it restores, and CRIU mounts it at
	// the image's mount point: a crafted one could put the spec's volume
	// elsewhere, CRIU making the directories on the way, as root, in
	// another volume.
	at := func() error {
		if where != key {
			return fmt.Errorf("%s is the external mount %q, which runc mounts at %s", where, e.GetExtKey(), key)
		}
		return nil
	}
	if r.devices[key] {
		return at()
	}
	// Read-only if any of the binds the key may stand for is. (A key runc
	// does not have fails the restore in CRIU.)
	ro := false
	for _, m := range binds {
		ro = ro || slices.Contains(m.Options, "ro")
	}
	if len(binds) > 0 {
		if ro && !isReadOnly(e) {
			return fmt.Errorf("%s binds %s read-write, the spec mounts it read-only", where, key)
		}
		for _, m := range binds {
			if err := keepsFlags(e, m.Options, key); err != nil {
				return err
			}
		}
		return at()
	}
	if dest, m, ok := r.cgroupMount(key); ok {
		if slices.Contains(m.Options, "ro") && !isReadOnly(e) {
			return fmt.Errorf("%s binds cgroup %s read-write, the spec mounts %s read-only", where, key, dest)
		}
		return at()
	}
	return fmt.Errorf("%s is an external mount %q that the spec does not have", where, e.GetExtKey())
}

// checkAliases refuses a mount CRIU would bind from the root or from an
// external mount instead of mounting it anew: CRIU takes two mounts of the
// same device (root_dev) for views of one file system, and binds the one
// whose root is within the other's from it, whatever its type. A tmpfs of
// the spec's could so become a writable view of a read-only volume, or a
// slave of the node's mount (CRIU copies an external's peer group to the
// mounts bound from it). Nor may a mount CRIU makes anew be a slave of a
// peer group the images do not have: CRIU would look for it outside.
func checkAliases(entries []*mnt.MntEntry, root *mnt.MntEntry) error {
	groups := map[uint32]bool{}
	for _, e := range entries {
		if e.GetSharedId() != 0 {
			groups[e.GetSharedId()] = true
		}
	}
	for _, e := range entries {
		if e == root || e.ExtKey != nil {
			continue
		}
		for _, x := range entries {
			if (x == root || x.ExtKey != nil) && x.GetRootDev() == e.GetRootDev() && isSubPath(e.GetRoot(), x.GetRoot()) {
				return fmt.Errorf("%s has the device of %s (%d), from which CRIU would bind it", e.GetMountpoint(), x.GetMountpoint(), e.GetRootDev())
			}
			// CRIU groups mounts with an external one by device and
			// options alone, and binds one of the group from another
			// whatever their types: a mask's tmpfs from a fresh proc.
			if x != root && x.ExtKey == nil && x.GetRootDev() == e.GetRootDev() && (x.GetFstype() != e.GetFstype() || x.GetSource() != e.GetSource()) {
				return fmt.Errorf("%s (%s) has the device of %s (%s), from which CRIU could bind it", e.GetMountpoint(), mnt.Fstype(e.GetFstype()), x.GetMountpoint(), mnt.Fstype(x.GetFstype()))
			}
		}
		if m := e.GetMasterId(); m != 0 && !groups[m] {
			return fmt.Errorf("%s is a slave of peer group %d, which no mount of the checkpoint is in", e.GetMountpoint(), m)
		}
	}
	return nil
}

// isSubPath reports whether p is base or below it (both clean and
// absolute).
func isSubPath(p, base string) bool {
	return p == base || base == "/" || strings.HasPrefix(p, base+"/")
}

// bindsForKey returns the spec's bind mounts (byDest, by destination) an
// external mount's key may stand for: the one at the key, or, as runc
// resolves a destination's symbolic links in the rootfs for the key
// (/var/run/secrets/… is /run/secrets/… where /var/run is a link to
// /run), and the rootfs is not at hand here, every one of the same name.
func bindsForKey(byDest map[string]specs.Mount, key string) []specs.Mount {
	key = path.Clean(key)
	if m, ok := byDest[key]; ok && isBind(m) {
		return []specs.Mount{m}
	}
	var out []specs.Mount
	for _, dest := range slices.Sorted(maps.Keys(byDest)) {
		if m := byDest[dest]; isBind(m) && path.Base(dest) == path.Base(key) {
			out = append(out, m)
		}
	}
	return out
}

// cgroupMount finds the spec's cgroup mount at or above p.
func (r *mountRules) cgroupMount(p string) (string, specs.Mount, bool) {
	for dest, m := range r.byDest {
		if isCgroup(m) && (p == dest || strings.HasPrefix(p, dest+"/")) {
			return dest, m, true
		}
	}
	return "", specs.Mount{}, false
}

// covered checks that a masked or read-only path of the spec is so in the
// images, where it matters: inside a proc or sysfs mount, if the host has
// the path. A path in the rootfs is the image's own business.
func (r *mountRules) covered(p string, entries []*mnt.MntEntry, ok func(*mnt.MntEntry) bool, what string) error {
	parent := coveringMount(p, entries)
	if parent == nil {
		return nil
	}
	if fs := mnt.Fstype(parent.GetFstype()); fs != mnt.Fstype_PROC && fs != mnt.Fstype_SYSFS {
		return nil
	}
	if what == "read-only" && isReadOnly(parent) {
		return nil
	}
	for _, e := range entries {
		if e.GetMountpoint() == p && ok(e) {
			return nil
		}
	}
	if !r.hostHas(p) {
		return nil
	}
	return fmt.Errorf("%s is not %s; the spec makes it so", p, what)
}

// coveringMount is the deepest mount strictly above p.
func coveringMount(p string, entries []*mnt.MntEntry) *mnt.MntEntry {
	var best *mnt.MntEntry
	for _, e := range entries {
		mp := e.GetMountpoint()
		if mp == p || !(mp == "/" || strings.HasPrefix(p, mp+"/")) {
			continue
		}
		if best == nil || len(mp) > len(best.GetMountpoint()) {
			best = e
		}
	}
	return best
}

func isReadOnly(e *mnt.MntEntry) bool { return e.GetFlags()&msRdonly != 0 }

// isMask is what runc puts over a masked path: /dev/null for a file, an
// empty read-only tmpfs for a directory.
func isMask(e *mnt.MntEntry) bool {
	return e.GetExtKey() == nullKey || (mnt.Fstype(e.GetFstype()) == mnt.Fstype_TMPFS && isReadOnly(e))
}

// fsTypeNames are the spec's types of the file systems CRIU mounts anew.
var fsTypeNames = map[mnt.Fstype]string{mnt.Fstype_TMPFS: "tmpfs", mnt.Fstype_DEVPTS: "devpts", mnt.Fstype_MQUEUE: "mqueue"}

// describeType names what the spec mounts in m.
func describeType(m specs.Mount) string {
	if isBind(m) {
		return "a bind of " + m.Source
	}
	return "a " + m.Type + " mount"
}

func isCgroup(m specs.Mount) bool { return m.Type == "cgroup" || m.Type == "cgroup2" }

// runcMountOf returns the mount runc makes where the image has e, from
// the spec's mounts by destination: the spec's mount there, or for a
// tmpfs where the spec mounts a cgroup file system, the tmpfs runc holds
// cgroup v1 hierarchies in (runc's mountCgroupV1: its default flags and
// mode 755, no bounds, left writable).
func runcMountOf(byDest map[string]specs.Mount, e *mnt.MntEntry) (specs.Mount, bool) {
	m, ok := byDest[e.GetMountpoint()]
	if ok && isCgroup(m) && mnt.Fstype(e.GetFstype()) == mnt.Fstype_TMPFS {
		return specs.Mount{Destination: m.Destination, Type: "tmpfs", Source: "tmpfs",
			Options: []string{"nosuid", "noexec", "nodev", "mode=755"}}, true
	}
	return m, ok
}

func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

func cleaned(paths []string) []string {
	out := make([]string, len(paths))
	for i, p := range paths {
		out[i] = path.Clean(p)
	}
	return out
}

// hostHas reports whether the host has p, a path in /proc or /sys.
func hostHas(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// checkIDMappedMounts refuses a spec with an ID-mapped mount (its own uid
// and gid maps, or runc's idmap and ridmap options): runc hands CRIU the
// mount's source as it is, and CRIU binds it without the maps, so the
// restored app would see, and CRIU judge, other owners than a cold start.
func checkIDMappedMounts(spec *specs.Spec) error {
	for _, m := range spec.Mounts {
		mapped := len(m.UIDMappings) > 0 || len(m.GIDMappings) > 0 ||
			slices.Contains(m.Options, "idmap") || slices.Contains(m.Options, "ridmap")
		if mapped {
			return fmt.Errorf("%w: the spec's mount at %s is ID-mapped, which CRIU does not restore (it binds the source unmapped)", ErrRefused, m.Destination)
		}
	}
	return nil
}

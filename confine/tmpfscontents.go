package confine

import (
	"archive/tar"
	"fmt"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// checkTmpfsContents holds what CRIU puts in the container's tmpfs mounts
// (see tmpfsTrees), unpacked as root, to what the spec's user could have
// made there: a cold start gets them empty but for what runc makes, and a
// root's file the user could not make (a sudo timestamp in /run, say) may
// be trusted by a setuid program of the image. As for the rootfs changes
// (CheckRootfsChanges), nothing is checked where the spec's capabilities
// let its user past any file's permission bits. Otherwise:
//   - the tmpfs's root has the spec's mode and owner (the owner may have
//     changed its mode);
//   - what runc makes is the container root's: mount points below the
//     tmpfs and the directories on the way, not writable by others, and
//     in /dev the spec's device nodes (in a user namespace, the empty
//     files runc binds them on) and runc's links;
//   - anything else was made by the user: in a directory it may write to
//     and search (or owns), every directory on the way searchable, owned
//     by the user and one of its groups (or the directory's, where that is
//     set-group-ID) unless it has CAP_CHOWN, set-ID bits only as the
//     kernel would keep them, and no device node without CAP_MKNOD (none
//     in a user namespace).
//
// The masked directories' read-only tmpfs mounts must be empty. In the
// tmpfs runc holds cgroup v1 hierarchies in, runc makes their mount points
// and, for each controller of a co-mounted hierarchy, a link to it (cpu to
// cpu,cpuacct).
func (a *fileAccess) checkTmpfsContents(spec *specs.Spec) error {
	t := tmpfsRules{a: a, caps: a.caps | a.nsCaps, byDest: map[string]specs.Mount{}, devices: map[string]specs.LinuxDevice{}}
	if t.has(unix.CAP_DAC_OVERRIDE) || t.has(unix.CAP_SETUID) && t.has(unix.CAP_SETGID) {
		return nil
	}
	if spec.Process != nil {
		u := spec.Process.User
		t.uid, t.gids = u.UID, append([]uint32{u.GID}, u.AdditionalGids...)
	}
	for _, m := range spec.Mounts {
		t.byDest[path.Clean(m.Destination)] = m
		t.mountPoints = append(t.mountPoints, path.Clean(m.Destination))
	}
	for _, m := range a.mounts {
		t.mountPoints = append(t.mountPoints, m.GetMountpoint())
	}
	for _, d := range runcDevices {
		t.devices[d.Path] = d
	}
	if spec.Linux != nil {
		for _, d := range spec.Linux.Devices {
			t.devices[path.Clean(d.Path)] = d
		}
	}
	for p := range t.devices {
		t.mountPoints = append(t.mountPoints, p)
	}
	if a.cwd != "" {
		t.mountPoints = append(t.mountPoints, a.cwd)
	}
	t.console = spec.Process != nil && spec.Process.Terminal
	for _, m := range a.mounts {
		if mnt.Fstype(m.GetFstype()) != mnt.Fstype_TMPFS || m.ExtKey != nil || m.GetRoot() != "/" {
			continue
		}
		specMount, inSpec := runcMountOf(t.byDest, m)
		if err := t.check(m, specMount, inSpec); err != nil {
			return err
		}
	}
	return nil
}

// runcDevices are the device nodes runc gives every container, listed in
// the spec or not, as it makes them.
var runcDevices = []specs.LinuxDevice{
	{Path: "/dev/null", Type: "c", Major: 1, Minor: 3},
	{Path: "/dev/zero", Type: "c", Major: 1, Minor: 5},
	{Path: "/dev/full", Type: "c", Major: 1, Minor: 7},
	{Path: "/dev/tty", Type: "c", Major: 5, Minor: 0},
	{Path: "/dev/random", Type: "c", Major: 1, Minor: 8},
	{Path: "/dev/urandom", Type: "c", Major: 1, Minor: 9},
}

// runcDevLinks are the symbolic links runc makes in /dev, with their
// targets.
var runcDevLinks = map[string]string{
	"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0", "/dev/stdout": "/proc/self/fd/1",
	"/dev/stderr": "/proc/self/fd/2", "/dev/ptmx": "pts/ptmx", "/dev/core": "/proc/kcore",
}

// tmpfsRules checks the contents of the tmpfs mounts (see
// checkTmpfsContents), in the container's ids: tar runs in its user
// namespace.
type tmpfsRules struct {
	a           *fileAccess
	uid         uint32
	gids        []uint32
	caps        uint64
	byDest      map[string]specs.Mount
	devices     map[string]specs.LinuxDevice // by path
	mountPoints []string                     // every place runc may mount on or make
	console     bool                         // runc binds a pty on /dev/console
}

func (t *tmpfsRules) has(c int) bool { return t.caps&(1<<uint(c)) != 0 }

// check checks the tmpfs m; specMount is the spec's mount there, if
// inSpec (else a masked directory's).
func (t *tmpfsRules) check(m *mnt.MntEntry, specMount specs.Mount, inSpec bool) error {
	tree := t.a.tmpfs.tree(m)
	if tree.err != nil {
		return tree.err
	}
	at := m.GetMountpoint()
	refuse := func(rel string, e tmpfsEntry, why string) error {
		return fmt.Errorf("the checkpoint's tmpfs at %s holds %s (%s), which the spec's user (%d) could not make: %s",
			at, path.Join(at, rel), describeMember(e), t.uid, why)
	}
	for _, rel := range tree.order {
		e := tree.entries[rel]
		if rel == "/" {
			if !inSpec {
				continue
			}
			want := specTmpfs(specMount, 0)
			switch {
			case (e.uid != want.uid || e.gid != want.gid) && !t.has(unix.CAP_CHOWN):
				return refuse(rel, e, fmt.Sprintf("the spec's tmpfs is owned by %d:%d", want.uid, want.gid))
			case uint32(modeBits(e.mode)) != want.mode && want.uid != t.uid && !t.has(unix.CAP_FOWNER):
				return refuse(rel, e, fmt.Sprintf("the spec's tmpfs has mode %04o", want.mode))
			}
			continue
		}
		if !inSpec {
			return refuse(rel, e, "runc masks the directory with an empty read-only tmpfs")
		}
		if t.madeByRunc(path.Join(at, rel), e) {
			continue
		}
		if why := t.userMade(tree, rel, e); why != "" {
			return refuse(rel, e, why)
		}
	}
	return nil
}

// madeByRunc reports whether the entry at p (the container's path) is one
// runc makes (see checkTmpfsContents).
func (t *tmpfsRules) madeByRunc(p string, e tmpfsEntry) bool {
	rootOwned := e.uid == 0 && e.gid == 0
	plain := e.mode&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) == 0
	if target, ok := runcDevLinks[p]; ok && e.kind == tar.TypeSymlink {
		return rootOwned && e.target == target
	}
	if d, ok := t.devices[p]; ok {
		if t.a.userns != nil {
			// runc binds the node's device on an empty file.
			return e.kind == tar.TypeReg && e.size == 0 && rootOwned && plain
		}
		kind := map[string]byte{"c": tar.TypeChar, "u": tar.TypeChar, "b": tar.TypeBlock, "p": tar.TypeFifo}[d.Type]
		perm := os.FileMode(0o666)
		if d.FileMode != nil {
			perm = d.FileMode.Perm()
		}
		var uid, gid uint32
		if d.UID != nil {
			uid = *d.UID
		}
		if d.GID != nil {
			gid = *d.GID
		}
		return e.kind == kind && e.major == d.Major && e.minor == d.Minor && e.uid == uid && e.gid == gid && plain && e.mode.Perm()&^perm == 0
	}
	if e.kind == tar.TypeSymlink && rootOwned && t.cgroupLink(p, e.target) {
		return true
	}
	if p == "/dev/console" && t.console {
		// The pty's mount point, made 0666 less the umask.
		return rootOwned && plain && e.kind == tar.TypeReg && e.size == 0
	}
	if !rootOwned || !plain || e.mode.Perm()&0o022 != 0 {
		return false
	}
	for _, mp := range t.mountPoints {
		switch {
		case mp == p && (e.kind == tar.TypeDir || e.kind == tar.TypeReg && e.size == 0):
			return true
		case strings.HasPrefix(mp, p+"/") && e.kind == tar.TypeDir:
			return true
		}
	}
	return false
}

// cgroupLink reports whether a link at p to target is one runc makes for a
// co-mounted cgroup v1 controller: in the spec's cgroup mount, named for
// one of the controllers of the sibling hierarchy it points to, which is
// mounted there.
func (t *tmpfsRules) cgroupLink(p, target string) bool {
	dir := path.Dir(p)
	if m, ok := t.byDest[dir]; !ok || !isCgroup(m) || strings.Contains(target, "/") || target == path.Base(p) {
		return false
	}
	return slices.Contains(strings.Split(target, ","), path.Base(p)) && slices.Contains(t.mountPoints, path.Join(dir, target))
}

// userMade returns why the user could not have made the entry at rel
// (empty: it could).
func (t *tmpfsRules) userMade(tree tmpfsTree, rel string, e tmpfsEntry) string {
	dir := tree.entries[path.Dir(rel)]
	for p := path.Dir(rel); ; p = path.Dir(p) {
		if d := tree.entries[p]; !t.owns(d) && !t.permits(d, wantExec) {
			return "it may not search " + p
		}
		if p == "/" {
			break
		}
	}
	if !t.owns(dir) && !t.permits(dir, wantWrite|wantExec) {
		return "it may not make files in its directory"
	}
	if e.kind == tar.TypeChar || e.kind == tar.TypeBlock {
		if t.a.userns != nil || !t.has(unix.CAP_MKNOD) {
			return "a device node takes CAP_MKNOD, outside a user namespace"
		}
	}
	inGroup := slices.Contains(t.gids, e.gid) || dir.mode&os.ModeSetgid != 0 && e.gid == dir.gid
	if !t.has(unix.CAP_CHOWN) && (e.uid != t.uid || !inGroup) {
		return fmt.Sprintf("it would be owned by %d:%d", e.uid, e.gid)
	}
	if e.mode&os.ModeSetuid != 0 && e.uid != t.uid && !t.has(unix.CAP_FOWNER) {
		return fmt.Sprintf("it would be set-user-ID for uid %d", e.uid)
	}
	inherited := e.kind == tar.TypeDir && dir.mode&os.ModeSetgid != 0 && e.gid == dir.gid
	if e.mode&os.ModeSetgid != 0 && !slices.Contains(t.gids, e.gid) && !inherited && !t.has(unix.CAP_FSETID) {
		return fmt.Sprintf("it would be set-group-ID for group %d, not one of the user's", e.gid)
	}
	return ""
}

// owns reports whether the user owns e or may act as its owner.
func (t *tmpfsRules) owns(e tmpfsEntry) bool {
	return e.uid == t.uid || t.has(unix.CAP_FOWNER)
}

// permits reports whether e's permission bits grant the user need
// (CAP_DAC_READ_SEARCH: searching a directory).
func (t *tmpfsRules) permits(e tmpfsEntry, need uint32) bool {
	if t.has(unix.CAP_DAC_READ_SEARCH) && e.kind == tar.TypeDir {
		need &^= wantRead | wantExec
	}
	return bitsGrant(e.mode, e.uid, e.gid, t.uid, t.gids, need)
}

// specOptions are a spec mount's options, each comma-separated list split.
func specOptions(m specs.Mount) []string {
	var out []string
	for _, o := range m.Options {
		out = append(out, strings.Split(o, ",")...)
	}
	return out
}

// modeBits is an os.FileMode's permission and set-id bits as the kernel
// numbers them.
func modeBits(m os.FileMode) uint32 {
	bits := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		bits |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		bits |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		bits |= 0o1000
	}
	return bits
}

// describeMember names a tmpfs member's kind, mode and owner.
func describeMember(e tmpfsEntry) string {
	kind := map[byte]string{tar.TypeDir: "d", tar.TypeSymlink: "l", tar.TypeChar: "c", tar.TypeBlock: "b", tar.TypeFifo: "p"}[e.kind]
	if kind == "" {
		kind = "-"
	}
	return fmt.Sprintf("%s%04o, owner %d:%d", kind, modeBits(e.mode), e.uid, e.gid)
}

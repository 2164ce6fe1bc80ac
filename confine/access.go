package confine

import (
	"archive/tar"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// grantedCaps returns the capabilities a cold start's process of spec can
// have, as a bitmap: its permitted and ambient sets (a program's file
// capabilities can give a non-root user its permitted ones at exec, even
// with no_new_privs, which only bounds them by the permitted set runc's
// init holds), and for root without no_new_privs its bounding set too
// (exec gives root its bounding set back). With a user namespace none of
// them are the node's: nodeCaps is then false.
func grantedCaps(spec *specs.Spec, m masks) (caps uint64, nodeCaps bool) {
	var user specs.User
	nnp := false
	if spec.Process != nil {
		user, nnp = spec.Process.User, spec.Process.NoNewPrivileges
	}
	caps = m.prm | m.amb
	if user.UID == 0 && !nnp {
		caps |= m.bnd
	}
	_, userns := restorehook.SpecNamespace(spec, specs.UserNamespace)
	return caps, !userns
}

// fileAccess checks that the container's cold start could open each
// regular file the tasks hold, as CRIU will: CRIU opens them as root,
// before it gives the tasks their own credentials. The check follows the
// kernel's permission bits for the spec's user and groups, with search
// permission on every directory on the way; files of the root file
// system are looked up in its layers, files of the spec's bind mounts
// under their sources, the node's global proc and sysfs files in the
// shim's; a file's POSIX ACL counts where it has one. A tmpfs's files
// come from the checkpoint itself. Not checked: any file, with
// CAP_DAC_OVERRIDE, or CAP_SETUID with CAP_SETGID (the app could become
// the file's owner). Whoever the user: names through proc's links to
// other files (CRIU follows them) and proc files that show what their
// opener's capabilities allow are refused without the capability.
//
// With a user namespace in the spec, CRIU opens them as the namespace's
// root, whose capabilities count only for a file whose owner and group
// the namespace maps (the kernel's privileged_wrt_inode_uidgid): the
// user and groups are then the node's ids the spec's map to, and the
// spec's capabilities let the user past the bits of such files only.
type fileAccess struct {
	uid        uint32   // the spec's user, as the node sees it
	gids       []uint32 // the spec's groups, as the node sees them
	checkBits  bool     // permission bits count
	readSearch bool     // CAP_DAC_READ_SEARCH: reading files, reading and searching directories
	caps       uint64   // the capabilities the spec grants on the node (none with a user namespace)
	// userns is the spec's user namespace, if it has one: its capabilities
	// (nsCaps) count for files whose owner and group it maps.
	userns   *idMaps
	nsCaps   uint64
	specUID  uint32 // the spec's user, in its user namespace
	ownPIDNS bool   // the spec has a PID namespace of its own: /proc/<pid> are the container's processes
	// sharedPIDNS: the spec joins one by path (a pod's shared one), where
	// other containers' processes are too: only the checkpoint's own pids
	// (pids) count.
	sharedPIDNS bool
	pids        map[string]bool
	cwd         string // the spec's working directory, which runc enters as root
	mounts      []*mnt.MntEntry
	binds       map[string]specs.Mount // the spec's mounts, by destination
	layers      *layers
	hostProc    string // the shim's view of the node's proc and sysfs
	hostSys     string
	// tmpfs lists the tmpfs mounts' contents CRIU restores (nil: not
	// known, and names inside a tmpfs cannot be looked up).
	tmpfs *tmpfsTrees
}

func newFileAccess(spec *specs.Spec, m masks, mounts []*mnt.MntEntry, root *layers) *fileAccess {
	a := &fileAccess{mounts: mounts, layers: root, binds: map[string]specs.Mount{}, hostProc: "/proc", hostSys: "/sys"}
	caps, nodeCaps := grantedCaps(spec, m)
	if spec.Process != nil {
		a.specUID = spec.Process.User.UID
		a.uid, a.gids = spec.Process.User.UID, append([]uint32{spec.Process.User.GID}, spec.Process.User.AdditionalGids...)
	}
	if !nodeCaps {
		a.userns = specIDMaps(spec)
		a.nsCaps = caps
		a.uid = a.userns.uid(a.uid)
		for i, g := range a.gids {
			a.gids[i] = a.userns.gid(g)
		}
		caps = 0
	}
	a.caps = caps
	has := func(c int) bool { return caps&(1<<uint(c)) != 0 }
	a.checkBits = !has(unix.CAP_DAC_OVERRIDE) && !(has(unix.CAP_SETUID) && has(unix.CAP_SETGID))
	a.readSearch = has(unix.CAP_DAC_READ_SEARCH)
	pidns, ok := restorehook.SpecNamespace(spec, specs.PIDNamespace)
	a.ownPIDNS = ok && pidns.Path == ""
	a.sharedPIDNS = ok && pidns.Path != ""
	for _, mt := range spec.Mounts {
		a.binds[path.Clean(mt.Destination)] = mt
	}
	if spec.Process != nil && spec.Process.Cwd != "" {
		a.cwd = path.Clean(spec.Process.Cwd)
	}
	return a
}

// user names the spec's user in messages: with a user namespace, with the
// node's id too.
func (a *fileAccess) user() string {
	if a.userns == nil {
		return strconv.FormatUint(uint64(a.uid), 10)
	}
	return fmt.Sprintf("%d, the node's %d", a.specUID, a.uid)
}

// nsCapable reports whether the spec's capability c, in its user
// namespace, covers a file with the node's ids in st: the namespace must
// map both its owner and its group.
func (a *fileAccess) nsCapable(c int, st *syscall.Stat_t) bool {
	return a.userns != nil && a.nsCaps&(1<<uint(c)) != 0 && a.userns.maps(st.Uid, st.Gid)
}

// checkpointPids returns the pids and thread ids of the checkpoint's
// tasks (pstree.img), as proc names them.
func checkpointPids(imagesDir string, names []string) (map[string]bool, error) {
	out := map[string]bool{}
	if !slices.Contains(names, "pstree.img") {
		return out, nil
	}
	img, err := decodeImage(filepath.Join(imagesDir, "pstree.img"), &pstree.PstreeEntry{})
	if err != nil {
		return nil, err
	}
	for _, e := range img.Entries {
		t := e.Message.(*pstree.PstreeEntry)
		out[strconv.FormatUint(uint64(t.GetPid()), 10)] = true
		for _, tid := range t.GetThreads() {
			out[strconv.FormatUint(uint64(tid), 10)] = true
		}
	}
	return out, nil
}

// procFiles are proc and sysfs files that show what their opener's
// capabilities allow (kernel addresses, physical memory), whoever reads
// them later, by the capability.
var procFiles = []struct {
	match func(rel string, perProcess bool) bool
	cap   int
}{
	{func(rel string, pp bool) bool { return !pp && (rel == "kallsyms" || rel == "modules") }, unix.CAP_SYSLOG},
	{func(rel string, pp bool) bool {
		return !pp && (strings.HasPrefix(rel, "kpage") || rel == "iomem" || rel == "ioports")
	}, unix.CAP_SYS_ADMIN},
	{func(rel string, pp bool) bool {
		return pp && (path.Base(rel) == "pagemap" || path.Base(rel) == "stack")
	}, unix.CAP_SYS_ADMIN},
}

// procLinks are the entries of a process's proc directory that lead to
// other files (CRIU's open follows them); CRIU never dumps a name through
// them.
var procLinks = []string{"root", "cwd", "exe", "fd", "fdinfo", "map_files"}

// perProcess splits a path in proc into a process's directory and the
// rest under it (after task/<tid>/ too); ok is false for a global file.
func perProcess(rel string) (rest string, ok bool) {
	first, rest, _ := strings.Cut(rel, "/")
	if first != "self" && first != "thread-self" && (first == "" || strings.Trim(first, "0123456789") != "") {
		return "", false
	}
	if t, r, found := strings.Cut(rest, "/"); t == "task" && found {
		_, rest, _ = strings.Cut(r, "/")
	}
	return rest, true
}

// fileNeeds returns, by file id, what the tasks need of the files their
// memory maps and their working directories are (mm-*.img, fs-*.img):
// execute or search only for each one's program (the kernel maps it at
// exec: a program may be execute-only) and its working and root
// directories, and write for a file mapping whose open flags are not
// read-only (CRIU opens a mapped file with the mapping's flags, not the
// file's).
func fileNeeds(imagesDir string, names []string) (search map[uint32]bool, write map[uint32]bool, err error) {
	search, write = map[uint32]bool{}, map[uint32]bool{}
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, "mm-") && strings.HasSuffix(name, ".img"):
			img, err := decodeOne(filepath.Join(imagesDir, name), &mm.MmEntry{})
			if err != nil {
				return nil, nil, err
			}
			e := img.Entries[0].Message.(*mm.MmEntry)
			search[e.GetExeFileId()] = true
			for _, v := range e.GetVmas() {
				if v.GetStatus()&(vmaFilePrivate|vmaFileShared) != 0 && v.GetStatus()&vmaMemfd == 0 &&
					v.GetFdflags()&unix.O_ACCMODE != unix.O_RDONLY {
					write[uint32(v.GetShmid())] = true
				}
			}
		case strings.HasPrefix(name, "fs-") && strings.HasSuffix(name, ".img"):
			img, err := decodeOne(filepath.Join(imagesDir, name), &fs.FsEntry{})
			if err != nil {
				return nil, nil, err
			}
			e := img.Entries[0].Message.(*fs.FsEntry)
			search[e.GetCwdId()], search[e.GetRootId()] = true, true
		}
	}
	return search, write, nil
}

// CRIU's VMA status flags (criu/include/image.h).
const (
	vmaFilePrivate = 1 << 6
	vmaFileShared  = 1 << 7
	vmaMemfd       = 1 << 14
)

// Access wanted, as permission bits.
const (
	wantRead, wantWrite, wantExec = 4, 2, 1
)

// check checks one regular file at name, opened with flags; searched: it
// needs execute or search permission instead of read; written: write too.
func (a *fileAccess) check(name string, flags uint32, searched, written bool) error {
	want := uint32(0)
	if flags&unix.O_PATH == 0 {
		switch flags & unix.O_ACCMODE {
		case unix.O_RDONLY:
			want = wantRead
		case unix.O_WRONLY:
			want = wantWrite
		default:
			want = wantRead | wantWrite
		}
	}
	if searched {
		want = want&^wantRead | wantExec
	}
	if written {
		want |= wantWrite
	}
	if searched && !written && flags&unix.O_ACCMODE == unix.O_RDONLY && name == a.cwd {
		return nil // runc enters the spec's working directory as root
	}
	m := a.mountOf(name)
	if m == nil {
		return nil
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(name, m.GetMountpoint()), "/")
	switch {
	case m.GetMountpoint() == "/":
		if !a.checkBits {
			return nil
		}
		return a.inLayers(name, rel, want, flags)
	case m.GetExtKey() != "":
		if !a.checkBits {
			return nil
		}
		// Each source the key may be (see bindSources): the file must be
		// open to the user under all of them.
		for _, src := range a.bindSources(m.GetExtKey()) {
			if err := a.inDir(name, src, rel, want, flags); err != nil {
				return err
			}
		}
		return nil
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_PROC:
		procRel := strings.TrimPrefix(path.Join(m.GetRoot(), rel), "/")
		rest, pp := perProcess(procRel)
		if pp {
			if first, _, _ := strings.Cut(rest, "/"); slices.Contains(procLinks, first) {
				return fmt.Errorf("the checkpoint holds %s open, a name through a link of proc, which CRIU would follow as root", name)
			}
			switch first, _, _ := strings.Cut(procRel, "/"); {
			case first == "self" || first == "thread-self" || a.ownPIDNS:
			case a.sharedPIDNS && a.pids[first]:
			case a.sharedPIDNS:
				return fmt.Errorf("the checkpoint holds %s open, a file of a process that is not the checkpoint's, in the PID namespace the spec shares", name)
			default:
				return fmt.Errorf("the checkpoint holds %s open, a file of a process of the node's (the spec has no PID namespace)", name)
			}
		}
		if err := a.procFile(name, procRel, pp); err != nil {
			return err
		}
		if !a.checkBits || pp {
			return nil // the container's own processes
		}
		return a.inDir(name, a.hostProc, procRel, want, flags)
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_SYSFS:
		sysRel := strings.TrimPrefix(path.Join(m.GetRoot(), rel), "/")
		if strings.HasPrefix(sysRel, "module/") && strings.Contains(sysRel, "/sections/") && a.caps&(1<<unix.CAP_SYSLOG) == 0 {
			return fmt.Errorf("the checkpoint holds %s open, which shows kernel addresses to an opener with CAP_SYSLOG, which the spec does not grant", name)
		}
		if !a.checkBits {
			return nil
		}
		return a.inDir(name, a.hostSys, sysRel, want, flags)
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_TMPFS:
		if !a.checkBits {
			return nil // the link resolves in the container, where the user may open anything
		}
		return a.inTmpfs(name, m, rel, flags)
	}
	return nil // devpts, mqueue, cgroup: files of the container's own, or of none
}

// inTmpfs checks a file of a tmpfs, whose files are the container's own
// (the tmpfs is new, filled from the checkpoint): no permission counts,
// but a symbolic link on the way, which the checkpoint's contents may hold
// (and CRIU would follow, as root, out of the tmpfs), is refused, as in
// the root file system (throughLink). Nothing to look at without the
// contents' listing, or where an entry is missing.
func (a *fileAccess) inTmpfs(name string, m *mnt.MntEntry, rel string, flags uint32) error {
	if a.tmpfs == nil || rel == "" {
		return nil
	}
	parts := splitPath(rel)
	for i := range parts {
		prefix := path.Join(parts[:i+1]...)
		e, ok, err := a.tmpfs.lookup(m, path.Join("/", m.GetRoot(), prefix))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		switch {
		case !ok:
			return nil // CRIU fails to open it
		case e.kind == tar.TypeSymlink:
			return throughLink(name, path.Join(strings.TrimPrefix(m.GetMountpoint(), "/"), prefix), i < len(parts)-1, flags)
		case e.kind != tar.TypeDir:
			return nil // the file itself, or CRIU fails on the way
		}
	}
	return nil
}

func (a *fileAccess) procFile(name, rel string, perProcess bool) error {
	for _, f := range procFiles {
		if f.match(rel, perProcess) && a.caps&(1<<uint(f.cap)) == 0 {
			return fmt.Errorf("the checkpoint holds %s open, which CRIU would open with capabilities the spec does not grant (it shows what its opener may see)", name)
		}
	}
	return nil
}

// bindSources returns the sources of the spec's bind mounts an external
// mount's key may stand for (bindsForKey). runc's own binds (devices,
// cgroups, masks) have none.
func (a *fileAccess) bindSources(key string) []string {
	var out []string
	for _, m := range bindsForKey(a.binds, key) {
		out = append(out, m.Source)
	}
	return out
}

// mountOf returns the mount a name is in: one mounted on the name itself
// (a bind of a single file), or the one covering it.
func (a *fileAccess) mountOf(name string) *mnt.MntEntry {
	var at *mnt.MntEntry
	for _, e := range a.mounts {
		if e.GetMountpoint() == name {
			at = e
		}
	}
	if at != nil {
		return at
	}
	return coveringMount(name, a.mounts)
}

// inLayers checks a file of the root file system.
func (a *fileAccess) inLayers(name, rel string, want, flags uint32) error {
	found, err := a.layers.lookup(rel)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	parts := splitPath(rel)
	if n := len(found); n > 0 && found[n-1].fi.Mode()&os.ModeSymlink != 0 {
		return throughLink(name, path.Join(parts[:n]...), n < len(parts), flags)
	}
	if len(found) < len(parts) {
		return nil // not there: a deleted file's, or CRIU fails to open it
	}
	return a.permitted(name, found, want)
}

// inDir checks a file under dir, a source on the node.
func (a *fileAccess) inDir(name, dir, rel string, want, flags uint32) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		if fi, serr := os.Stat(dir); serr == nil && !fi.IsDir() && rel == "" {
			return a.permitted(name, []entry{{fi: fi, path: dir}}, want) // a bind of a single file
		}
		return nil // CRIU fails to bind it
	}
	defer root.Close()
	top, err := root.Stat(".")
	if err != nil {
		return nil
	}
	found := []entry{{fi: top, path: dir}} // the source itself is searched too
	parts := splitPath(rel)
	for i := range parts {
		prefix := filepath.Join(parts[:i+1]...)
		fi, err := root.Lstat(prefix)
		if errors.Is(err, os.ErrNotExist) {
			return nil // CRIU fails to open it
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			if err := throughLink(name, prefix, i < len(parts)-1, flags); err != nil {
				return err
			}
		}
		found = append(found, entry{fi: fi, path: filepath.Join(dir, prefix)})
	}
	return a.permitted(name, found, want)
}

// throughLink refuses a name with a symbolic link at link (on the way, or
// its last component opened without O_PATH|O_NOFOLLOW): CRIU dumps names
// the kernel resolved, through no link.
func throughLink(name, link string, onTheWay bool, flags uint32) error {
	if onTheWay || flags&(unix.O_PATH|unix.O_NOFOLLOW) != unix.O_PATH|unix.O_NOFOLLOW {
		return fmt.Errorf("the checkpoint holds %s open, a name through a symbolic link (/%s), which CRIU dumps no name through", name, link)
	}
	return nil // the link itself
}

// permitted checks search permission on every entry but the last, and
// want on the last.
func (a *fileAccess) permitted(name string, entries []entry, want uint32) error {
	for i, e := range entries {
		last := i == len(entries)-1
		need := uint32(wantExec)
		if last {
			need = want
		}
		if need == 0 || e.fi.Mode()&os.ModeSymlink != 0 || a.allows(e, need) {
			continue
		}
		st := statOf(e.fi)
		if last {
			return fmt.Errorf("the checkpoint holds %s open, which the spec's user (%s) may not %s (mode %o, owner %d:%d); CRIU would open it as root",
				name, a.user(), accessWords(need), e.fi.Mode().Perm(), st.Uid, st.Gid)
		}
		return fmt.Errorf("the checkpoint holds %s open, under a directory the spec's user (%s) may not search (mode %o, owner %d:%d); CRIU would open it as root",
			name, a.user(), e.fi.Mode().Perm(), st.Uid, st.Gid)
	}
	return nil
}

func accessWords(need uint32) string {
	var w []string
	if need&wantRead != 0 {
		w = append(w, "read")
	}
	if need&wantWrite != 0 {
		w = append(w, "write")
	}
	if need&wantExec != 0 {
		w = append(w, "execute")
	}
	return strings.Join(w, " and ")
}

func statOf(fi os.FileInfo) *syscall.Stat_t {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st
	}
	return &syscall.Stat_t{}
}

// allows reports whether the spec's user may access e as need, by its
// permission bits, or its POSIX ACL where it has one, and
// CAP_DAC_READ_SEARCH; with a user namespace, by the capabilities the
// spec grants in it where they cover e (nsCapable).
func (a *fileAccess) allows(e entry, need uint32) bool {
	fi := e.fi
	st := statOf(fi)
	if a.nsCapable(unix.CAP_DAC_OVERRIDE, st) || a.nsCapable(unix.CAP_SETUID, st) && a.nsCapable(unix.CAP_SETGID, st) {
		return true
	}
	if a.readSearch || a.nsCapable(unix.CAP_DAC_READ_SEARCH, st) {
		if fi.IsDir() {
			need &^= wantRead | wantExec
		} else {
			need &^= wantRead
		}
		if need == 0 {
			return true
		}
	}
	if e.path != "" {
		buf := make([]byte, 4+8*64)
		if n, err := unix.Lgetxattr(e.path, "system.posix_acl_access", buf); err == nil {
			if ok, valid := aclAllows(buf[:n], st, a.uid, a.gids, need); valid {
				return ok
			}
			return false // an ACL this does not read: not granted
		}
	}
	return bitsGrant(fi.Mode(), st.Uid, st.Gid, a.uid, a.gids, need)
}

// bitsGrant reports whether a file's permission bits (mode), with its
// owner and group, grant need to the user uid with groups gids: the
// owner's class, else the group's, else the others'.
func bitsGrant(mode os.FileMode, owner, group, uid uint32, gids []uint32, need uint32) bool {
	perm := uint32(mode.Perm())
	switch {
	case owner == uid:
		perm >>= 6
	case slices.Contains(gids, group):
		perm >>= 3
	}
	return perm&need == need
}

// POSIX ACL entry tags, as the kernel stores them in
// system.posix_acl_access.
const (
	aclUserObj, aclUser, aclGroupObj, aclGroup, aclMask, aclOther = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
)

// aclAllows evaluates a POSIX ACL (the xattr's bytes: a version, then
// tag, permissions and id for each entry) as the kernel's
// posix_acl_permission does: the owner's entry, else a named user's
// (within the mask), else every group entry that matches (within the
// mask: one that grants need allows), else the other entry. valid is
// false for bytes it cannot read.
func aclAllows(acl []byte, st *syscall.Stat_t, uid uint32, gids []uint32, need uint32) (ok, valid bool) {
	if len(acl) < 4 || (len(acl)-4)%8 != 0 || binary.LittleEndian.Uint32(acl) != 2 {
		return false, false
	}
	type aclEntry struct {
		tag, perm uint16
		id        uint32
	}
	var entries []aclEntry
	mask := uint16(7)
	for b := acl[4:]; len(b) > 0; b = b[8:] {
		e := aclEntry{tag: binary.LittleEndian.Uint16(b), perm: binary.LittleEndian.Uint16(b[2:]), id: binary.LittleEndian.Uint32(b[4:])}
		if e.tag == aclMask {
			mask = e.perm
		}
		entries = append(entries, e)
	}
	has := func(perm uint16) bool { return uint32(perm)&need == need }
	for _, e := range entries {
		if e.tag == aclUserObj && st.Uid == uid {
			return has(e.perm), true
		}
	}
	for _, e := range entries {
		if e.tag == aclUser && e.id == uid {
			return has(e.perm & mask), true
		}
	}
	found := false
	for _, e := range entries {
		matches := (e.tag == aclGroupObj && slices.Contains(gids, st.Gid)) || (e.tag == aclGroup && slices.Contains(gids, e.id))
		if !matches {
			continue
		}
		found = true
		if has(e.perm & mask) {
			return true, true
		}
	}
	if found {
		return false, true
	}
	for _, e := range entries {
		if e.tag == aclOther {
			return has(e.perm), true
		}
	}
	return false, true
}

package confine

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fs"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// fileAccess checks that the container's cold start could open each
// regular file the tasks hold, as the image's flags ask: CRIU opens them
// as root, before it gives the tasks their own credentials, so a task of a
// user who may not read a file (the node's secret on a volume, a
// root-only file of the image) could hold it open. The check follows the
// kernel's permission bits for the spec's user and groups (not ACLs: a
// file an ACL opens to the user is refused), with search permission on
// every directory on the way; CAP_DAC_OVERRIDE (or CAP_DAC_READ_SEARCH for
// reading) skips it, and so do CAP_SETUID with CAP_SETGID (the app could
// become the file's owner). Files of the root file system are looked up
// in its layers, files of the spec's bind mounts under their sources, and
// the node's global proc and sysfs files in the shim's; a tmpfs's files
// come from the checkpoint itself. Besides, a few proc files show what
// the opener's capabilities allow, whoever reads them later: those need
// the capability in the spec.
type fileAccess struct {
	uid      uint32
	gids     []uint32
	dac      bool // permission bits count (no CAP_DAC_OVERRIDE, no way to become the owner)
	search   bool // CAP_DAC_READ_SEARCH: reading and searching are allowed
	caps     uint64
	mounts   []*mnt.MntEntry
	binds    map[string]string // the spec's bind mounts: destination to source
	layers   *layers
	hostProc string // the shim's view of the node's proc and sysfs
	hostSys  string
}

func newFileAccess(spec *specs.Spec, m masks, mounts []*mnt.MntEntry, root *layers) *fileAccess {
	a := &fileAccess{mounts: mounts, layers: root, binds: map[string]string{}, hostProc: "/proc", hostSys: "/sys"}
	var user specs.User
	if spec.Process != nil {
		user = spec.Process.User
	}
	granted := m.prm
	if user.UID == 0 {
		granted |= m.bnd // root regains its bounding set at exec
	}
	_, userns := restorehook.SpecNamespace(spec, specs.UserNamespace)
	if userns {
		granted = 0 // its capabilities are not the node's
	}
	a.caps = granted
	has := func(c int) bool { return granted&(1<<uint(c)) != 0 }
	a.uid, a.gids = user.UID, append([]uint32{user.GID}, user.AdditionalGids...)
	a.dac = !has(unix.CAP_DAC_OVERRIDE) && !(has(unix.CAP_SETUID) && has(unix.CAP_SETGID))
	a.search = has(unix.CAP_DAC_READ_SEARCH)
	if userns && spec.Linux != nil {
		// The files' owners are the node's ids: map the spec's.
		uid, okU := hostID(user.UID, spec.Linux.UIDMappings)
		a.uid = uid
		a.gids = nil
		for _, g := range append([]uint32{user.GID}, user.AdditionalGids...) {
			if gid, ok := hostID(g, spec.Linux.GIDMappings); ok {
				a.gids = append(a.gids, gid)
			}
		}
		if !okU {
			a.uid = ^uint32(0) // nobody's: the "other" bits
		}
	}
	for _, mt := range spec.Mounts {
		if isBind(mt) {
			a.binds[path.Clean(mt.Destination)] = mt.Source
		}
	}
	return a
}

// hostID maps a container id through a user namespace's mappings.
func hostID(id uint32, maps []specs.LinuxIDMapping) (uint32, bool) {
	for _, m := range maps {
		if id >= m.ContainerID && id-m.ContainerID < m.Size {
			return m.HostID + (id - m.ContainerID), true
		}
	}
	return 0, false
}

// credentialFiles are proc files whose content depends on the opener's
// capabilities (kernel addresses, physical frames), by the capability.
var credentialFiles = []struct {
	name func(rel string) bool
	cap  int
}{
	{func(rel string) bool { return rel == "kallsyms" || rel == "modules" }, unix.CAP_SYSLOG},
	{func(rel string) bool { return strings.HasPrefix(rel, "kpage") }, unix.CAP_SYS_ADMIN},
	{func(rel string) bool { return isPerProcess(rel) && path.Base(rel) == "pagemap" }, unix.CAP_SYS_ADMIN},
}

// isPerProcess reports whether a path in proc is under a process's
// directory.
func isPerProcess(rel string) bool {
	first, _, _ := strings.Cut(rel, "/")
	if first == "self" || first == "thread-self" {
		return true
	}
	return first != "" && strings.Trim(first, "0123456789") == ""
}

// searchOnly returns the ids of the files the tasks need to execute or
// search only, not read: each one's executable (mm-*.img; the kernel maps
// it at exec, a program may be execute-only) and its working and root
// directories (fs-*.img).
func searchOnly(imagesDir string, names []string) (map[uint32]bool, error) {
	out := map[uint32]bool{}
	for _, name := range names {
		switch {
		case strings.HasPrefix(name, "mm-") && strings.HasSuffix(name, ".img"):
			img, err := decodeOne(filepath.Join(imagesDir, name), &mm.MmEntry{})
			if err != nil {
				return nil, err
			}
			out[img.Entries[0].Message.(*mm.MmEntry).GetExeFileId()] = true
		case strings.HasPrefix(name, "fs-") && strings.HasSuffix(name, ".img"):
			img, err := decodeOne(filepath.Join(imagesDir, name), &fs.FsEntry{})
			if err != nil {
				return nil, err
			}
			e := img.Entries[0].Message.(*fs.FsEntry)
			out[e.GetCwdId()], out[e.GetRootId()] = true, true
		}
	}
	return out, nil
}

// check checks one regular file; searched: it needs execute or search
// permission only.
func (a *fileAccess) check(reg *regfile.RegFileEntry, searched bool) error {
	name := reg.GetName()
	want := uint32(0)
	if searched {
		want = 1
	} else if reg.GetFlags()&unix.O_PATH == 0 {
		switch reg.GetFlags() & unix.O_ACCMODE {
		case unix.O_RDONLY:
			want = 4
		case unix.O_WRONLY:
			want = 2
		default:
			want = 6
		}
	}
	m := coveringMount(name, a.mounts)
	if name == "/" || m == nil {
		m = nil
		for _, e := range a.mounts {
			if e.GetMountpoint() == "/" {
				m = e
			}
		}
	}
	if m == nil {
		return nil
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(name, m.GetMountpoint()), "/")
	switch {
	case m.GetMountpoint() == "/":
		if !a.dac {
			return nil
		}
		return a.inLayers(name, rel, want)
	case m.GetExtKey() != "":
		src, ok := a.binds[path.Clean(m.GetExtKey())]
		if !ok || !a.dac {
			return nil // runc's own binds: devices, cgroups, masks
		}
		return a.inDir(name, src, rel, want)
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_PROC:
		procRel := strings.TrimPrefix(path.Join(strings.TrimPrefix(m.GetRoot(), "/"), rel), "/")
		for _, c := range credentialFiles {
			if c.name(procRel) && a.caps&(1<<uint(c.cap)) == 0 {
				return fmt.Errorf("the checkpoint holds %s open, which CRIU would open with capabilities the spec does not grant (%s shows what its opener may see)", name, name)
			}
		}
		if !a.dac || isPerProcess(procRel) {
			return nil // the container's own processes
		}
		return a.inDir(name, a.hostProc, procRel, want)
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_SYSFS:
		if !a.dac {
			return nil
		}
		return a.inDir(name, a.hostSys, strings.TrimPrefix(path.Join(strings.TrimPrefix(m.GetRoot(), "/"), rel), "/"), want)
	}
	return nil // a tmpfs, devpts, mqueue: the checkpoint's own files
}

// inLayers checks a file of the root file system.
func (a *fileAccess) inLayers(name, rel string, want uint32) error {
	found, err := a.layers.lookup(rel)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	parts := splitPath(rel)
	if len(found) < len(parts) {
		return nil // not there: a deleted file's, or CRIU fails to open it
	}
	return a.permitted(name, found, want)
}

// inDir checks a file under dir, a source on the node.
func (a *fileAccess) inDir(name, dir, rel string, want uint32) error {
	var found []entry
	fi, err := os.Stat(dir)
	if err != nil {
		return nil // CRIU fails to bind it
	}
	if rel == "" {
		return a.permitted(name, []entry{{fi: fi}}, want)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil
	}
	defer root.Close()
	parts := splitPath(rel)
	for i := range parts {
		fi, err := root.Stat(filepath.Join(parts[:i+1]...))
		if err != nil {
			return nil // not there, or out of the source: CRIU fails
		}
		found = append(found, entry{fi: fi})
	}
	// The source directory itself is searched too.
	return a.permitted(name, append([]entry{{fi: fi}}, found...), want)
}

// permitted checks search permission on every entry but the last, and
// want on the last.
func (a *fileAccess) permitted(name string, path []entry, want uint32) error {
	for i, e := range path {
		need := uint32(1)
		if i == len(path)-1 {
			need = want
			if e.fi.Mode()&os.ModeSymlink != 0 || need == 0 {
				return nil
			}
		} else if !e.fi.IsDir() {
			return nil // not a directory on the way: CRIU fails to open it
		}
		if !a.allows(e.fi, need) {
			what := "search"
			if i == len(path)-1 {
				what = map[uint32]string{4: "read", 2: "write", 6: "read and write", 1: "execute or search"}[need]
			}
			return fmt.Errorf("the checkpoint holds %s open, which the spec's user (%d) may not %s (mode %o, owner %d:%d at %s); CRIU would open it as root",
				name, a.uid, what, e.fi.Mode().Perm(), statOf(e.fi).Uid, statOf(e.fi).Gid, map[bool]string{true: "the file", false: "a directory on the way"}[i == len(path)-1])
		}
	}
	return nil
}

func statOf(fi os.FileInfo) *syscall.Stat_t {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st
	}
	return &syscall.Stat_t{}
}

// allows reports whether the spec's user may access fi as need (r=4,
// w=2, x=1), by its permission bits.
func (a *fileAccess) allows(fi os.FileInfo, need uint32) bool {
	if a.search && need&2 == 0 {
		return true
	}
	st := statOf(fi)
	perm := uint32(fi.Mode().Perm())
	switch {
	case st.Uid == a.uid:
		perm >>= 6
	case slices.Contains(a.gids, st.Gid):
		perm >>= 3
	}
	return perm&need == need
}

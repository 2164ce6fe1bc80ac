package confine

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	skunix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	"golang.org/x/sys/unix"
)

// unixNames checks the file system names of the checkpoint's unix sockets,
// which CRIU handles as root, in the container's mount namespace, before
// the tasks drop to their own credentials. For each socket with a path
// name (not an abstract one) that a task holds:
//   - it unlinks a socket file already at the name (unless the socket is
//     flagged external);
//   - it binds the socket there again, which creates the file;
//   - it sets that file's owner and mode from the image;
//   - for a socket whose name was deleted, it makes the missing
//     directories on the way, and moves any file at the name aside (to
//     <name>.criu-sk-ghost, removing a file there first) and back.
//
// A cold start's app does each of those as the spec's user. So the
// directory the name is in, as far as it exists, must be one that user may
// write to and search (and, where it is sticky, any file at the name must
// be the user's or the directory's owner's, unless the spec grants
// CAP_FOWNER), and the socket file's owner must be a user the tasks run as
// and its group one of the spec's, unless the spec grants CAP_CHOWN (or
// CAP_SETUID and CAP_SETGID, with which the app could become them).
// Otherwise a crafted checkpoint could remove another program's socket in
// a volume the container shares, or make files where its user may not.
//
// The name is resolved as the kernel would, through the symbolic links of
// the root file system's layers, of the bind mounts' sources and of the
// tmpfs mounts' contents (see tmpfsTrees); a name whose directory is
// inside a mount whose entries snapboot cannot look up (proc, sysfs, a
// tmpfs whose contents do not list) is refused.
// Not checked, as for the files the tasks hold (see fileAccess): a spec
// that grants CAP_DAC_OVERRIDE (its user may write anywhere in the
// container). With a user namespace, CRIU binds as the namespace's root:
// the user and groups are the node's ids the spec's map to, and the
// capabilities the spec grants in it count for files whose owner and
// group it maps.
func unixNames(socks []*skunix.UnixSkEntry, c *fileChecks, access func() *fileAccess) error {
	for _, u := range socks {
		// Every socket with a path name: one flagged external that a task
		// holds is bound like any other (only the unlink skips it), and
		// one no task holds, which CRIU leaves alone, is refused by
		// unixPeers where it counts.
		name := u.GetName()
		if len(name) == 0 || name[0] == 0 {
			continue
		}
		full, err := socketPath(u)
		if err != nil {
			return err
		}
		a := access()
		if err := c.socketOwner(u, full, a); err != nil {
			return err
		}
		if !a.checkBits {
			continue
		}
		if id := u.GetMntId(); id >= 0 && u.MntId != nil && !slices.ContainsFunc(a.mounts, func(e *mnt.MntEntry) bool { return int32(e.GetMntId()) == id }) {
			return fmt.Errorf("the unix socket %s is in mount %d, which the checkpoint's mount namespace does not have", full, id)
		}
		if err := a.socketDir(full, name[0] != '/', u.GetDeleted()); err != nil {
			return err
		}
	}
	return nil
}

// socketPath returns a socket's name as an absolute path: CRIU binds a
// relative one in its directory (name_dir), or in the root when it has
// none. The kernel keeps, and CRIU dumps, a path name with one NUL, its
// last byte; any other is refused: CRIU binds the name's bytes, but
// unlinks, renames and stats the name as a C string, which would end
// elsewhere (at an earlier NUL, or past the name without one). A name with
// ".." in it is refused: the kernel resolves ".." after any link on the
// way.
func socketPath(u *skunix.UnixSkEntry) (string, error) {
	name := u.GetName()
	if bytes.IndexByte(name, 0) != len(name)-1 {
		return "", fmt.Errorf("the unix socket %q has a path name that does not end with its only NUL, as the kernel keeps them", name)
	}
	p := string(name[:len(name)-1])
	if !path.IsAbs(p) {
		dir := u.GetNameDir()
		if dir == "" {
			dir = "/"
		}
		if !path.IsAbs(dir) {
			return "", fmt.Errorf("the unix socket %q is named in directory %q, not an absolute path", p, dir)
		}
		p = dir + "/" + p
	}
	if slices.Contains(strings.Split(p, "/"), "..") {
		return "", fmt.Errorf("the unix socket %q has \"..\" in its name", p)
	}
	return path.Clean(p), nil
}

// socketOwner checks the owner CRIU gives a socket's file (see unixNames).
// The image's ids, the tasks' and the spec's are all the container's (in
// its user namespace, if it has one, where CRIU sets them as the
// namespace's root and the spec's capabilities count for them).
func (c *fileChecks) socketOwner(u *skunix.UnixSkEntry, name string, a *fileAccess) error {
	perms := u.GetFilePerms()
	if perms == nil || c.grantedOwn(unix.CAP_CHOWN) {
		return nil
	}
	if uid := perms.GetUid(); uid != c.uid && !c.taskUIDs[uid] && !c.grantedOwn(unix.CAP_SETUID) {
		return fmt.Errorf("the unix socket %s would be owned by uid %d, which CRIU sets as root; the tasks do not run as that user and the spec does not grant CAP_CHOWN", name, uid)
	}
	if gid := perms.GetGid(); !slices.Contains(c.gids, gid) && !c.grantedOwn(unix.CAP_SETGID) && !a.inSetgidDir(name, gid) {
		return fmt.Errorf("the unix socket %s would be in group %d, which CRIU sets as root; it is not among the spec's groups and the spec does not grant CAP_CHOWN", name, gid)
	}
	return nil
}

// inSetgidDir reports whether name's directory is set-group-ID with group
// gid (the container's id), which the kernel then gives the files made in
// it.
func (a *fileAccess) inSetgidDir(name string, gid uint32) bool {
	dir, exists, err := a.resolveDir(path.Dir(name))
	if err != nil || !exists {
		return false
	}
	entries, err := a.dirEntries(dir)
	if err != nil || len(entries) == 0 {
		return false
	}
	if a.userns != nil {
		gid = a.userns.gid(gid)
	}
	for _, e := range entries {
		if e.fi.Mode()&os.ModeSetgid == 0 || statOf(e.fi).Gid != gid {
			return false
		}
	}
	return true
}

// socketDir checks the directory of a socket's name (see unixNames).
func (a *fileAccess) socketDir(name string, relative, deleted bool) error {
	dir, exists, err := a.resolveDir(path.Dir(name))
	if err != nil {
		return fmt.Errorf("the unix socket %s: %w", name, err)
	}
	if dir == "" {
		return nil // not a directory on the way: CRIU's bind fails
	}
	if err := a.searchable(dir, relative); err != nil {
		return fmt.Errorf("the unix socket %s: %w", name, err)
	}
	entries, err := a.dirEntries(dir)
	if err != nil {
		return fmt.Errorf("the unix socket %s: %w", name, err)
	}
	if len(entries) == 0 {
		return nil // a tmpfs's: the container's own
	}
	// Each place the directory may be on the node (one, but for a bind
	// whose key stands for several of the spec's).
	for _, e := range entries {
		if !a.allows(e, wantWrite|wantExec) {
			st := statOf(e.fi)
			return fmt.Errorf("the unix socket %s is in %s, where the spec's user (%s) may not make or remove files (mode %o, owner %d:%d); CRIU would unlink and bind it as root",
				name, dir, a.user(), e.fi.Mode().Perm(), st.Uid, st.Gid)
		}
	}
	if !exists || a.caps&(1<<unix.CAP_FOWNER) != 0 {
		return nil
	}
	// The files CRIU may remove or move there: one at the name, and for a
	// deleted name, one at the name CRIU parks that one at.
	bases := []string{path.Base(name)}
	if deleted {
		bases = append(bases, path.Base(name)+ghostSocketSuffix)
	}
	for _, e := range entries {
		if e.fi.Mode()&os.ModeSticky == 0 {
			continue
		}
		for _, base := range bases {
			var there os.FileInfo
			if len(entries) == 1 {
				// The container's view: the root file system's layers merged.
				_, there, err = a.shownAt(path.Join(dir, base))
			} else {
				there, err = os.Lstat(filepath.Join(e.path, base))
				if errors.Is(err, os.ErrNotExist) {
					there, err = nil, nil
				}
			}
			if err != nil {
				return fmt.Errorf("the unix socket %s: %w", name, err)
			}
			if there == nil {
				continue
			}
			if a.nsCapable(unix.CAP_FOWNER, statOf(there)) {
				continue
			}
			if owner, dirOwner := statOf(there).Uid, statOf(e.fi).Uid; owner != a.uid && dirOwner != a.uid {
				return fmt.Errorf("the unix socket %s would remove or move %s, a file of uid %d in sticky directory %s, which the spec's user (%s) may not; CRIU would do it as root", name, base, owner, dir, a.user())
			}
		}
	}
	return nil
}

// ghostSocketSuffix is the name CRIU parks a file at, beside a deleted
// socket's name, while it binds the socket there (UNIX_GHOST_FMT); it
// removes a file already there first.
const ghostSocketSuffix = ".criu-sk-ghost"

// searchable checks search permission on the directories above dir, as
// the kernel needs them to reach it, each as the node has it (dirEntries:
// a mount's root is its source's, or its file system's), from the root,
// or from the spec's working directory for a name bound relative to it,
// where runc's cold start begins (it enters that directory as root).
func (a *fileAccess) searchable(dir string, relative bool) error {
	top := "/"
	if relative && a.cwd != "" && (dir == a.cwd || strings.HasPrefix(dir, a.cwd+"/")) {
		top = a.cwd
	}
	if dir == top {
		return nil // its own search permission is checked with its write permission
	}
	for above := path.Dir(dir); ; above = path.Dir(above) {
		entries, err := a.dirEntries(above)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if !a.allows(e, wantExec) {
				st := statOf(e.fi)
				return fmt.Errorf("the spec's user (%s) may not search %s (mode %o, owner %d:%d), on the way to %s, which CRIU reaches as root", a.user(), above, e.fi.Mode().Perm(), st.Uid, st.Gid, dir)
			}
		}
		if above == top || above == "/" {
			break
		}
	}
	return nil
}

// maxLinks is the kernel's limit of symbolic links in one path's
// resolution (MAXSYMLINKS).
const maxLinks = 40

// resolveDir resolves dir as the kernel would in the container, following
// symbolic links: it returns the directory it ends in, with exists false
// where a component is missing (dir is then the deepest one there, where
// CRIU would make the rest), or "" where something else than a directory is
// on the way.
func (a *fileAccess) resolveDir(dir string) (resolved string, exists bool, err error) {
	resolved, rest, err := a.resolve(dir)
	switch {
	case err != nil:
		return "", false, err
	case rest == nil:
		return resolved, true, nil
	case len(rest) == 0:
		return "", false, nil // something else than a directory
	}
	return resolved, false, nil
}

// resolve follows dir's symbolic links as resolveDir does; rest is nil
// where all of dir is there, the components past the deepest directory
// there where one is missing, and empty where something else than a
// directory is on the way.
func (a *fileAccess) resolve(dir string) (resolved string, rest []string, err error) {
	pending := splitPath(dir)
	cur, links := "/", 0
	for len(pending) > 0 {
		part := pending[0]
		pending = pending[1:]
		switch part {
		case ".":
			continue
		case "..":
			cur = path.Dir(cur) // cur has no link in it
			continue
		}
		next := path.Join(cur, part)
		s, _, err := a.shownAt(next)
		if err != nil {
			return "", nil, err
		}
		switch s.kind {
		case shownNone:
			return cur, append([]string{part}, pending...), nil
		case shownDir:
			cur = next
		case shownLink:
			if links++; links > maxLinks {
				return "", nil, fmt.Errorf("more than %d symbolic links on the way to %s", maxLinks, dir)
			}
			if path.IsAbs(s.target) {
				cur = "/"
			}
			pending = append(splitPath(s.target), pending...)
		default:
			return "", []string{}, nil
		}
	}
	return cur, nil, nil
}

// The kinds of entries shownAt finds.
const (
	shownNone = iota
	shownDir
	shownLink
	shownOther
)

type shown struct {
	kind   int
	target string // a link's
}

// shownAt returns what the container shows at name, an absolute path with
// no link on the way to its last component, and its file information (nil
// for none). Entries are looked up in the root file system's layers and in
// the bind mounts' sources; a mount's root is a directory (or a bound
// file).
func (a *fileAccess) shownAt(name string) (shown, os.FileInfo, error) {
	return a.shownIn(a.mountOf(name), name)
}

// shownIn is shownAt in mount m, which name is in or at.
func (a *fileAccess) shownIn(m *mnt.MntEntry, name string) (shown, os.FileInfo, error) {
	if m == nil {
		return shown{}, nil, fmt.Errorf("%s is in no mount of the checkpoint's", name)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(name, m.GetMountpoint()), "/")
	isRoot := m.GetMountpoint() == "/"
	switch {
	case isRoot && rel == "":
		fi, err := a.layers.rootInfo()
		return shown{kind: shownDir}, fi, err
	case isRoot:
		found, err := a.layers.lookup(rel)
		if err != nil {
			return shown{}, nil, err
		}
		if len(found) < len(splitPath(rel)) {
			return shown{kind: shownNone}, nil, nil
		}
		e := found[len(found)-1]
		return shownKind(e.fi, func() (string, error) { return a.layers.roots[e.layer].Readlink(rel) })
	case m.GetExtKey() != "":
		return a.shownInSources(name, m, rel)
	case rel == "":
		return shown{kind: shownDir}, nil, nil // a tmpfs's root, proc's, ...
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_TMPFS && a.tmpfs != nil:
		e, ok, err := a.tmpfs.lookup(m, path.Join("/", m.GetRoot(), rel))
		switch {
		case err != nil:
			return shown{}, nil, err
		case !ok:
			return shown{kind: shownNone}, nil, nil
		case e.kind == tar.TypeDir:
			return shown{kind: shownDir}, nil, nil // the container's own: no information needed
		case e.kind == tar.TypeSymlink:
			return shown{kind: shownLink, target: e.target}, nil, nil
		}
		return shown{kind: shownOther}, nil, nil
	}
	return shown{}, nil, fmt.Errorf("%s is inside the %s mount at %s, whose %w", name, mnt.Fstype(m.GetFstype()), m.GetMountpoint(), errCannotLookUp)
}

// errCannotLookUp is the error of a name in a mount whose entries snapboot
// cannot look up (proc, sysfs; a tmpfs without its listing).
var errCannotLookUp = errors.New("entries snapboot cannot look up")

// shownInSources looks rel up under each source a bind mount's key may
// stand for: they must show the same.
func (a *fileAccess) shownInSources(name string, m *mnt.MntEntry, rel string) (shown, os.FileInfo, error) {
	sources := a.bindSources(m.GetExtKey())
	if len(sources) == 0 {
		return shown{}, nil, fmt.Errorf("%s is in the mount at %s, whose source snapboot does not know", name, m.GetMountpoint())
	}
	var first shown
	var firstInfo os.FileInfo
	for i, src := range sources {
		s, fi, err := shownUnder(src, rel)
		if err != nil {
			return shown{}, nil, fmt.Errorf("%s: %w", name, err)
		}
		if i == 0 {
			first, firstInfo = s, fi
		} else if s != first {
			return shown{}, nil, fmt.Errorf("%s differs between the sources of the mount at %s", name, m.GetMountpoint())
		}
	}
	return first, firstInfo, nil
}

// shownUnder looks rel up under src, a directory (or file) on the node.
func shownUnder(src, rel string) (shown, os.FileInfo, error) {
	if rel == "" {
		fi, err := os.Stat(src)
		if err != nil {
			return shown{}, nil, err
		}
		if !fi.IsDir() {
			return shown{kind: shownOther}, fi, nil
		}
		return shown{kind: shownDir}, fi, nil
	}
	root, err := os.OpenRoot(src)
	if err != nil {
		return shown{}, nil, err
	}
	defer root.Close()
	fi, err := root.Lstat(rel)
	if errors.Is(err, os.ErrNotExist) {
		return shown{kind: shownNone}, nil, nil
	}
	if err != nil {
		return shown{}, nil, err
	}
	return shownKind(fi, func() (string, error) { return root.Readlink(rel) })
}

// shownKind tells a directory, a link (with its target) and anything else
// apart.
func shownKind(fi os.FileInfo, readlink func() (string, error)) (shown, os.FileInfo, error) {
	switch {
	case fi.IsDir():
		return shown{kind: shownDir}, fi, nil
	case fi.Mode()&os.ModeSymlink != 0:
		t, err := readlink()
		if err != nil {
			return shown{}, nil, err
		}
		return shown{kind: shownLink, target: t}, fi, nil
	}
	return shown{kind: shownOther}, fi, nil
}

// dirEntries returns a resolved directory as the node has it, for each
// place it may be: its root file system entry (with its topmost layer's
// path, for its ACL), or its entry under each source of its bind mount's
// key. None for a directory of a mount whose files are the container's
// own (a tmpfs, new for the container and filled from the checkpoint).
func (a *fileAccess) dirEntries(dir string) ([]entry, error) {
	m := a.mountOf(dir)
	rel := strings.TrimPrefix(strings.TrimPrefix(dir, m.GetMountpoint()), "/")
	switch {
	case m.GetExtKey() != "":
		var out []entry
		for _, src := range a.bindSources(m.GetExtKey()) {
			_, fi, err := shownUnder(src, rel)
			if err != nil {
				return nil, err
			}
			if fi == nil {
				return nil, fmt.Errorf("%s is not in %s, a source of the mount at %s", rel, src, m.GetMountpoint())
			}
			out = append(out, entry{fi: fi, path: filepath.Join(src, rel)})
		}
		return out, nil
	case mnt.Fstype(m.GetFstype()) == mnt.Fstype_TMPFS:
		return nil, nil
	case m.GetMountpoint() != "/":
		return nil, fmt.Errorf("%s is in the %s mount at %s, where snapboot does not judge sockets", dir, mnt.Fstype(m.GetFstype()), m.GetMountpoint())
	case rel == "":
		fi, err := a.layers.rootInfo()
		if err != nil {
			return nil, err
		}
		return []entry{{fi: fi, path: a.layers.dirs[0]}}, nil
	}
	found, err := a.layers.lookup(rel)
	if err != nil {
		return nil, err
	}
	if len(found) < len(splitPath(rel)) {
		return nil, fmt.Errorf("%s is not in the root file system", dir)
	}
	return found[len(found)-1:], nil
}

// mountPointsDirect refuses a mount whose mount point goes through a
// symbolic link, or is one (in the root file system's layers, a bind
// source or a tmpfs's contents): CRIU mounts it where the link leads, as
// root, while snapboot matches names against mount points as written. The
// kernel shows, and CRIU dumps, mount points without links. Each
// component is looked up as an entry of the directory it is in, in the
// mount that directory is in. Where that cannot be looked up (proc,
// sysfs, a root file system snapboot cannot look into), that component
// is not judged: those are the kernel's, or refused where a name needs
// them; any other error refuses.
func (a *fileAccess) mountPointsDirect() error {
	for _, m := range a.mounts {
		parts := splitPath(m.GetMountpoint())
		for i := 1; i <= len(parts); i++ {
			p := "/" + path.Join(parts[:i]...)
			s, _, err := a.shownIn(a.mountOf(path.Dir(p)), p)
			if errors.Is(err, errCannotLookUp) || errors.Is(err, errNoLayers) {
				continue // the next components may be in a mount that can be looked up
			}
			if err != nil {
				return fmt.Errorf("the mount at %s: %w", m.GetMountpoint(), err)
			}
			if s.kind == shownLink {
				return fmt.Errorf("the mount at %s goes through a symbolic link at %s, which CRIU would follow, as root, to mount it elsewhere", m.GetMountpoint(), p)
			}
			if s.kind != shownDir {
				break // none (CRIU makes it, or fails), or a file a file is bound on
			}
		}
	}
	return nil
}

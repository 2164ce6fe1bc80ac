package confine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// CheckRootfsChanges holds a checkpoint's rootfs changes, unpacked in dir
// (overlay whiteouts and opaque directories), to what the spec's user
// could have made of the image's root file system (imageLayers, topmost
// first): they are stacked on it as a layer, and a change the user could
// not make would let the app past the image's own files (a new
// /etc/shadow, and the image's setuid su, for a user allowed to gain
// privileges). Where the spec's capabilities let its user past any
// file's permission bits (see fileAccess), nothing is checked. Otherwise
// each entry must be one of:
//   - what runc makes, as root, for a cold start: a missing mount point of
//     the spec's (an empty file for a file's) or the working directory,
//     and the directories on the way, the container root's and writable
//     by it only, at the path runc resolves through the image's links;
//   - the image's directory or file changed in place: its owner the
//     image's (or another with CAP_CHOWN), its group too or, for the
//     user's own, another of the user's groups; its mode the image's, or
//     the user's own (CAP_FOWNER), without a set-group-ID bit for a group
//     not the user's; a file's contents the user may write (or own);
//   - an entry made, replaced or removed in a directory the user may write
//     to and search (or owns), with the sticky rule, a directory of the
//     image's there (or one an opaque directory hides) only if the user
//     could have emptied it; owned by the user and one of its groups (or
//     the directory's, where that is set-group-ID), or by anyone with
//     CAP_CHOWN.
func CheckRootfsChanges(dir string, imageLayers []string, spec *specs.Spec) error {
	m, err := specMasks(spec)
	if err != nil {
		return err
	}
	l := &layers{dirs: imageLayers}
	defer l.close()
	root := &mnt.MntEntry{MntId: proto.Uint32(1), Mountpoint: proto.String("/"), Root: proto.String("/")}
	a := newFileAccess(spec, m, []*mnt.MntEntry{root}, l)
	if !a.checkBits {
		return nil
	}
	if a.userns != nil && a.uid == unmappedID {
		return fmt.Errorf("%w: the spec's user %d is not mapped in its user namespace", ErrRefused, a.specUID)
	}
	r := &rootfsChanges{a: a}
	dests := []string{}
	for dest := range a.binds {
		dests = append(dests, dest)
	}
	if a.cwd != "" {
		dests = append(dests, a.cwd)
	}
	for _, d := range dests {
		d, err := a.resolveInImage(d)
		if err != nil {
			return fmt.Errorf("%w: the checkpoint's rootfs changes: %w", ErrRefused, err)
		}
		r.destinations = append(r.destinations, d)
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return r.check(filepath.ToSlash(rel), fi, p)
	})
	if err != nil && !errors.Is(err, ErrRefused) {
		return fmt.Errorf("%w: the checkpoint's rootfs changes: %w", ErrRefused, err)
	}
	return err
}

// rootfsChanges checks the entries of a checkpoint's rootfs changes (see
// CheckRootfsChanges).
type rootfsChanges struct {
	a *fileAccess
	// destinations are the spec's mount destinations and working
	// directory, resolved in the image as runc resolves them.
	destinations []string
	emptied      int // entries looked at by couldEmpty, bounded
}

// check checks the entry at rel (at p in the changes).
func (r *rootfsChanges) check(rel string, fi os.FileInfo, p string) error {
	a := r.a
	below, err := a.imageEntry(rel)
	if err != nil {
		return err
	}
	st := statOf(fi)
	refuse := func(why string) error {
		return fmt.Errorf("%w: the checkpoint's rootfs changes /%s (%s), which the spec's user (%s) could not: %s", ErrRefused, rel, describe(fi), a.user(), why)
	}
	opaque := fi.IsDir() && isOpaque(p)
	switch {
	case isWhiteout(fi) && below == nil:
		return nil
	case below == nil && r.madeByRunc(rel, fi, st):
		return nil
	case below != nil && !opaque && (fi.IsDir() && below.fi.IsDir() || fi.Mode().IsRegular() && below.fi.Mode().IsRegular()):
		bs := statOf(below.fi)
		owner := a.owns(bs)
		switch {
		case !a.searchableTo(rel):
			return refuse("it may not search a directory on the way")
		case bs.Uid != st.Uid && !a.mayChown(st):
			return refuse(fmt.Sprintf("it would be owned by uid %d, the image's is %d", st.Uid, bs.Uid))
		case bs.Gid != st.Gid && !a.mayChown(st) && !(owner && slices.Contains(a.gids, st.Gid)):
			return refuse(fmt.Sprintf("it would be in group %d, the image's is %d", st.Gid, bs.Gid))
		case below.fi.Mode() != fi.Mode() && !owner:
			return refuse("it does not own the image's entry, whose mode changed")
		case fi.Mode()&os.ModeSetgid != 0 && below.fi.Mode()&os.ModeSetgid == 0 && !slices.Contains(a.gids, st.Gid) && !a.mayChown(st):
			return refuse(fmt.Sprintf("it would be set-group-ID for group %d, not one of the user's", st.Gid))
		case fi.Mode().IsRegular() && !owner && !a.allows(*below, wantWrite):
			return refuse("it may not write the image's file")
		}
		return nil
	}
	// Made, replaced or removed in the directory above.
	parent, err := a.changedParent(path.Dir(rel), filepath.Dir(p))
	if err != nil {
		return err
	}
	ps := statOf(parent.fi)
	if !a.allows(parent, wantWrite|wantExec) && !(a.owns(ps) && a.allows(parent, wantExec)) || !a.searchableTo(path.Dir(rel)) {
		return refuse("it may not make or remove files in its directory")
	}
	if below != nil {
		if parent.fi.Mode()&os.ModeSticky != 0 && !a.mayRemoveSticky(statOf(below.fi), ps) {
			return refuse("its directory is sticky, and the image's entry another user's")
		}
		if below.fi.IsDir() && !r.couldEmpty(rel, *below) {
			return refuse("it replaces the image's directory, whose entries the user could not all remove")
		}
	}
	if isWhiteout(fi) {
		return nil
	}
	if !a.mayChown(st) {
		setgidDir := parent.fi.Mode()&os.ModeSetgid != 0 && ps.Gid == st.Gid
		if st.Uid != a.uid || !slices.Contains(a.gids, st.Gid) && !setgidDir {
			return refuse(fmt.Sprintf("it would be owned by %d:%d", st.Uid, st.Gid))
		}
	}
	return nil
}

// madeByRunc reports whether a new entry is one runc makes, as root, for
// a cold start (see CheckRootfsChanges).
func (r *rootfsChanges) madeByRunc(rel string, fi os.FileInfo, st *syscall.Stat_t) bool {
	if !r.a.rootOwned(st) || fi.Mode()&(os.ModeSticky|os.ModeSetgid|os.ModeSetuid) != 0 || fi.Mode().Perm()&0o022 != 0 {
		return false
	}
	p := "/" + rel
	for _, d := range r.destinations {
		switch {
		case d == p && (fi.IsDir() || fi.Mode().IsRegular() && fi.Size() == 0):
			return true
		case strings.HasPrefix(d, p+"/") && fi.IsDir():
			return true
		}
	}
	return false
}

// maxEmptied bounds the image's entries couldEmpty looks at, in all.
const maxEmptied = 100000

// couldEmpty reports whether the user could have removed every entry the
// image has under rel, a directory (e).
func (r *rootfsChanges) couldEmpty(rel string, e entry) bool {
	a := r.a
	names, err := a.layers.names(rel)
	if err != nil {
		return false
	}
	ds := statOf(e.fi)
	for _, name := range names {
		child := path.Join(rel, name)
		c, err := a.imageEntry(child)
		if err != nil {
			return false
		}
		if c == nil {
			continue // hidden by a whiteout
		}
		if r.emptied++; r.emptied > maxEmptied {
			return false
		}
		if !a.allows(e, wantWrite|wantExec) && !(a.owns(ds) && a.allows(e, wantExec)) {
			return false
		}
		if e.fi.Mode()&os.ModeSticky != 0 && !a.mayRemoveSticky(statOf(c.fi), ds) {
			return false
		}
		if c.fi.IsDir() && !r.couldEmpty(child, *c) {
			return false
		}
	}
	return true
}

// owns reports whether the user owns st's file or may act as its owner
// (CAP_FOWNER).
func (a *fileAccess) owns(st *syscall.Stat_t) bool {
	return st.Uid == a.uid || a.caps&(1<<unix.CAP_FOWNER) != 0 || a.nsCapable(unix.CAP_FOWNER, st)
}

// mayChown reports whether the user could give a file st's owner and
// group (CAP_CHOWN).
func (a *fileAccess) mayChown(st *syscall.Stat_t) bool {
	return a.caps&(1<<unix.CAP_CHOWN) != 0 || a.nsCapable(unix.CAP_CHOWN, st)
}

// mayRemoveSticky is the kernel's sticky rule: the user may remove a file
// (st) from a sticky directory (dir) it or the directory is the user's.
func (a *fileAccess) mayRemoveSticky(st, dir *syscall.Stat_t) bool {
	return st.Uid == a.uid || dir.Uid == a.uid || a.caps&(1<<unix.CAP_FOWNER) != 0 || a.nsCapable(unix.CAP_FOWNER, st)
}

// rootOwned reports whether st's owner and group are the container's root
// (the node's, or the one its user namespace maps root to).
func (a *fileAccess) rootOwned(st *syscall.Stat_t) bool {
	if a.userns != nil {
		return st.Uid == a.userns.uid(0) && st.Gid == a.userns.gid(0)
	}
	return st.Uid == 0 && st.Gid == 0
}

// resolveInImage resolves p, an absolute path, through the symbolic links
// of the image's layers (a.mounts the root alone), as runc resolves a
// mount's destination in the rootfs; the part past what the image has is
// kept as it is.
func (a *fileAccess) resolveInImage(p string) (string, error) {
	resolved, rest, err := a.resolve(p)
	if err != nil {
		return "", err
	}
	return path.Join(append([]string{resolved}, rest...)...), nil
}

// imageEntry returns what the image's layers show at rel (nil for none).
func (a *fileAccess) imageEntry(rel string) (*entry, error) {
	found, err := a.layers.lookup(rel)
	if err != nil {
		return nil, err
	}
	if len(found) < len(splitPath(rel)) {
		return nil, nil
	}
	return &found[len(found)-1], nil
}

// changedParent returns the directory rel is in as the user found it:
// the image's, or, for one the changes make, the changes' own (at
// inChanges).
func (a *fileAccess) changedParent(rel, inChanges string) (entry, error) {
	if rel == "." {
		fi, err := a.layers.rootInfo()
		return entry{fi: fi, path: a.layers.dirs[0]}, err
	}
	below, err := a.imageEntry(rel)
	if err != nil {
		return entry{}, err
	}
	if below != nil && below.fi.IsDir() {
		return *below, nil
	}
	fi, err := os.Lstat(inChanges)
	return entry{fi: fi, path: inChanges}, err
}

// searchableTo reports whether the user may search every directory of the
// image's on the way to rel.
func (a *fileAccess) searchableTo(rel string) bool {
	if rel == "." {
		return true
	}
	found, err := a.layers.lookup(rel)
	if err != nil {
		return false
	}
	parts := splitPath(rel)
	for i, e := range found {
		if i == len(parts)-1 {
			break // rel itself
		}
		if e.fi.IsDir() && !a.allows(e, wantExec) {
			return false
		}
	}
	return true
}

// isOpaque reports whether p, a directory of the changes, is an overlay
// opaque directory.
func isOpaque(p string) bool {
	buf := make([]byte, 2)
	n, err := unix.Lgetxattr(p, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}

func describe(fi os.FileInfo) string {
	st, _ := fi.Sys().(*syscall.Stat_t)
	if st == nil {
		return fi.Mode().String()
	}
	if isWhiteout(fi) {
		return "removed"
	}
	return fmt.Sprintf("%s, owner %d:%d", fi.Mode(), st.Uid, st.Gid)
}

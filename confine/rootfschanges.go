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

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
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
//   - a directory the image has, with its owner, group and mode (overlayfs
//     copies a changed file's directories up);
//   - a directory the image lacks that is one of the spec's mount points,
//     or on the way to one, the container root's and writable by it only
//     (runc makes them, as root);
//   - a whiteout of nothing the image has;
//   - the image's regular file, with its owner and group, that the user
//     may write (its contents changed);
//   - a directory of the image's that the user owns, its mode changed;
//   - a new entry, or one that replaces or removes the image's, in a
//     directory the user may write to and search (and where it is sticky,
//     replacing the user's own), owned by the user and one of the spec's
//     groups (or the directory's, where it is set-group-ID).
func CheckRootfsChanges(dir string, imageLayers []string, spec *specs.Spec) error {
	m, err := specMasks(spec)
	if err != nil {
		return err
	}
	l := &layers{dirs: imageLayers}
	defer l.close()
	a := newFileAccess(spec, m, nil, l)
	if !a.checkBits {
		return nil
	}
	if a.userns != nil && a.uid == unmappedID {
		return fmt.Errorf("%w: the spec's user %d is not mapped in its user namespace", ErrRefused, a.specUID)
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
		return a.rootfsChange(filepath.ToSlash(rel), fi, filepath.Dir(p))
	})
	if err != nil && !errors.Is(err, ErrRefused) {
		return fmt.Errorf("%w: the checkpoint's rootfs changes: %w", ErrRefused, err)
	}
	return err
}

// rootfsChange checks one entry of the rootfs changes (see
// CheckRootfsChanges); parentPath is its directory in the changes.
func (a *fileAccess) rootfsChange(rel string, fi os.FileInfo, parentPath string) error {
	below, err := a.imageEntry(rel)
	if err != nil {
		return err
	}
	st := statOf(fi)
	refuse := func(why string) error {
		return fmt.Errorf("%w: the checkpoint's rootfs changes /%s (%s), which the spec's user (%s) could not: %s", ErrRefused, rel, describe(fi), a.user(), why)
	}
	sameOwner := func(b os.FileInfo) bool {
		bs := statOf(b)
		return bs.Uid == st.Uid && bs.Gid == st.Gid
	}
	switch {
	case isWhiteout(fi) && below == nil:
		return nil
	case fi.IsDir() && below == nil && a.mountPointDir(rel) && a.rootOwned(st) && fi.Mode()&(os.ModeSticky|os.ModeSetgid|os.ModeSetuid) == 0 && fi.Mode().Perm()&0o022 == 0:
		return nil // runc makes a mount's missing mount point, and the directories on the way, as root
	case fi.IsDir() && below != nil && below.IsDir() && sameOwner(below) && below.Mode() == fi.Mode() && !isOpaque(filepath.Join(parentPath, path.Base(rel))):
		return nil // a directory copied up
	case fi.Mode().IsRegular() && below != nil && below.Mode().IsRegular() && sameOwner(below):
		owner := statOf(below).Uid == a.uid || a.nsCapable(unix.CAP_FOWNER, statOf(below)) || a.caps&(1<<unix.CAP_FOWNER) != 0
		switch {
		case !a.searchableTo(rel):
			return refuse("it may not search a directory on the way")
		case below.Mode().Perm() != fi.Mode().Perm() && !owner:
			return refuse("it does not own the image's file, whose mode changed")
		case below.Mode().Perm() == fi.Mode().Perm() && !owner && !a.allows(entry{fi: below}, wantWrite):
			return refuse("it may not write the image's file")
		}
		return nil
	case fi.IsDir() && below != nil && below.IsDir() && sameOwner(below) && !isOpaque(filepath.Join(parentPath, path.Base(rel))):
		if statOf(below).Uid == a.uid || a.nsCapable(unix.CAP_FOWNER, statOf(below)) {
			return nil
		}
		return refuse("it does not own the image's directory, whose mode changed")
	}
	// Made, replaced or removed in the directory above.
	parent, err := a.changedParent(path.Dir(rel), parentPath)
	if err != nil {
		return err
	}
	if !a.allows(entry{fi: parent}, wantWrite|wantExec) || !a.searchableTo(path.Dir(rel)) {
		return refuse("it may not make or remove files in its directory")
	}
	if below != nil && parent.Mode()&os.ModeSticky != 0 && statOf(below).Uid != a.uid && statOf(parent).Uid != a.uid &&
		!a.nsCapable(unix.CAP_FOWNER, statOf(below)) && a.caps&(1<<unix.CAP_FOWNER) == 0 {
		return refuse("its directory is sticky, and the image's entry another user's")
	}
	if isWhiteout(fi) {
		return nil
	}
	if isOpaque(filepath.Join(parentPath, path.Base(rel))) && below != nil {
		// It hides the image's entries in the directory: each is removed.
		return refuse("it hides what the image has in the directory")
	}
	chown := a.caps&(1<<unix.CAP_CHOWN) != 0 || a.nsCapable(unix.CAP_CHOWN, st)
	setgidDir := parent.Mode()&os.ModeSetgid != 0 && statOf(parent).Gid == st.Gid
	if !chown && (st.Uid != a.uid || !slices.Contains(a.gids, st.Gid) && !setgidDir) {
		return refuse(fmt.Sprintf("it would be owned by %d:%d", st.Uid, st.Gid))
	}
	return nil
}

// rootOwned reports whether st's owner and group are the container's root
// (the node's, or the one its user namespace maps root to).
func (a *fileAccess) rootOwned(st *syscall.Stat_t) bool {
	if a.userns != nil {
		return st.Uid == a.userns.uid(0) && st.Gid == a.userns.gid(0)
	}
	return st.Uid == 0 && st.Gid == 0
}

// mountPointDir reports whether rel is one of the spec's mount
// destinations or a directory on the way to one.
func (a *fileAccess) mountPointDir(rel string) bool {
	p := "/" + rel
	for dest := range a.binds {
		if dest == p || strings.HasPrefix(dest, p+"/") {
			return true
		}
	}
	return false
}

// imageEntry returns what the image's layers show at rel (nil for none).
func (a *fileAccess) imageEntry(rel string) (os.FileInfo, error) {
	found, err := a.layers.lookup(rel)
	if err != nil {
		return nil, err
	}
	if len(found) < len(splitPath(rel)) {
		return nil, nil
	}
	return found[len(found)-1].fi, nil
}

// changedParent returns the directory rel is in as the user found it:
// the image's, or, for one the changes make, the changes' own.
func (a *fileAccess) changedParent(rel, inChanges string) (os.FileInfo, error) {
	if rel == "." {
		return a.layers.rootInfo()
	}
	if below, err := a.imageEntry(rel); err != nil || (below != nil && below.IsDir()) {
		return below, err
	}
	return os.Lstat(inChanges)
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

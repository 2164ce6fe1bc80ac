//go:build linux

package unpack

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
	opaqueXattr    = "trusted.overlay.opaque"

	typeGNUVolume = 'V' // GNU tar volume label: metadata only
)

// extractor writes the entries of one archive beneath root.
type extractor struct {
	root       *os.Root
	mode       Mode
	maxBytes   int64
	budget     *Budget
	maxEntries int
	st         Stats
	buf        []byte
	files      FileObserver
	lender     *lender // set when the archive's content can be lent

	// Directory modes and times are applied after all entries, so that
	// entries can still be written into a directory the archive makes
	// read-only, and so that creating children does not change the times.
	dirs     []dirMeta
	dirIndex map[string]int
}

type dirMeta struct {
	name         string
	mode         os.FileMode
	atime, mtime time.Time
}

func unsafeEntry(name, format string, args ...any) error {
	return fmt.Errorf("entry %q: %s: %w", name, fmt.Sprintf(format, args...), ErrUnsafe)
}

func failed(name string, err error) error {
	return fmt.Errorf("entry %q: %w", name, err)
}

// entry checks and writes one archive entry; r yields its content.
func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader, tar.TypeXHeader, tar.TypeGNULongName, tar.TypeGNULongLink, typeGNUVolume:
		return nil // metadata; archive/tar applies what matters to the next entry
	}
	name, problem := cleanName(hdr.Name)
	if problem != "" {
		return unsafeEntry(hdr.Name, "%s", problem)
	}
	if hdr.Uid < 0 || hdr.Gid < 0 {
		return unsafeEntry(hdr.Name, "negative owner %d:%d", hdr.Uid, hdr.Gid)
	}
	parts := strings.Split(name, "/")
	for _, c := range parts[:len(parts)-1] {
		if strings.HasPrefix(c, whiteoutPrefix) {
			return unsafeEntry(hdr.Name, "whiteout name as a directory")
		}
	}
	if strings.HasPrefix(parts[len(parts)-1], whiteoutPrefix) {
		if x.mode != RootfsDiff {
			return unsafeEntry(hdr.Name, "whiteout in %v archive", x.mode)
		}
		return x.whiteout(hdr, name)
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(hdr, name)
	case tar.TypeReg, tar.TypeGNUSparse: // archive/tar fills in the holes of sparse files
		return x.file(hdr, name, r)
	case tar.TypeSymlink:
		return x.symlink(hdr, name)
	case tar.TypeLink:
		return x.hardlink(hdr, name)
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return unsafeEntry(hdr.Name, "device or fifo")
	}
	return unsafeEntry(hdr.Name, "unsupported entry type %q", hdr.Typeflag)
}

// cleanName checks an entry or hard link name. It returns the name cleaned,
// where "." stands for the extraction directory itself, or why it is unsafe.
func cleanName(name string) (clean, problem string) {
	switch {
	case name == "":
		return "", "empty name"
	case strings.IndexByte(name, 0) >= 0:
		return "", "NUL byte in name"
	case strings.HasPrefix(name, "/"):
		return "", "absolute name"
	}
	for c := range strings.SplitSeq(name, "/") {
		if c == ".." {
			return "", `".." in name`
		}
	}
	return path.Clean(name), ""
}

// owner returns the owner an entry gets: hdr's in a rootfs diff; root in
// CRIU images, which CRIU (as root) reads, and which no one else should own.
func (x *extractor) owner(hdr *tar.Header) (uid, gid int) {
	if x.mode == CRIUImages {
		return 0, 0
	}
	return hdr.Uid, hdr.Gid
}

// perm returns the permission bits from hdr that the mode allows. A
// checkpoint is untrusted: no file in it is setuid or setgid, which would
// let a process of the clone run with the file owner's ids (root's) where
// its spec gives it less. Directories keep setgid and sticky bits.
func (x *extractor) perm(hdr *tar.Header) os.FileMode {
	m := hdr.FileInfo().Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	switch {
	case x.mode == CRIUImages:
		m &= os.ModePerm
	case hdr.Typeflag != tar.TypeDir:
		m &^= os.ModeSetuid | os.ModeSetgid
	}
	return m
}

// prepare creates the missing parents of name and clears the way for an
// entry there: an existing non-directory is removed, and so is an existing
// directory unless the entry is a directory too. It reports whether a
// directory is left in place.
func (x *extractor) prepare(name string, isDir bool) (bool, error) {
	if err := x.root.MkdirAll(path.Dir(name), 0o755); err != nil {
		return false, err
	}
	fi, err := x.root.Lstat(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, err
	case fi.IsDir() && isDir:
		return true, nil
	case fi.IsDir():
		return false, x.root.RemoveAll(name)
	}
	return false, x.root.Remove(name)
}

func (x *extractor) dir(hdr *tar.Header, name string) error {
	if name == "." {
		return nil // the extraction directory itself is left as the caller made it
	}
	exists, err := x.prepare(name, true)
	if err == nil && !exists {
		err = x.root.Mkdir(name, 0o755)
	}
	if err == nil {
		uid, gid := x.owner(hdr)
		err = x.root.Lchown(name, uid, gid)
	}
	if err != nil {
		return failed(hdr.Name, err)
	}
	m := dirMeta{name: name, mode: x.perm(hdr), atime: atime(hdr), mtime: hdr.ModTime}
	if i, ok := x.dirIndex[name]; ok {
		x.dirs[i] = m
	} else {
		x.dirIndex[name] = len(x.dirs)
		x.dirs = append(x.dirs, m)
	}
	return nil
}

// finishDirs applies the deferred directory modes and times, deepest
// entries first. A directory that a later entry replaced is skipped.
func (x *extractor) finishDirs() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		if fi, err := x.root.Lstat(d.name); err != nil || !fi.IsDir() {
			continue
		}
		if err := x.root.Chmod(d.name, d.mode); err != nil {
			return failed(d.name, err)
		}
		if err := x.root.Chtimes(d.name, d.atime, d.mtime); err != nil {
			return failed(d.name, err)
		}
	}
	return nil
}

func atime(hdr *tar.Header) time.Time {
	if hdr.AccessTime.IsZero() {
		return hdr.ModTime
	}
	return hdr.AccessTime
}

// writerOnly hides (*os.File).ReadFrom so that io.CopyBuffer uses our buffer.
type writerOnly struct{ io.Writer }

const (
	// preallocateFrom is the size from which files are preallocated.
	preallocateFrom = 1 << 20
	// preallocateStep is how far ahead of its writes a file's extents are
	// reserved: a header alone, whatever size it claims, reserves no more.
	preallocateStep = 64 << 20
)

// preallocator reserves a file's extents ahead of its writes, a step at a
// time, up to the size its header gives.
type preallocator struct {
	f        *os.File
	size     int64
	written  int64
	reserved int64
}

func (p *preallocator) Write(b []byte) (int, error) {
	if end := p.written + int64(len(b)); end > p.reserved && p.reserved < p.size {
		next := min(p.size, max(end, p.reserved+preallocateStep))
		// Not every filesystem can; the writes work all the same.
		_ = unix.Fallocate(int(p.f.Fd()), 0, p.reserved, next-p.reserved)
		p.reserved = next
	}
	n, err := p.f.Write(b)
	p.written += int64(n)
	return n, err
}

// checkFreeSpace refuses a file of size bytes that the filesystem of the
// extraction directory, f's, has no room for: writing it would fill the
// disk that containerd and the node's other users share before failing.
func checkFreeSpace(f *os.File, name string, size int64) error {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return nil // not known: the writes find out
	}
	if avail := int64(st.Bavail) * st.Bsize; size > avail {
		return fmt.Errorf("entry %q: %d bytes, and its filesystem has %d free: %w", name, size, avail, ErrTooLarge)
	}
	return nil
}

func (x *extractor) file(hdr *tar.Header, name string, r io.Reader) error {
	if name == "." {
		return unsafeEntry(hdr.Name, "names the extraction directory")
	}
	if hdr.Size > x.maxBytes-x.st.Bytes {
		return fmt.Errorf("entry %q: %d bytes would pass the limit of %d bytes: %w", hdr.Name, hdr.Size, x.maxBytes, ErrTooLarge)
	}
	if x.budget != nil && !x.budget.take(hdr.Size) {
		return fmt.Errorf("entry %q: %d bytes would pass the limit of %d bytes shared with other extractions: %w", hdr.Name, hdr.Size, x.budget.limit, ErrTooLarge)
	}
	if _, err := x.prepare(name, false); err != nil {
		return failed(hdr.Name, err)
	}
	f, err := x.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return failed(hdr.Name, err)
	}
	var w io.Writer = writerOnly{f}
	if x.files != nil {
		elsewhere, err := x.files.Start(name, hdr.Size)
		if err != nil {
			f.Close()
			return failed(hdr.Name, err)
		}
		if elsewhere != nil {
			w = elsewhere
		}
	}
	if _, toFile := w.(writerOnly); toFile && hdr.Size >= preallocateFrom {
		if err := checkFreeSpace(f, hdr.Name, hdr.Size); err != nil {
			f.Close()
			return err
		}
		// Reserving the file's extents ahead of the writes halves the cost
		// of writing a large page image on ext4.
		w = writerOnly{&preallocator{f: f, size: hdr.Size}}
	}
	var n int64
	if a, ok := w.(Adopter); ok && x.lender != nil && lendable(hdr) {
		n, err = x.lender.lend(a, hdr.Size)
	} else {
		if x.buf == nil {
			x.buf = make([]byte, copyBufSize)
		}
		n, err = io.CopyBuffer(w, io.LimitReader(r, hdr.Size), x.buf)
	}
	x.st.Bytes += n
	if err == nil && n != hdr.Size {
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		uid, gid := x.owner(hdr)
		err = f.Chown(uid, gid)
	}
	if err == nil {
		err = f.Chmod(x.perm(hdr)) // after Chown, which clears setuid and setgid
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = x.root.Chtimes(name, atime(hdr), hdr.ModTime)
	}
	if err != nil {
		return failed(hdr.Name, err)
	}
	return nil
}

// lendable reports whether an entry's content is its next hdr.Size bytes
// in the archive, as it is for a plain regular file (not for a sparse one,
// whose content the tar reader rebuilds from a map).
func lendable(hdr *tar.Header) bool {
	if hdr.Typeflag != tar.TypeReg {
		return false
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return false
		}
	}
	return true
}

func (x *extractor) symlink(hdr *tar.Header, name string) error {
	if x.mode != RootfsDiff {
		return unsafeEntry(hdr.Name, "symlink in %v archive", x.mode)
	}
	if name == "." {
		return unsafeEntry(hdr.Name, "names the extraction directory")
	}
	target := hdr.Linkname
	if target == "" || strings.IndexByte(target, 0) >= 0 {
		return unsafeEntry(hdr.Name, "symlink target %q", target)
	}
	if leaves(name, target) {
		return unsafeEntry(hdr.Name, "symlink target %q leaves the layer", target)
	}
	_, err := x.prepare(name, false)
	if err == nil {
		err = x.root.Symlink(target, name)
	}
	if err == nil {
		uid, gid := x.owner(hdr)
		err = x.root.Lchown(name, uid, gid)
	}
	if err != nil {
		return failed(hdr.Name, err)
	}
	return nil
}

// leaves reports whether a symlink at name pointing to target lexically
// climbs above the layer root. An absolute target is resolved inside the
// container's root, so it never does.
func leaves(name, target string) bool {
	if path.IsAbs(target) {
		return false
	}
	p := path.Join(path.Dir(name), target)
	return p == ".." || strings.HasPrefix(p, "../")
}

func (x *extractor) hardlink(hdr *tar.Header, name string) error {
	if x.mode != RootfsDiff {
		return unsafeEntry(hdr.Name, "hard link in %v archive", x.mode)
	}
	if name == "." {
		return unsafeEntry(hdr.Name, "names the extraction directory")
	}
	target, problem := cleanName(hdr.Linkname)
	if problem != "" {
		return unsafeEntry(hdr.Name, "hard link target %q: %s", hdr.Linkname, problem)
	}
	if target == "." || target == name {
		return unsafeEntry(hdr.Name, "hard link target %q", hdr.Linkname)
	}
	fi, err := x.root.Lstat(target)
	if err != nil {
		return failed(hdr.Name, fmt.Errorf("hard link target: %w", err))
	}
	switch {
	case fi.Mode().IsRegular():
	case fi.Mode()&os.ModeSymlink != 0:
		// The new name shares the symlink's target, which may climb out of
		// the layer from the new name's directory.
		link, err := x.root.Readlink(target)
		if err != nil {
			return failed(hdr.Name, err)
		}
		if leaves(name, link) {
			return unsafeEntry(hdr.Name, "hard link to symlink %q whose target %q leaves the layer from here", hdr.Linkname, link)
		}
	default:
		return unsafeEntry(hdr.Name, "hard link target %q is a %v", hdr.Linkname, fi.Mode().Type())
	}
	_, err = x.prepare(name, false)
	if err == nil {
		err = x.root.Link(target, name)
	}
	if err != nil {
		return failed(hdr.Name, err)
	}
	return nil
}

// whiteout converts an OCI whiteout entry to its overlayfs form.
func (x *extractor) whiteout(hdr *tar.Header, name string) error {
	if hdr.Typeflag != tar.TypeReg {
		return unsafeEntry(hdr.Name, "whiteout of type %q", hdr.Typeflag)
	}
	parent, base := path.Dir(name), path.Base(name)
	if base == whiteoutOpaque {
		return x.opaque(hdr, parent)
	}
	victim := strings.TrimPrefix(base, whiteoutPrefix)
	if victim == "" || victim == "." || victim == ".." || strings.HasPrefix(victim, whiteoutPrefix) {
		return unsafeEntry(hdr.Name, "bad whiteout name")
	}
	if err := x.root.MkdirAll(parent, 0o755); err != nil {
		return failed(hdr.Name, err)
	}
	if err := x.root.RemoveAll(path.Join(parent, victim)); err != nil {
		return failed(hdr.Name, err)
	}
	d, err := x.openDir(parent)
	if err != nil {
		return failed(hdr.Name, err)
	}
	defer d.Close()
	// os.Root has no Mknod: create the device relative to the parent's fd,
	// with a single path component, so nothing outside the root is touched.
	if err := unix.Mknodat(int(d.Fd()), victim, unix.S_IFCHR, 0); err != nil {
		return failed(hdr.Name, os.NewSyscallError("mknodat", err))
	}
	return nil
}

// opaque marks dir as an overlayfs opaque directory.
func (x *extractor) opaque(hdr *tar.Header, dir string) error {
	if err := x.root.MkdirAll(dir, 0o755); err != nil {
		return failed(hdr.Name, err)
	}
	d, err := x.openDir(dir)
	if err != nil {
		return failed(hdr.Name, err)
	}
	defer d.Close()
	if err := unix.Fsetxattr(int(d.Fd()), opaqueXattr, []byte("y"), 0); err != nil {
		return failed(hdr.Name, os.NewSyscallError("fsetxattr", err))
	}
	return nil
}

// openDir opens the directory name through the root.
func (x *extractor) openDir(name string) (*os.File, error) {
	d, err := x.root.Open(name)
	if err != nil {
		return nil, err
	}
	if fi, err := d.Stat(); err != nil || !fi.IsDir() {
		d.Close()
		if err == nil {
			err = &fs.PathError{Op: "open", Path: name, Err: unix.ENOTDIR}
		}
		return nil, err
	}
	return d, nil
}

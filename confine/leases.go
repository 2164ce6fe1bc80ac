package confine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	filelock "github.com/checkpoint-restore/go-criu/v7/crit/images/file-lock"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	"golang.org/x/sys/unix"
)

// The kinds of lock in filelocks.img (CRIU's criu/include/file-lock.h).
const (
	lockPOSIX = 1
	lockFlock = 2
	lockOFD   = 4
	lockLease = 8
)

// checkLeases refuses a lease the cold start could not take. CRIU restores
// each file lock of filelocks.img in its task, as root, and takes a lease
// as the file's owner (it sets its fsuid to the file's uid first); the
// kernel lets a process take one only on a file its fsuid owns, or with
// CAP_LEASE (with CAP_SETUID, the cold start could set its fsuid too). A
// lease on a file the user does not own (one of the node's, through a
// bind mount, say) would make every other opener for writing wait for
// the app, up to the node's lease-break-time. Other locks need
// only the file open as it is, which checkFiles checks.
//
// A lease's file is found through its task's file table (ids-<pid>.img,
// fdinfo-<files id>.img) and looked up as the access check does; where it
// cannot be (a tmpfs, proc), the lease is
// refused unless the spec grants CAP_LEASE or CAP_SETUID. A deleted file's
// is looked up at its link (r.links); one CRIU makes from its image (a
// ghost) no one else can open, and is not looked up.
func checkLeases(imagesDir string, names []string, regs map[uint32]*regfile.RegFileEntry, r *remaps, c *fileChecks, access func() *fileAccess) error {
	if !slices.Contains(names, "filelocks.img") {
		return nil
	}
	img, err := decodeImage(filepath.Join(imagesDir, "filelocks.img"), &filelock.FileLockEntry{})
	if err != nil {
		return err
	}
	var leases []*filelock.FileLockEntry
	for _, e := range img.Entries {
		l := e.Message.(*filelock.FileLockEntry)
		// CRIU takes the first kind the flag has, in this order.
		if l.GetFlag()&(lockFlock|lockPOSIX|lockOFD) == 0 && l.GetFlag()&lockLease != 0 {
			leases = append(leases, l)
		}
	}
	// With CAP_SETUID, the cold start could do as CRIU does: take the
	// owner's fsuid, then the lease.
	if len(leases) == 0 || c.granted(unix.CAP_LEASE, false) || c.caps&(1<<unix.CAP_SETUID) != 0 {
		return nil
	}
	a := access()
	for _, l := range leases {
		reg, err := leasedFile(imagesDir, names, regs, l)
		if err != nil {
			return err
		}
		if reg == nil || r.ghosts[reg.GetId()] {
			// Not a regular file: the kernel refuses CRIU the lease. A
			// deleted file CRIU makes from its image: no one else can
			// open it.
			continue
		}
		name := reg.GetName()
		if link, ok := r.links[reg.GetId()]; ok {
			name = link // CRIU opens the deleted file through its link
		}
		uid, ok, err := a.owner(name)
		switch {
		case err != nil:
			return err
		case !ok:
			return fmt.Errorf("task %d holds a lease on %s, whose owner snapboot cannot tell; the spec grants neither CAP_LEASE nor CAP_SETUID", l.GetPid(), name)
		case uid != a.uid:
			return fmt.Errorf("task %d holds a lease on %s, owned by uid %d: the spec's user (%s) may not take one without CAP_LEASE or CAP_SETUID, which the spec grants neither of", l.GetPid(), name, uid, a.user())
		}
	}
	return nil
}

// leasedFile returns the regular file a lease is on: the file its task
// has open at the lease's descriptor, or nil if that is not a regular
// file.
func leasedFile(imagesDir string, names []string, regs map[uint32]*regfile.RegFileEntry, l *filelock.FileLockEntry) (*regfile.RegFileEntry, error) {
	idsName := fmt.Sprintf("ids-%d.img", l.GetPid())
	if !slices.Contains(names, idsName) {
		return nil, fmt.Errorf("filelocks.img has a lease of task %d, which the checkpoint does not have", l.GetPid())
	}
	ids, err := decodeOne(filepath.Join(imagesDir, idsName), &criucore.TaskKobjIdsEntry{})
	if err != nil {
		return nil, err
	}
	table := fmt.Sprintf("fdinfo-%d.img", ids.Entries[0].Message.(*criucore.TaskKobjIdsEntry).GetFilesId())
	if !slices.Contains(names, table) {
		return nil, fmt.Errorf("task %d's file table %s is not in the checkpoint", l.GetPid(), table)
	}
	fds, err := decodeImage(filepath.Join(imagesDir, table), &fdinfo.FdinfoEntry{})
	if err != nil {
		return nil, err
	}
	for _, e := range fds.Entries {
		fd := e.Message.(*fdinfo.FdinfoEntry)
		if int32(fd.GetFd()) != l.GetFd() {
			continue
		}
		if fd.GetType() != fdinfo.FdTypes_REG {
			return nil, nil
		}
		reg := regs[fd.GetId()]
		if reg == nil {
			return nil, fmt.Errorf("task %d's descriptor %d is file %#x, which files.img does not have", l.GetPid(), l.GetFd(), fd.GetId())
		}
		return reg, nil
	}
	return nil, fmt.Errorf("filelocks.img has a lease on descriptor %d of task %d, which it does not have open", l.GetFd(), l.GetPid())
}

// owner returns the uid that owns the file at name, as the container
// sees it: in the root file system's layers, or under the source of the
// spec's bind mount it is in (the same under every source the mount may
// be). ok is false where it cannot be told: another file system (a tmpfs,
// proc), a name through a symbolic link, a file that is not there.
func (a *fileAccess) owner(name string) (uid uint32, ok bool, err error) {
	m := a.mountOf(name)
	if m == nil {
		return 0, false, nil
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(name, m.GetMountpoint()), "/")
	var found []entry
	switch {
	case m.GetMountpoint() == "/":
		if found, err = a.layers.lookup(rel); err != nil {
			return 0, false, fmt.Errorf("%s: %w", name, err)
		}
		if len(found) < len(splitPath(rel)) {
			return 0, false, nil
		}
		return ownerOf(found[len(found)-1])
	case m.GetExtKey() != "":
		sources := a.bindSources(m.GetExtKey())
		for i, src := range sources {
			u, ok, err := ownerUnder(src, rel)
			if err != nil || !ok || i > 0 && u != uid {
				return 0, false, err
			}
			uid = u
		}
		return uid, len(sources) > 0, nil
	}
	return 0, false, nil
}

// ownerUnder returns the owner of rel under dir, a source on the node,
// looked up one component at a time, through no symbolic link.
func ownerUnder(dir, rel string) (uint32, bool, error) {
	if rel == "" {
		fi, err := os.Lstat(dir)
		if err != nil {
			return 0, false, nil
		}
		return ownerOf(entry{fi: fi})
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return 0, false, nil
	}
	defer root.Close()
	var fi os.FileInfo
	parts := splitPath(rel)
	for i := range parts {
		fi, err = root.Lstat(filepath.Join(parts[:i+1]...))
		if errors.Is(err, os.ErrNotExist) {
			return 0, false, nil
		}
		if err != nil {
			return 0, false, fmt.Errorf("%s: %w", filepath.Join(dir, rel), err)
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return 0, false, nil
		}
	}
	return ownerOf(entry{fi: fi})
}

func ownerOf(e entry) (uint32, bool, error) {
	if e.fi.Mode()&os.ModeSymlink != 0 {
		return 0, false, nil
	}
	st := statOf(e.fi)
	if st == nil {
		return 0, false, nil
	}
	return st.Uid, true, nil
}

package confine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	filelock "github.com/checkpoint-restore/go-criu/v7/crit/images/file-lock"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func TestLeases(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: files of other owners")
	}
	upper, lower, volume := t.TempDir(), t.TempDir(), t.TempDir()
	put(t, lower, "etc/", 0, 0, 0o755)
	put(t, lower, "etc/hosts", 0, 0, 0o644)
	put(t, upper, "home/app/", 1000, 1000, 0o755)
	put(t, upper, "home/app/own", 1000, 1000, 0o644)
	put(t, volume, "theirs", 0, 0, 0o644)
	put(t, volume, "mine", 1000, 1000, 0o644)
	put(t, volume, "mapped", 100000, 100000, 0o644)
	put(t, volume, "dir/", 0, 0, 0o755)
	if err := os.Symlink("../mine", filepath.Join(volume, "dir/link")); err != nil {
		t.Fatal(err)
	}
	root := mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)
	tmp := mount(2, 1, mnt.Fstype_TMPFS, "/", "/tmp", 0)
	data := mount(3, 1, mnt.Fstype_AUTO, "/", "/data", 0)
	data.ExtKey = proto.String("/data")
	mounts := []*mnt.MntEntry{root, tmp, data}
	app := func(uid uint32, caps ...string) *specs.Spec {
		s := spec(uid, caps, false)
		s.Mounts = []specs.Mount{{Destination: "/data", Type: "bind", Source: volume, Options: []string{"rbind"}}}
		return s
	}
	// CAP_LEASE counts on the node only (the kernel's capable()).
	userns := func(uid uint32) *specs.Spec { return inUserNS(app(uid, "CAP_LEASE")) }
	lease := &filelock.FileLockEntry{Flag: proto.Uint32(lockLease), Type: proto.Uint32(unix.F_RDLCK), Pid: proto.Int32(1), Fd: proto.Int32(3),
		Start: proto.Int64(0), Len: proto.Int64(0)}
	leaseFlag24 := proto.Clone(lease).(*filelock.FileLockEntry)
	leaseFlag24.Flag = proto.Uint32(lockLease | 16)
	flock := &filelock.FileLockEntry{Flag: proto.Uint32(lockFlock), Type: proto.Uint32(unix.F_WRLCK), Pid: proto.Int32(1), Fd: proto.Int32(3),
		Start: proto.Int64(0), Len: proto.Int64(0)}
	for _, c := range []struct {
		name   string
		spec   *specs.Spec
		file   string
		lock   *filelock.FileLockEntry
		link   string // the deleted file's link, if any
		ghost  bool   // a deleted file CRIU makes from its image
		refuse string // "" if allowed
	}{
		{name: "root's lease on root's file", spec: app(0), file: "/etc/hosts", lock: lease},
		{name: "a user's lease on root's file", spec: app(1000), file: "/etc/hosts", lock: lease, refuse: "owned by uid 0"},
		{name: "a user's lease on root's file, CAP_LEASE", spec: app(1000, "CAP_LEASE"), file: "/etc/hosts", lock: lease},
		{name: "a user's lease on root's file, CAP_SETUID", spec: app(1000, "CAP_SETUID"), file: "/etc/hosts", lock: lease},
		{name: "a user's lease on root's file, with a flag CRIU takes for a lease", spec: app(1000), file: "/etc/hosts", lock: leaseFlag24, refuse: "owned by uid 0"},
		{name: "a user's lease on its own deleted file, linked to root's", spec: app(1000), file: "/data/mine", link: "/data/theirs", lock: lease, refuse: "lease on /data/theirs, owned by uid 0"},
		{name: "a user's lease on a deleted file CRIU makes", spec: app(1000), file: "/etc/hosts", ghost: true, lock: lease},
		{name: "a user's lock on root's file", spec: app(1000), file: "/etc/hosts", lock: flock},
		{name: "a user's lease on its own file", spec: app(1000), file: "/home/app/own", lock: lease},
		{name: "root's lease on a user's file", spec: app(0, "CAP_DAC_OVERRIDE", "CAP_FOWNER"), file: "/home/app/own", lock: lease, refuse: "owned by uid 1000"},
		{name: "a user's lease on its own file in a volume", spec: app(1000), file: "/data/mine", lock: lease},
		{name: "a user's lease on root's file in a volume", spec: app(1000), file: "/data/theirs", lock: lease, refuse: "owned by uid 0"},
		{name: "a lease through a link in a volume", spec: app(1000), file: "/data/dir/link", lock: lease, refuse: "cannot tell"},
		{name: "a lease on a tmpfs file", spec: app(1000), file: "/tmp/x", lock: lease, refuse: "cannot tell"},
		{name: "a user's lease on its own file, in a user namespace", spec: userns(0), file: "/data/mapped", lock: lease},
		{name: "a user's lease on a file of the node's same id, in a user namespace", spec: userns(1000), file: "/home/app/own", lock: lease, refuse: "owned by uid 1000: the spec's user (1000, the node's 101000)"},
		{name: "a lease on a tmpfs file, CAP_LEASE", spec: app(1000, "CAP_LEASE"), file: "/tmp/x", lock: lease},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeImage(t, filepath.Join(dir, "ids-1.img"), "IDS", taskIDs(7))
			writeImage(t, filepath.Join(dir, "fdinfo-7.img"), "FDINFO",
				&fdinfo.FdinfoEntry{Id: proto.Uint32(9), Flags: proto.Uint32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: proto.Uint32(3)})
			writeImage(t, filepath.Join(dir, "filelocks.img"), "FILE_LOCKS", c.lock)
			names := []string{"ids-1.img", "fdinfo-7.img", "filelocks.img"}
			regs := map[uint32]*regfile.RegFileEntry{9: regFile(9, c.file).Reg}
			m, err := specMasks(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			caps, nodeCaps := grantedCaps(c.spec, m)
			checks := &fileChecks{caps: caps, hostCaps: nodeCaps}
			layers := &layers{dirs: []string{upper, lower}}
			defer layers.close()
			r := &remaps{ghosts: map[uint32]bool{9: c.ghost}, links: map[uint32]string{}}
			if c.link != "" {
				r.links[9] = c.link
			}
			err = checkLeases(dir, names, regs, r, checks, func() *fileAccess { return newFileAccess(c.spec, m, mounts, layers) })
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

// taskIDs are a task's ids with its file table's.
func taskIDs(files uint32) *criucore.TaskKobjIdsEntry {
	ids := hostIDs()
	ids.FilesId = proto.Uint32(files)
	return ids
}

// A lease of a task or on a descriptor the checkpoint does not have.
func TestLeaseOfNoFile(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "ids-1.img"), "IDS", taskIDs(7))
	writeImage(t, filepath.Join(dir, "fdinfo-7.img"), "FDINFO",
		&fdinfo.FdinfoEntry{Id: proto.Uint32(9), Flags: proto.Uint32(0), Type: fdinfo.FdTypes_REG.Enum(), Fd: proto.Uint32(3)})
	for _, c := range []struct {
		pid, fd int32
		want    string
	}{
		{pid: 2, fd: 3, want: "task 2, which the checkpoint does not have"},
		{pid: 1, fd: 4, want: "descriptor 4 of task 1, which it does not have open"},
	} {
		writeImage(t, filepath.Join(dir, "filelocks.img"), "FILE_LOCKS", &filelock.FileLockEntry{Flag: proto.Uint32(lockLease),
			Type: proto.Uint32(unix.F_RDLCK), Pid: proto.Int32(c.pid), Fd: proto.Int32(c.fd), Start: proto.Int64(0), Len: proto.Int64(0)})
		s := spec(1000, nil, false)
		m, _ := specMasks(s)
		err := checkLeases(dir, []string{"ids-1.img", "fdinfo-7.img", "filelocks.img"}, map[uint32]*regfile.RegFileEntry{9: regFile(9, "/x").Reg},
			&remaps{}, &fileChecks{hostCaps: true}, func() *fileAccess { return newFileAccess(s, m, nil, &layers{}) })
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pid %d fd %d: %v, want %q", c.pid, c.fd, err, c.want)
		}
	}
}

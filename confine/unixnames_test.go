package confine

import (
	"archive/tar"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	skunix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

func TestUnixSocketNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: directories of other owners")
	}
	upper, lower, volume := t.TempDir(), t.TempDir(), t.TempDir()
	put(t, lower, "run/", 0, 0, 0o755)
	put(t, lower, "run/app/", 1000, 1000, 0o755)
	put(t, lower, "var/", 0, 0, 0o755)
	put(t, lower, "shared/", 0, 0, 0o777|os.ModeSticky)
	put(t, lower, "shared/theirs.sock", 0, 0, 0o666)
	put(t, lower, "shared/mine.sock", 1000, 1000, 0o666)
	put(t, lower, "shared/x.sock.criu-sk-ghost", 0, 0, 0o666)
	put(t, upper, "closed/", 0, 0, 0o700)
	put(t, upper, "closed/open/", 1000, 1000, 0o777)
	put(t, volume, "mine/", 1000, 1000, 0o755)
	put(t, volume, "rootonly/", 0, 0, 0o755)
	put(t, volume, "group/", 0, 5000, 0o775|os.ModeSetgid)
	for link, target := range map[string]string{
		filepath.Join(lower, "var/run"): "../run",   // as Debian has it
		filepath.Join(volume, "link"):   "/run/app", // into the root file system
		filepath.Join(volume, "escape"): "/data/rootonly",
		filepath.Join(volume, "loop"):   "loop",
		filepath.Join(upper, "tmplink"): "/tmp/sub",
	} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	root := mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)
	tmp := mount(2, 1, mnt.Fstype_TMPFS, "/", "/tmp", 0)
	images := t.TempDir()
	writeTmpfs(t, filepath.Join(images, "tmpfs-dev-2.tar.gz.img"), []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "./sub/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./out", Typeflag: tar.TypeSymlink, Linkname: "/data/rootonly"},
		{Name: "./in", Typeflag: tar.TypeSymlink, Linkname: "../run/app"},
	})
	proc := mount(4, 1, mnt.Fstype_PROC, "/", "/proc", 0)
	data := mount(3, 1, mnt.Fstype_AUTO, "/", "/data", 0)
	data.ExtKey = proto.String("/data")
	mounts := []*mnt.MntEntry{root, tmp, data, proc}
	app := func(uid uint32, caps ...string) *specs.Spec {
		s := spec(uid, caps, false)
		s.Process.User.AdditionalGids = []uint32{4000}
		s.Mounts = []specs.Mount{{Destination: "/data", Type: "bind", Source: volume, Options: []string{"rbind"}}}
		return s
	}
	withCwd := func(s *specs.Spec, cwd string) *specs.Spec {
		s.Process.Cwd = cwd
		return s
	}
	// A user namespace that maps the node's ids from base, size ids of
	// them.
	userns := func(s *specs.Spec, base, size uint32) *specs.Spec {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: size}}
		s.Linux.GIDMappings = s.Linux.UIDMappings
		return s
	}
	sock := func(name string) *skunix.UnixSkEntry { // a path name gets its NUL, as the kernel keeps it
		if name != "" && name[0] != 0 {
			name += "\x00"
		}
		return &skunix.UnixSkEntry{Id: proto.Uint32(1), Ino: proto.Uint32(1), Name: []byte(name), MntId: proto.Int32(-1)}
	}
	raw := func(name string) *skunix.UnixSkEntry {
		return &skunix.UnixSkEntry{Id: proto.Uint32(1), Ino: proto.Uint32(1), Name: []byte(name), MntId: proto.Int32(-1)}
	}
	relative := func(dir, name string) *skunix.UnixSkEntry {
		u := sock(name)
		u.NameDir = proto.String(dir)
		return u
	}
	owned := func(name string, uid, gid uint32) *skunix.UnixSkEntry {
		u := sock(name)
		u.FilePerms = &skunix.FilePermsEntry{Mode: proto.Uint32(0o140755), Uid: proto.Uint32(uid), Gid: proto.Uint32(gid)}
		return u
	}
	deleted := func(name string) *skunix.UnixSkEntry {
		u := sock(name)
		u.Deleted = proto.Bool(true)
		return u
	}
	external := sock("/run/x.sock") // held by a task: CRIU binds it all the same
	external.Uflags = proto.Uint32(usockExtern)
	inMount := func(name string, id int32) *skunix.UnixSkEntry {
		u := sock(name)
		u.MntId = proto.Int32(id)
		return u
	}
	for _, c := range []struct {
		name   string
		spec   *specs.Spec
		sock   *skunix.UnixSkEntry
		refuse string // "" if allowed
	}{
		{"in the user's directory", app(1000), sock("/run/app/x.sock"), ""},
		{"in root's directory", app(1000), sock("/run/x.sock"), "may not make or remove files (mode 755, owner 0:0)"},
		{"in root's directory, CAP_DAC_OVERRIDE", app(1000, "CAP_DAC_OVERRIDE"), sock("/run/x.sock"), ""},
		{"in root's directory, a user namespace", userns(app(1000), 0, 65536), sock("/run/x.sock"), "user (1000, the node's 1000) may not make or remove files"},
		{"in root's directory, a user namespace, CAP_DAC_OVERRIDE", userns(app(1000, "CAP_DAC_OVERRIDE"), 0, 65536), sock("/run/x.sock"), ""},
		{"in the node's root's directory, a user namespace's root", userns(app(0, "CAP_DAC_OVERRIDE"), 100000, 65536), sock("/run/x.sock"), "user (0, the node's 100000) may not make or remove files (mode 755, owner 0:0)"},
		{"in its user's directory, a user namespace's user", userns(app(0), 1000, 1), sock("/run/app/x.sock"), ""},
		{"in a volume's directory of its root's, a user namespace's user", userns(app(1000), 0, 65536), sock("/data/rootonly/x.sock"), "is in /data/rootonly, where"},
		{"replacing its root's file in a sticky directory, a user namespace, CAP_FOWNER", userns(app(1000, "CAP_FOWNER"), 0, 65536), sock("/shared/theirs.sock"), ""},
		{"replacing the node's root's file in a sticky directory, a user namespace, CAP_FOWNER", userns(app(0, "CAP_FOWNER"), 1000, 1), sock("/shared/theirs.sock"), "a file of uid 0 in sticky directory /shared, which the spec's user (0, the node's 1000) may not"},
		{"owned by root, a user namespace, CAP_CHOWN", userns(app(1000, "CAP_CHOWN"), 0, 65536), owned("/run/app/x.sock", 0, 0), ""},
		{"owned by root, a user namespace", userns(app(1000), 0, 65536), owned("/run/app/x.sock", 0, 1000), "owned by uid 0"},
		{"in a set-group-ID directory's group, a user namespace", userns(app(1000, "CAP_DAC_OVERRIDE"), 1000, 65536), owned("/data/group/x.sock", 1000, 4000), ""},
		{"in another group than a set-group-ID directory's, a user namespace", userns(app(1000, "CAP_DAC_OVERRIDE"), 1000, 65536), owned("/data/group/x.sock", 1000, 5000), "in group 5000"},
		{"in root's directory, as root", app(0), sock("/run/x.sock"), ""},
		{"through Debian's /var/run", app(1000), sock("/var/run/app/x.sock"), ""},
		{"through Debian's /var/run, into root's directory", app(1000), sock("/var/run/x.sock"), "is in /run, where"},
		{"in the user's directory of a volume", app(1000), sock("/data/mine/x.sock"), ""},
		{"in a volume's root, root's", app(1000), sock("/data/x.sock"), "is in /data, where"},
		{"through a volume's link into the root file system", app(1000), sock("/data/link/x.sock"), ""},
		{"through a volume's link into root's directory of it", app(1000), sock("/data/escape/x.sock"), "is in /data/rootonly, where"},
		{"through a loop of links", app(1000), sock("/data/loop/x.sock"), "more than 40 symbolic links"},
		{"under a directory the user may not search", app(1000), sock("/closed/open/x.sock"), "may not search"},
		{"under a directory the user may not search, its working directory", withCwd(app(1000), "/closed"), sock("/closed/open/x.sock"), "may not search"},
		{"in a tmpfs's root", app(1000), sock("/tmp/x.sock"), ""},
		{"inside a tmpfs", app(1000), sock("/tmp/sub/x.sock"), ""},
		{"through a link into a tmpfs", app(1000), sock("/tmplink/x.sock"), ""},
		{"through a tmpfs's link into root's directory of a volume", app(1000), sock("/tmp/out/x.sock"), "is in /data/rootonly, where"},
		{"through a tmpfs's link into the user's directory", app(1000), sock("/tmp/in/x.sock"), ""},
		{"in proc", app(1000), sock("/proc/self/cwd/x.sock"), "cannot look up"},
		{"relative, in the user's directory", app(1000), relative("/run/app", "x.sock"), ""},
		{"relative, in root's directory", app(1000), relative("/run", "x.sock"), "is in /run, where"},
		{"relative, without a directory", app(1000), relative("", "x.sock"), "is in /, where"},
		{"relative, a relative directory", app(1000), relative("run", "x.sock"), "not an absolute path"},
		{"with ..", app(1000), sock("/run/app/../x.sock"), `".." in its name`},
		{"without its NUL", app(1000), raw("/run/app/x.sock"), "does not end with its only NUL"},
		{"with a NUL before its last", app(1000), raw("/run/app/x.sock\x00/../x\x00"), "does not end with its only NUL"},
		{"deleted, under missing directories of the user's", app(1000), sock("/run/app/a/b/x.sock"), ""},
		{"deleted, under missing directories of root's", app(1000), sock("/run/a/b/x.sock"), "is in /run, where"},
		{"under a file", app(1000), sock("/shared/mine.sock/x.sock"), ""},
		{"replacing another user's file in a sticky directory", app(1000), sock("/shared/theirs.sock"), "sticky directory /shared"},
		{"replacing another user's file in a sticky directory, CAP_FOWNER", app(1000, "CAP_FOWNER"), sock("/shared/theirs.sock"), ""},
		{"replacing its own file in a sticky directory", app(1000), sock("/shared/mine.sock"), ""},
		{"new in a sticky directory", app(1000), sock("/shared/new.sock"), ""},
		{"deleted, beside another user's parked file in a sticky directory", app(1000), deleted("/shared/x.sock"), "would remove or move x.sock.criu-sk-ghost, a file of uid 0"},
		{"deleted, in a sticky directory", app(1000), deleted("/shared/y.sock"), ""},
		{"abstract", app(1000), sock("\x00/run/x.sock"), ""},
		{"flagged external, in root's directory", app(1000), external, "is in /run, where"},
		{"in a mount the checkpoint does not have", app(1000), inMount("/run/app/x.sock", 9), "mount 9"},
		{"in the root mount", app(1000), inMount("/run/app/x.sock", 1), ""},
		{"owned by the user", app(1000), owned("/run/app/x.sock", 1000, 1000), ""},
		{"owned by root", app(1000), owned("/run/app/x.sock", 0, 1000), "owned by uid 0"},
		{"owned by root, CAP_CHOWN", app(1000, "CAP_CHOWN"), owned("/run/app/x.sock", 0, 0), ""},
		{"owned by root, CAP_SETUID", app(1000, "CAP_SETUID"), owned("/run/app/x.sock", 0, 1000), ""},
		{"in root's group, CAP_SETUID", app(1000, "CAP_SETUID"), owned("/run/app/x.sock", 0, 0), "in group 0"},
		{"in root's group, CAP_SETGID", app(1000, "CAP_SETGID"), owned("/run/app/x.sock", 1000, 0), ""},
		{"in another of the spec's groups", app(1000), owned("/run/app/x.sock", 1000, 4000), ""},
		{"in a group not the spec's", app(1000), owned("/run/app/x.sock", 1000, 5000), "in group 5000"},
		{"in a set-group-ID directory's group", app(1000, "CAP_DAC_OVERRIDE"), owned("/data/group/x.sock", 1000, 5000), ""},
		{"owned by root, as root", app(0), owned("/run/x.sock", 0, 0), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := specMasks(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			caps, nodeCaps := grantedCaps(c.spec, m)
			u := c.spec.Process.User
			checks := &fileChecks{caps: caps, hostCaps: nodeCaps, uid: u.UID, gids: append([]uint32{u.GID}, u.AdditionalGids...), taskUIDs: map[uint32]bool{u.UID: true}}
			layers := &layers{dirs: []string{upper, lower}}
			defer layers.close()
			var access *fileAccess
			err = unixNames([]*skunix.UnixSkEntry{c.sock}, checks, func() *fileAccess {
				if access == nil {
					access = newFileAccess(c.spec, m, mounts, layers)
					access.tmpfs = &tmpfsTrees{imagesDir: images, names: []string{"tmpfs-dev-2.tar.gz.img"}}
				}
				return access
			})
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

// writeTmpfs writes a tmpfs image as CRIU dumps one: a gzipped tar.
func writeTmpfs(t *testing.T, p string, entries []*tar.Header) {
	t.Helper()
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	z := gzip.NewWriter(f)
	w := tar.NewWriter(z)
	for _, h := range entries {
		if h.Format == tar.FormatUnknown {
			h.Format = tar.FormatGNU // as CRIU's GNU tar writes them
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []io.Closer{w, z, f} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// Without the tmpfs's listing, a name inside it cannot be resolved.
func TestUnixSocketInsideAnUnlistedTmpfs(t *testing.T) {
	s := spec(1000, nil, false)
	m, _ := specMasks(s)
	mounts := []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0), mount(2, 1, mnt.Fstype_TMPFS, "/", "/tmp", 0)}
	caps, nodeCaps := grantedCaps(s, m)
	u := &skunix.UnixSkEntry{Id: proto.Uint32(1), Ino: proto.Uint32(1), Name: []byte("/tmp/sub/x.sock\x00"), MntId: proto.Int32(-1)}
	err := unixNames([]*skunix.UnixSkEntry{u}, &fileChecks{caps: caps, hostCaps: nodeCaps, uid: 1000}, func() *fileAccess {
		return newFileAccess(s, m, mounts, &layers{dirs: []string{t.TempDir()}})
	})
	if err == nil || !strings.Contains(err.Error(), "whose entries snapboot cannot look up") {
		t.Fatalf("%v, want a refusal", err)
	}
}

// A mount point through a symbolic link: CRIU would mount the volume where
// the link leads.
func TestMountPointThroughALink(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: directories of other owners")
	}
	upper, volume := t.TempDir(), t.TempDir()
	put(t, upper, "w/y/", 1000, 1000, 0o755)
	if err := os.Symlink("w", filepath.Join(upper, "x")); err != nil {
		t.Fatal(err)
	}
	s := spec(1000, nil, false)
	s.Mounts = []specs.Mount{{Destination: "/x/y", Type: "bind", Source: volume, Options: []string{"rbind"}}}
	m, _ := specMasks(s)
	for _, c := range []struct {
		at     string
		refuse string
	}{
		{"/x/y", "the mount at /x/y goes through a symbolic link at /x"},
		{"/w/y", ""},
	} {
		data := mount(3, 1, mnt.Fstype_AUTO, "/", c.at, 0)
		data.ExtKey = proto.String("/x/y")
		a := newFileAccess(s, m, []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0), data}, &layers{dirs: []string{upper}})
		err := a.mountPointsDirect()
		a.layers.close()
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.at, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.at, err, c.refuse)
		}
	}
}

// A bind whose key stands for two of the spec's binds: the directory must
// be the user's under both sources.
func TestUnixSocketInABindOfTwoSources(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: directories of other owners")
	}
	mine, theirs := t.TempDir(), t.TempDir()
	put(t, mine, "w/", 1000, 1000, 0o755)
	put(t, theirs, "w/", 0, 0, 0o755)
	s := spec(1000, nil, false)
	s.Mounts = []specs.Mount{
		{Destination: "/a/data", Type: "bind", Source: mine, Options: []string{"rbind"}},
		{Destination: "/z/data", Type: "bind", Source: theirs, Options: []string{"rbind"}},
	}
	m, _ := specMasks(s)
	vol := mount(3, 1, mnt.Fstype_AUTO, "/", "/vol", 0)
	vol.ExtKey = proto.String("/srv/data")
	mounts := []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0), vol}
	caps, nodeCaps := grantedCaps(s, m)
	u := &skunix.UnixSkEntry{Id: proto.Uint32(1), Ino: proto.Uint32(1), Name: []byte("/vol/w/x.sock\x00"), MntId: proto.Int32(-1)}
	l := &layers{dirs: []string{t.TempDir()}}
	defer l.close()
	err := unixNames([]*skunix.UnixSkEntry{u}, &fileChecks{caps: caps, hostCaps: nodeCaps, uid: 1000}, func() *fileAccess {
		return newFileAccess(s, m, mounts, l)
	})
	if err == nil || !strings.Contains(err.Error(), "may not make or remove files (mode 755, owner 0:0)") {
		t.Fatalf("%v, want a refusal for the root-owned source", err)
	}
}

// A mount point that is a link in a tmpfs's contents, and one below a
// tmpfs whose contents do not list: refused.
func TestMountPointInATmpfs(t *testing.T) {
	s := spec(1000, nil, false)
	m, _ := specMasks(s)
	for _, c := range []struct {
		name    string
		members []*tar.Header
		refuse  string
	}{
		{"a directory", []*tar.Header{{Name: "./", Typeflag: tar.TypeDir}, {Name: "./shm/", Typeflag: tar.TypeDir}}, ""},
		{"a link", []*tar.Header{{Name: "./", Typeflag: tar.TypeDir}, {Name: "./shm", Typeflag: tar.TypeSymlink, Linkname: "/data"}}, "goes through a symbolic link at /dev/shm"},
		{"contents that do not list", []*tar.Header{{Name: "./", Typeflag: tar.TypeDir}, {Name: "./shm", Typeflag: tar.TypeSymlink, Linkname: "/data"}, {Name: "./shm/", Typeflag: tar.TypeDir}}, "member \"./shm/\" twice"},
	} {
		t.Run(c.name, func(t *testing.T) {
			images := t.TempDir()
			writeTmpfs(t, filepath.Join(images, "tmpfs-dev-2.tar.gz.img"), c.members)
			dev := mount(2, 1, mnt.Fstype_TMPFS, "/", "/dev", 0)
			shm := mount(3, 2, mnt.Fstype_TMPFS, "/", "/dev/shm", 0)
			a := newFileAccess(s, m, []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0), dev, shm}, &layers{})
			a.tmpfs = &tmpfsTrees{imagesDir: images, names: []string{"tmpfs-dev-2.tar.gz.img"}}
			err := a.mountPointsDirect()
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

// Search permission on the way to a socket's directory, across mounts, and
// from the working directory for a name bound relative to it.
func TestUnixSocketDirectoryReached(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: directories of other owners")
	}
	upper, volume := t.TempDir(), t.TempDir()
	put(t, upper, "closed/", 0, 0, 0o700)
	put(t, upper, "closed/vol/", 0, 0, 0o755)
	put(t, upper, "closed/open/", 1000, 1000, 0o755)
	put(t, volume, "w/", 1000, 1000, 0o755)
	s := spec(1000, nil, false)
	s.Process.Cwd = "/closed/open"
	s.Mounts = []specs.Mount{{Destination: "/closed/vol", Type: "bind", Source: volume, Options: []string{"rbind"}}}
	m, _ := specMasks(s)
	vol := mount(3, 1, mnt.Fstype_AUTO, "/", "/closed/vol", 0)
	vol.ExtKey = proto.String("/closed/vol")
	mounts := []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0), vol}
	caps, nodeCaps := grantedCaps(s, m)
	for _, c := range []struct {
		name, dir, refuse string
	}{
		{"/closed/vol/w/x.sock", "", "may not search /closed (mode 700, owner 0:0)"},
		{"/closed/open/x.sock", "", "may not search /closed (mode 700, owner 0:0)"},
		{"x.sock", "/closed/open", ""},
		{"x.sock", "/closed/vol/w", "may not search /closed (mode 700, owner 0:0)"},
	} {
		u := &skunix.UnixSkEntry{Id: proto.Uint32(1), Ino: proto.Uint32(1), Name: []byte(c.name + "\x00"), MntId: proto.Int32(-1)}
		if c.dir != "" {
			u.NameDir = proto.String(c.dir)
		}
		l := &layers{dirs: []string{upper}}
		err := unixNames([]*skunix.UnixSkEntry{u}, &fileChecks{caps: caps, hostCaps: nodeCaps, uid: 1000}, func() *fileAccess {
			return newFileAccess(s, m, mounts, l)
		})
		l.close()
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s in %q: refused: %v", c.name, c.dir, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s in %q: %v, want a refusal about %q", c.name, c.dir, err, c.refuse)
		}
	}
}

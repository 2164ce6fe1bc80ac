package confine

import (
	"archive/tar"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// put makes a file (or a directory, for a name ending in /) under dir
// with an owner and a mode.
func put(t *testing.T, dir, name string, uid, gid int, mode os.FileMode) {
	t.Helper()
	p := filepath.Join(dir, name)
	if strings.HasSuffix(name, "/") {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	} else {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func TestFileAccess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: files of other owners")
	}
	upper, lower, volume := t.TempDir(), t.TempDir(), t.TempDir()
	put(t, lower, "etc/", 0, 0, 0o755)
	put(t, lower, "etc/shadow", 0, 0, 0o600)
	put(t, lower, "etc/group-readable", 0, 1000, 0o640)
	put(t, lower, "etc/hosts", 0, 0, 0o644)
	put(t, lower, "private/", 0, 0, 0o700)
	put(t, lower, "private/readable", 0, 0, 0o644)
	put(t, lower, "usr/bin/prog", 0, 0, 0o711)
	put(t, upper, "home/app/", 1000, 1000, 0o700)
	put(t, upper, "home/app/own", 1000, 1000, 0o600)
	put(t, upper, "mapped", 100000, 100000, 0o600)
	put(t, lower, "gone", 0, 0, 0o600)
	if err := unix.Mknod(filepath.Join(upper, "gone"), unix.S_IFCHR|0o600, 0); err != nil {
		t.Fatal(err)
	}
	// POSIX ACLs: user 1000 may read acl-open (root's, 0600) and not
	// acl-closed (0644); group 1000 may read acl-group (0600); the mask
	// keeps user 1000 from writing acl-masked.
	type ace struct {
		tag, perm uint16
		id        uint32
	}
	setACL := func(name string, aces ...ace) {
		b := binary.LittleEndian.AppendUint32(nil, 2)
		for _, e := range aces {
			b = binary.LittleEndian.AppendUint16(b, e.tag)
			b = binary.LittleEndian.AppendUint16(b, e.perm)
			b = binary.LittleEndian.AppendUint32(b, e.id)
		}
		if err := unix.Setxattr(filepath.Join(lower, name), "system.posix_acl_access", b, 0); err != nil {
			t.Skipf("no POSIX ACLs here: %v", err)
		}
	}
	put(t, lower, "acl-open", 0, 0, 0o600)
	setACL("acl-open", ace{aclUserObj, 6, 0}, ace{aclUser, 4, 1000}, ace{aclGroupObj, 0, 0}, ace{aclMask, 4, 0}, ace{aclOther, 0, 0})
	put(t, lower, "acl-closed", 0, 0, 0o644)
	setACL("acl-closed", ace{aclUserObj, 6, 0}, ace{aclUser, 0, 1000}, ace{aclGroupObj, 4, 0}, ace{aclMask, 4, 0}, ace{aclOther, 4, 0})
	put(t, lower, "acl-group", 0, 0, 0o600)
	setACL("acl-group", ace{aclUserObj, 6, 0}, ace{aclGroupObj, 0, 0}, ace{aclGroup, 4, 1000}, ace{aclMask, 4, 0}, ace{aclOther, 0, 0})
	put(t, lower, "acl-masked", 0, 0, 0o600)
	setACL("acl-masked", ace{aclUserObj, 6, 0}, ace{aclUser, 6, 1000}, ace{aclGroupObj, 0, 0}, ace{aclMask, 4, 0}, ace{aclOther, 0, 0})
	put(t, volume, "token", 0, 0, 0o400)
	put(t, volume, "data/", 0, 0, 0o755)
	if err := os.Symlink("/etc/shadow", filepath.Join(volume, "data/abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(lower, "lib")); err != nil {
		t.Fatal(err)
	}
	single := filepath.Join(t.TempDir(), "secret.key")
	put(t, filepath.Dir(single), "secret.key", 0, 0, 0o400)
	put(t, volume, "public", 0, 0, 0o444)

	root := mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)
	proc := mount(2, 1, mnt.Fstype_PROC, "/", "/proc", 0)
	secrets := mount(3, 1, mnt.Fstype_AUTO, "/", "/secrets", msRdonly)
	secrets.ExtKey = proto.String("/secrets")
	tmp := mount(4, 1, mnt.Fstype_TMPFS, "/", "/tmp", 0)
	key := mount(5, 1, mnt.Fstype_AUTO, "/", "/etc/secret.key", msRdonly)
	key.ExtKey = proto.String("/etc/secret.key")
	resolved := mount(6, 1, mnt.Fstype_AUTO, "/", "/run/secrets", msRdonly)
	resolved.ExtKey = proto.String("/run/secrets") // runc's key for /var/run/secrets, /var/run a link to /run
	mounts := []*mnt.MntEntry{root, proc, secrets, tmp, key, resolved}

	app := func(caps ...string) *specs.Spec {
		s := spec(1000, caps, false)
		s.Process.User.GID = 1000
		s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace}}
		s.Mounts = []specs.Mount{{Destination: "/secrets", Type: "bind", Source: volume, Options: []string{"rbind", "ro"}},
			{Destination: "/etc/secret.key", Type: "bind", Source: single, Options: []string{"rbind", "ro"}},
			{Destination: "/var/run/secrets", Type: "bind", Source: volume, Options: []string{"rbind", "ro"}}}
		return s
	}
	rootSpec := func(caps ...string) *specs.Spec {
		s := app(caps...)
		s.Process.User = specs.User{UID: 0, GID: 0}
		return s
	}
	sharedPID := func() *specs.Spec {
		s := app()
		s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/42/ns/pid"}}
		return s
	}
	for _, c := range []struct {
		name     string
		spec     *specs.Spec
		file     string
		flags    uint32
		searched bool
		written  bool
		refuse   string
	}{
		{name: "a root-only file", spec: app(), file: "/etc/shadow", refuse: "may not read"},
		{name: "an ACL lets the user read", spec: app(), file: "/acl-open"},
		{name: "an ACL keeps the user from reading", spec: app(), file: "/acl-closed", refuse: "may not read"},
		{name: "an ACL lets the group read", spec: app(), file: "/acl-group"},
		{name: "an ACL's mask keeps the user from writing", spec: app(), file: "/acl-masked", flags: unix.O_RDWR, refuse: "may not read and write"},
		{name: "an ACL's mask lets the user read", spec: app(), file: "/acl-masked"},
		{name: "a world-readable file", spec: app(), file: "/etc/hosts"},
		{name: "writing a world-readable file", spec: app(), file: "/etc/hosts", flags: unix.O_WRONLY, refuse: "may not write"},
		{name: "by the group", spec: app(), file: "/etc/group-readable"},
		{name: "its own file", spec: app(), file: "/home/app/own", flags: unix.O_RDWR},
		{name: "through a directory it may not search", spec: app(), file: "/private/readable", refuse: "search"},
		{name: "an execute-only program it runs", spec: app(), file: "/usr/bin/prog", searched: true},
		{name: "an execute-only program it reads", spec: app(), file: "/usr/bin/prog", refuse: "may not read"},
		{name: "O_PATH", spec: app(), file: "/etc/shadow", flags: unix.O_PATH},
		{name: "CAP_DAC_OVERRIDE", spec: app("CAP_DAC_OVERRIDE"), file: "/etc/shadow", flags: unix.O_RDWR},
		{name: "CAP_DAC_READ_SEARCH reads", spec: app("CAP_DAC_READ_SEARCH"), file: "/etc/shadow"},
		{name: "CAP_DAC_READ_SEARCH does not write", spec: app("CAP_DAC_READ_SEARCH"), file: "/etc/shadow", flags: unix.O_WRONLY, refuse: "may not write"},
		{name: "CAP_SETUID and CAP_SETGID", spec: app("CAP_SETUID", "CAP_SETGID"), file: "/etc/shadow"},
		{name: "root without CAP_DAC_OVERRIDE", spec: rootSpec(), file: "/home/app/own", refuse: "may not search"},
		{name: "root in its bounding set", spec: func() *specs.Spec {
			s := rootSpec()
			s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: []string{"CAP_DAC_OVERRIDE"}}
			return s
		}(), file: "/home/app/own"},
		{name: "a whiteout hides the lower file", spec: app(), file: "/gone"},
		{name: "a file of the spec's bind mount", spec: app(), file: "/secrets/token", refuse: "may not read"},
		{name: "a readable file of the spec's bind mount", spec: app(), file: "/secrets/public"},
		{name: "a tmpfs's file", spec: app(), file: "/tmp/whatever"},
		{name: "a process's proc file", spec: app(), file: "/proc/1/environ"},
		{name: "kallsyms without CAP_SYSLOG, as root", spec: rootSpec("CAP_DAC_OVERRIDE"), file: "/proc/kallsyms", refuse: "shows what its opener may see"},
		{name: "kallsyms with CAP_SYSLOG", spec: app("CAP_SYSLOG"), file: "/proc/kallsyms"},
		{name: "pagemap without CAP_SYS_ADMIN", spec: rootSpec("CAP_DAC_OVERRIDE"), file: "/proc/1/pagemap", refuse: "opener"},
		{name: "through proc's link to a process's root", spec: rootSpec("CAP_DAC_OVERRIDE"), file: "/proc/1/root/etc/shadow", refuse: "link of proc"},
		{name: "through proc's link of a thread", spec: rootSpec("CAP_DAC_OVERRIDE"), file: "/proc/self/task/7/fd/3", refuse: "link of proc"},
		{name: "a process's file without a PID namespace", spec: func() *specs.Spec {
			s := rootSpec("CAP_DAC_OVERRIDE")
			s.Linux.Namespaces = nil
			return s
		}(), file: "/proc/1/environ", refuse: "no PID namespace"},
		{name: "a checkpoint's process in a shared PID namespace", spec: sharedPID(), file: "/proc/1/environ"},
		{name: "another container's process in a shared PID namespace", spec: sharedPID(), file: "/proc/7/mem", flags: unix.O_RDWR, refuse: "not the checkpoint's"},
		{name: "the working directory runc enters as root", spec: func() *specs.Spec {
			s := app()
			s.Process.Cwd = "/private"
			return s
		}(), file: "/private", searched: true},
		{name: "iomem without CAP_SYS_ADMIN", spec: rootSpec("CAP_DAC_OVERRIDE"), file: "/proc/iomem", refuse: "opener"},
		{name: "a program opened for writing is not only executed", spec: app(), file: "/usr/bin/prog", flags: unix.O_RDWR, searched: true, refuse: "may not write"},
		{name: "a shared writable mapping", spec: app(), file: "/etc/hosts", written: true, refuse: "may not read and write"},
		{name: "a name through a symbolic link", spec: app(), file: "/lib/prog", refuse: "symbolic link"},
		{name: "a volume's link out of it", spec: app(), file: "/secrets/data/abs", refuse: "symbolic link"},
		{name: "a bind of one file", spec: app(), file: "/etc/secret.key", refuse: "may not read"},
		{name: "a bind whose key runc resolved", spec: app(), file: "/run/secrets/token", refuse: "may not read"},
		{name: "a readable file of a bind whose key runc resolved", spec: app(), file: "/run/secrets/public"},
		{name: "CAP_DAC_READ_SEARCH does not execute", spec: app("CAP_DAC_READ_SEARCH"), file: "/usr/bin/prog", flags: unix.O_RDWR, searched: true, refuse: "may not write"},
		{name: "a user namespace's root, its own file", spec: inUserNS(rootSpec()), file: "/mapped", flags: unix.O_RDWR},
		// The node's root is not in the namespace: CRIU, its root, could
		// not open the file either.
		{name: "a user namespace's root, the node's root's file", spec: inUserNS(rootSpec("CAP_DAC_OVERRIDE")), file: "/etc/shadow", refuse: "(0, the node's 100000) may not read (mode 600, owner 0:0)"},
		{name: "a user namespace's root, the node's root's readable file", spec: inUserNS(rootSpec("CAP_DAC_OVERRIDE")), file: "/etc/hosts"},
		{name: "a user namespace's user, its root's file", spec: inUserNS(app()), file: "/mapped", refuse: "(1000, the node's 101000) may not read"},
		{name: "a user namespace's user, its root's file, CAP_DAC_OVERRIDE", spec: inUserNS(app("CAP_DAC_OVERRIDE")), file: "/mapped", flags: unix.O_RDWR},
		{name: "a user namespace's user, its root's file, CAP_DAC_READ_SEARCH", spec: inUserNS(app("CAP_DAC_READ_SEARCH")), file: "/mapped"},
		{name: "a user namespace's user, its root's file, CAP_SETUID and CAP_SETGID", spec: inUserNS(app("CAP_SETUID", "CAP_SETGID")), file: "/mapped"},
		{name: "a user namespace's user, the node's root's file, CAP_SETUID and CAP_SETGID", spec: inUserNS(app("CAP_SETUID", "CAP_SETGID")), file: "/etc/shadow", refuse: "may not read"},
		{name: "a user namespace's user, under the node's root's directory, CAP_DAC_READ_SEARCH", spec: inUserNS(app("CAP_DAC_READ_SEARCH")), file: "/private/readable", refuse: "may not search"},
		{name: "a user namespace mapping the node's ids as they are, CAP_DAC_OVERRIDE", spec: func() *specs.Spec {
			s := inUserNS(app("CAP_DAC_OVERRIDE"))
			s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 0, Size: 65536}}
			s.Linux.GIDMappings = s.Linux.UIDMappings
			return s
		}(), file: "/etc/shadow", flags: unix.O_RDWR},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := specMasks(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			l := &layers{dirs: []string{upper, lower}}
			defer l.close()
			a := newFileAccess(c.spec, m, mounts, l)
			a.pids = map[string]bool{"1": true, "2": true} // the checkpoint's tasks
			err = a.check(c.file, c.flags, c.searched, c.written)
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

// inUserNS gives s a user namespace that maps its ids 0–65535 to the
// node's from 100000.
func inUserNS(s *specs.Spec) *specs.Spec {
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	s.Linux.GIDMappings = s.Linux.UIDMappings
	return s
}

// A file named through a symbolic link in a tmpfs's contents (which come
// from the checkpoint, and CRIU would follow as root) is refused, as in
// the root file system.
func TestFileThroughATmpfsLink(t *testing.T) {
	images := t.TempDir()
	writeTmpfs(t, filepath.Join(images, "tmpfs-dev-2.tar.gz.img"), []*tar.Header{
		{Name: "./", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "./sub/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./sub/file", Typeflag: tar.TypeReg, Mode: 0o600},
		{Name: "./out", Typeflag: tar.TypeSymlink, Linkname: "/data"},
	})
	mounts := []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0), mount(2, 1, mnt.Fstype_TMPFS, "/", "/tmp", 0)}
	for _, c := range []struct {
		name   string
		uid    uint32
		caps   []string
		file   string
		refuse string
	}{
		{"a file of the tmpfs", 1000, nil, "/tmp/sub/file", ""},
		{"through a link", 1000, nil, "/tmp/out/secret", "through a symbolic link (/tmp/out)"},
		{"through a link, CAP_DAC_OVERRIDE", 1000, []string{"CAP_DAC_OVERRIDE"}, "/tmp/out/secret", ""},
		{"not in the tmpfs", 1000, nil, "/tmp/none/x", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := spec(c.uid, c.caps, false)
			m, err := specMasks(s)
			if err != nil {
				t.Fatal(err)
			}
			a := newFileAccess(s, m, mounts, &layers{dirs: []string{t.TempDir()}})
			a.tmpfs = &tmpfsTrees{imagesDir: images, names: []string{"tmpfs-dev-2.tar.gz.img"}}
			err = a.check(c.file, unix.O_RDONLY, false, false)
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

package confine

import (
	"archive/tar"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// What CRIU puts in a tmpfs must be what runc makes there, or what the
// spec's user could have made.
func TestTmpfsContentsNeedTheSpecsUser(t *testing.T) {
	member := func(name string, kind byte, mode int64, owner int) *tar.Header {
		return &tar.Header{Name: name, Typeflag: kind, Mode: mode, Uid: owner, Gid: owner}
	}
	dir := func(name string, mode int64, owner int) *tar.Header { return member(name, tar.TypeDir, mode, owner) }
	file := func(name string, mode int64, owner int) *tar.Header { return member(name, tar.TypeReg, mode, owner) }
	link := func(name, target string) *tar.Header {
		h := member(name, tar.TypeSymlink, 0o777, 0)
		h.Linkname = target
		return h
	}
	device := func(name string, major, minor int64, owner int) *tar.Header {
		h := member(name, tar.TypeChar, 0o666, owner)
		h.Devmajor, h.Devminor = major, minor
		return h
	}
	// As runc made them for clonesSpec, by the mounts' devices in
	// donorMounts: /dev (77), /dev/shm (79), /run (82), the masks /proc/acpi
	// (55) and /sys/firmware (60); and the holder of the cgroup v1
	// hierarchies (101) in mounts.
	runcs := func() map[int][]*tar.Header {
		return map[int][]*tar.Header{
			101: {dir("./", 0o755, 0), dir("./cpu,cpuacct/", 0o755, 0), link("./cpu", "cpu,cpuacct"), link("./cpuacct", "cpu,cpuacct"), dir("./memory/", 0o755, 0)},
			77: {dir("./", 0o755, 0), link("./fd", "/proc/self/fd"), link("./ptmx", "pts/ptmx"), device("./null", 1, 3, 0),
				device("./tty", 5, 0, 0), dir("./pts/", 0o755, 0), dir("./shm/", 0o755, 0), dir("./mqueue/", 0o755, 0)},
			79: {dir("./", 0o1777, 0)},
			82: {dir("./", 0o755, 0)},
			55: {dir("./", 0o1777, 0)},
			60: {dir("./", 0o1777, 0)},
		}
	}
	userSpec := func(caps ...string) *specs.Spec {
		s := clonesSpec()
		s.Process.User = specs.User{UID: 1000, GID: 1000}
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
		s.Mounts[1].Options = []string{"nosuid", "mode=755", "size=65536k"}  // /dev
		s.Mounts[3].Options = []string{"nosuid", "mode=1777", "size=65536k"} // /dev/shm
		s.Mounts[6].Options = []string{"nosuid", "mode=755"}                 // /run
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/run/secrets/app", Type: "bind", Source: "/srv/secrets", Options: []string{"rbind", "ro"}},
			specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
		return s
	}
	mounts := donorMounts()
	for i, at := range []string{"/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory"} {
		m := mount(uint32(102+i), 101, mnt.Fstype_CGROUP, "/x", at, ro)
		m.ExtKey = proto.String(at)
		mounts = append(mounts, m)
	}
	mounts = append(mounts, cgroupHolder(101, 81))
	check := func(t *testing.T, s *specs.Spec, tars map[int][]*tar.Header) error {
		t.Helper()
		d := t.TempDir()
		var names []string
		for dev, members := range tars {
			name := fmt.Sprintf("tmpfs-dev-%d.tar.gz.img", dev)
			writeTmpfs(t, filepath.Join(d, name), members)
			names = append(names, name)
		}
		m, err := specMasks(s)
		if err != nil {
			t.Fatal(err)
		}
		a := newFileAccess(s, m, mounts, nil)
		a.tmpfs = &tmpfsTrees{imagesDir: d, names: names}
		return a.checkTmpfsContents(s)
	}
	with := func(dev int, members ...*tar.Header) map[int][]*tar.Header {
		tars := runcs()
		tars[dev] = append(tars[dev], members...)
		return tars
	}
	setgidDir := dir("./g/", 0o2770, 1000)
	setgidDir.Gid = 2000
	inSetgid := file("./g/f", 0o640, 1000)
	inSetgid.Gid = 2000
	for _, c := range []struct {
		name   string
		spec   *specs.Spec
		tars   map[int][]*tar.Header
		refuse string
	}{
		{"as runc made them", userSpec(), runcs(), ""},
		{"the user's files in /dev/shm", userSpec(), with(79, dir("./d/", 0o700, 1000), file("./d/f", 0o4755, 1000), file("./s", 0o600, 1000)), ""},
		{"in a set-group-ID directory", func() *specs.Spec {
			s := userSpec()
			s.Process.User.AdditionalGids = []uint32{2000}
			return s
		}(), with(79, setgidDir, inSetgid), ""},
		{"a set-group-ID directory of another group", userSpec(), with(79, setgidDir, inSetgid), "/dev/shm/g (d2770, owner 1000:2000), which the spec's user (1000) could not make: it would be owned by 1000:2000"},
		{"runc's mount points under /run", userSpec(), with(82, dir("./secrets/", 0o755, 0), file("./secrets/app", 0o644, 0)), ""},
		{"a root's file in /dev/shm", userSpec(), with(79, file("./x", 0o644, 0)), "/dev/shm/x (-0644, owner 0:0), which the spec's user (1000) could not make: it would be owned by 0:0"},
		{"a root's file in /dev/shm, with CAP_CHOWN", userSpec("CAP_CHOWN"), with(79, file("./x", 0o644, 0)), ""},
		{"a sudo timestamp in /run", userSpec(), with(82, dir("./sudo/", 0o711, 0), dir("./sudo/ts/", 0o700, 0), file("./sudo/ts/app", 0o600, 0)),
			"/run/sudo (d0711, owner 0:0), which the spec's user (1000) could not make: it may not make files in its directory"},
		{"the same, with CAP_DAC_OVERRIDE", userSpec("CAP_DAC_OVERRIDE"), with(82, dir("./sudo/", 0o711, 0), file("./sudo/app", 0o600, 0)), ""},
		{"the user's file in /dev", userSpec(), with(77, file("./log", 0o666, 1000)), "it may not make files in its directory"},
		{"another device at /dev/null", userSpec(), func() map[int][]*tar.Header {
			tars := runcs()
			tars[77][3] = device("./null", 1, 1, 0)
			return tars
		}(), "/dev/null (c0666, owner 0:0)"},
		{"a device node of the user's", userSpec(), with(79, device("./sda", 8, 0, 1000)), "a device node takes CAP_MKNOD"},
		{"a link of runc's name elsewhere", userSpec(), func() map[int][]*tar.Header {
			tars := runcs()
			tars[77][1] = link("./fd", "/etc")
			return tars
		}(), "/dev/fd (l0777, owner 0:0)"},
		{"/dev/shm's root mode", userSpec(), func() map[int][]*tar.Header {
			tars := runcs()
			tars[79][0] = dir("./", 0o777, 0)
			return tars
		}(), "the spec's tmpfs has mode 1777"},
		{"/run's root the user's", userSpec(), func() map[int][]*tar.Header {
			tars := runcs()
			tars[82][0] = dir("./", 0o755, 1000)
			return tars
		}(), "the spec's tmpfs is owned by 0:0"},
		{"set-group-ID for another group", userSpec(), func() map[int][]*tar.Header {
			f := file("./x", 0o2755, 1000)
			f.Gid = 0
			return with(79, f)
		}(), "it would be owned by 1000:0"},
		{"a user's file named for root", userSpec(), func() map[int][]*tar.Header {
			f := file("./a", 0o4755, 1000)
			f.Uname, f.Gname = "root", "root"
			return with(79, f)
		}(), "has a user or group name (\"root\", \"root\"), which CRIU's tar would take over its ids"},
		{"a masked directory with contents", userSpec(), with(55, file("./x", 0o644, 1000)), "runc masks the directory with an empty read-only tmpfs"},
		{"a root's file in the cgroup hierarchies' tmpfs", userSpec(), with(101, file("./x", 0o644, 0)),
			"/sys/fs/cgroup/x (-0644, owner 0:0), which the spec's user (1000) could not make: it may not make files in its directory"},
		{"a controller's link out of the cgroup hierarchies", userSpec(), func() map[int][]*tar.Header {
			tars := runcs()
			tars[101][2] = link("./cpu", "/etc")
			return tars
		}(), "/sys/fs/cgroup/cpu (l0777, owner 0:0)"},
		{"a link named for no controller of its hierarchy", userSpec(), with(101, link("./memory.x", "cpu,cpuacct")), "/sys/fs/cgroup/memory.x (l0777"},
		{"a link to no hierarchy", userSpec(), with(101, link("./net_cls", "net_cls,net_prio")), "/sys/fs/cgroup/net_cls (l0777"},
		{"the cgroup hierarchies' tmpfs writable by all", userSpec(), func() map[int][]*tar.Header {
			tars := runcs()
			tars[101][0] = dir("./", 0o1777, 0)
			return tars
		}(), "the spec's tmpfs has mode 0755"},
		{"a directory the user may not search", userSpec(), with(79, dir("./d/", 0o700, 0), file("./d/f", 0o644, 1000)), "/dev/shm/d (d0700, owner 0:0)"},
	} {
		err := check(t, c.spec, c.tars)
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
	// In a user namespace runc binds the node's devices on empty files.
	userns := userSpec()
	userns.Linux.Namespaces = append(userns.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	userns.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
	userns.Linux.GIDMappings = userns.Linux.UIDMappings
	tars := runcs()
	tars[77][3], tars[77][4] = file("./null", 0, 0), file("./tty", 0, 0)
	if err := check(t, userns, tars); err != nil {
		t.Errorf("in a user namespace: %v", err)
	}
	tars[79] = append(tars[79], device("./null", 1, 3, 1000))
	if err := check(t, userns, tars); err == nil || !strings.Contains(err.Error(), "outside a user namespace") {
		t.Errorf("a device in a user namespace: %v", err)
	}
}

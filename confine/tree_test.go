package confine

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/userns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

func writeImage(t *testing.T, path, magic string, msgs ...proto.Message) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img := &crit.CriuImage{Magic: magic}
	for _, m := range msgs {
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: m})
	}
	if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
		t.Fatal(err)
	}
}

// hostIDs are the dumping CRIU's namespaces, as in a real dump of a ctr
// container: it shares the user, cgroup and time namespaces with the host.
func hostIDs() *criucore.TaskKobjIdsEntry {
	return &criucore.TaskKobjIdsEntry{VmId: proto.Uint32(1), FilesId: proto.Uint32(1), FsId: proto.Uint32(1), SighandId: proto.Uint32(1),
		PidNsId: proto.Uint32(1), NetNsId: proto.Uint32(2), IpcNsId: proto.Uint32(3), UtsNsId: proto.Uint32(4),
		MntNsId: proto.Uint32(6), UserNsId: proto.Uint32(7), CgroupNsId: proto.Uint32(8), TimeNsId: proto.Uint32(5)}
}

func containerIDs() *criucore.TaskKobjIdsEntry {
	return &criucore.TaskKobjIdsEntry{VmId: proto.Uint32(2), FilesId: proto.Uint32(2), FsId: proto.Uint32(2), SighandId: proto.Uint32(2),
		PidNsId: proto.Uint32(9), NetNsId: proto.Uint32(10), IpcNsId: proto.Uint32(11), UtsNsId: proto.Uint32(12),
		MntNsId: proto.Uint32(13), UserNsId: proto.Uint32(7), CgroupNsId: proto.Uint32(8), TimeNsId: proto.Uint32(5)}
}

func mount(id, parent uint32, fs mnt.Fstype, root, at string, flags uint32) *mnt.MntEntry {
	return &mnt.MntEntry{Fstype: proto.Uint32(uint32(fs)), MntId: proto.Uint32(id), RootDev: proto.Uint32(id), ParentMntId: proto.Uint32(parent),
		Flags: proto.Uint32(flags), Root: proto.String(root), Mountpoint: proto.String(at), Source: proto.String("none"), Options: proto.String("")}
}

const (
	ro     = msRdonly
	nosuid = msNosuid
)

// cgroupHolder is the tmpfs runc holds cgroup v1 hierarchies in, as CRIU
// dumped it (runc's default flags, mode 755).
func cgroupHolder(id, parent uint32) *mnt.MntEntry {
	m := mount(id, parent, mnt.Fstype_TMPFS, "/", "/sys/fs/cgroup", nosuid|msNodev|msNoexec)
	m.Options = proto.String("mode=755")
	return m
}

// donorMounts is the mount tree runc gave a ctr container, as CRIU dumped
// it (mountpoints-13.img of a real dump, bind mount of /data added).
func donorMounts() []*mnt.MntEntry {
	keys := mount(58, 76, mnt.Fstype_TMPFS, "/null", "/proc/keys", 0)
	keys.ExtKey = proto.String("/dev/null")
	data := mount(83, 74, mnt.Fstype_OVERLAYFS, "/", "/data", ro)
	data.ExtKey = proto.String("/data")
	return []*mnt.MntEntry{
		mount(74, 50, mnt.Fstype_OVERLAYFS, "/", "/", 0),
		mount(76, 74, mnt.Fstype_PROC, "/", "/proc", 0),
		mount(77, 74, mnt.Fstype_TMPFS, "/", "/dev", nosuid),
		mount(78, 77, mnt.Fstype_DEVPTS, "/", "/dev/pts", 0),
		mount(79, 77, mnt.Fstype_TMPFS, "/", "/dev/shm", nosuid),
		mount(80, 77, mnt.Fstype_MQUEUE, "/", "/dev/mqueue", 0),
		mount(81, 74, mnt.Fstype_SYSFS, "/", "/sys", ro|nosuid),
		mount(82, 74, mnt.Fstype_TMPFS, "/", "/run", nosuid),
		mount(54, 76, mnt.Fstype_PROC, "/sys", "/proc/sys", ro),
		mount(51, 76, mnt.Fstype_PROC, "/bus", "/proc/bus", ro),
		mount(55, 76, mnt.Fstype_TMPFS, "/", "/proc/acpi", ro),
		keys,
		mount(60, 81, mnt.Fstype_TMPFS, "/", "/sys/firmware", ro),
		data,
	}
}

// usernsMounts is donorMounts as a container with a user namespace has
// them: the kernel shows its tmpfs mounts' owner, the namespace's root.
func usernsMounts() []*mnt.MntEntry {
	ms := donorMounts()
	for _, m := range ms {
		if mnt.Fstype(m.GetFstype()) == mnt.Fstype_TMPFS && m.ExtKey == nil {
			m.Options = proto.String(strings.TrimPrefix(m.GetOptions()+",uid=0,gid=0", ","))
		}
	}
	return ms
}

// clonesSpec is the restoring container's spec: what containerd's default
// spec has for these paths.
func clonesSpec() *specs.Spec {
	s := spec(0, nil, false)
	for _, ns := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace, specs.NetworkNamespace} {
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: ns})
	}
	s.Mounts = []specs.Mount{
		{Destination: "/proc", Type: "proc"},
		{Destination: "/dev", Type: "tmpfs"},
		{Destination: "/dev/pts", Type: "devpts"},
		{Destination: "/dev/shm", Type: "tmpfs"},
		{Destination: "/dev/mqueue", Type: "mqueue"},
		{Destination: "/sys", Type: "sysfs", Options: []string{"nosuid", "ro"}},
		{Destination: "/run", Type: "tmpfs"},
		{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "ro"}},
	}
	s.Linux.MaskedPaths = []string{"/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"}
	s.Linux.ReadonlyPaths = []string{"/proc/bus", "/proc/sys"}
	return s
}

// onHost is the host's /proc and /sys in these tests: /proc/kcore is
// missing, as on this project's CI machines.
func onHost(p string) bool { return p != "/proc/kcore" }

func writeTree(t *testing.T, ids []*criucore.TaskKobjIdsEntry, mounts []*mnt.MntEntry) string {
	t.Helper()
	dir := writeImages(t, task{})
	os.Remove(filepath.Join(dir, "ids-1.img")) // writeImages's
	writeImage(t, filepath.Join(dir, "inventory.img"), "INVENTORY", &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), RootIds: hostIDs()})
	for i, id := range ids {
		writeImage(t, filepath.Join(dir, "ids-"+string(rune('1'+i))+".img"), "IDS", id)
	}
	writeImage(t, filepath.Join(dir, "mountpoints-13.img"), "MNTS", messages(mounts)...)
	return dir
}

func messages(ms []*mnt.MntEntry) []proto.Message {
	out := make([]proto.Message, len(ms))
	for i, m := range ms {
		out[i] = m
	}
	return out
}

func checkTree(dir string, s *specs.Spec) error {
	names, err := imageNames(dir)
	if err != nil {
		return err
	}
	if err := checkNamespaces(dir, names, s); err != nil {
		return err
	}
	_, err = checkMounts(dir, names, s, onHost)
	return err
}

func imageNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, err
}

func TestDonorTreeFits(t *testing.T) {
	dir := writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs(), containerIDs()}, donorMounts())
	if err := checkTree(dir, clonesSpec()); err != nil {
		t.Fatal(err)
	}
	// Through Apply too, which reads the host's own /proc and /sys.
	if _, err := Apply(dir, t.TempDir(), clonesSpec(), nil, nil, false); err != nil {
		t.Fatal(err)
	}
}

func TestNamespaceRefusals(t *testing.T) {
	host := hostIDs()
	cases := map[string]func(*criucore.TaskKobjIdsEntry){
		"host IPC namespace":     func(i *criucore.TaskKobjIdsEntry) { i.IpcNsId = host.IpcNsId },
		"host UTS namespace":     func(i *criucore.TaskKobjIdsEntry) { i.UtsNsId = host.UtsNsId },
		"host mount namespace":   func(i *criucore.TaskKobjIdsEntry) { i.MntNsId = host.MntNsId },
		"host PID namespace":     func(i *criucore.TaskKobjIdsEntry) { i.PidNsId = host.PidNsId },
		"host network namespace": func(i *criucore.TaskKobjIdsEntry) { i.NetNsId = host.NetNsId },
		"no IPC namespace id":    func(i *criucore.TaskKobjIdsEntry) { i.IpcNsId = nil },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			// The second task: every task is checked, not only the root.
			child := containerIDs()
			edit(child)
			err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs(), child}, donorMounts()), clonesSpec())
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "namespace") {
				t.Fatalf("got %v, want a namespace refusal", err)
			}
		})
	}
	t.Run("spec shares the namespace", func(t *testing.T) {
		child := containerIDs()
		child.NetNsId = host.NetNsId
		s := clonesSpec()
		s.Linux.Namespaces = s.Linux.Namespaces[:4] // no network namespace: the host's
		if err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{child}, donorMounts()), s); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a user namespace the donor did not have", func(t *testing.T) {
		s := clonesSpec()
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		if err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, donorMounts()), s); !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
	})
	t.Run("no ids images", func(t *testing.T) {
		if err := checkTree(writeTree(t, nil, donorMounts()), clonesSpec()); !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
	})
	t.Run("a user namespace the spec does not have", func(t *testing.T) {
		child := containerIDs()
		child.UserNsId = proto.Uint32(99)
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs(), child}, donorMounts()), clonesSpec())
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "user namespace") {
			t.Fatalf("got %v, want a user namespace refusal", err)
		}
	})
	t.Run("a time namespace the spec does not have", func(t *testing.T) {
		child := containerIDs()
		child.TimeNsId = proto.Uint32(99)
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs(), child}, donorMounts()), clonesSpec())
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "time namespace of its own") {
			t.Fatalf("got %v, want a time namespace refusal", err)
		}
		s := clonesSpec()
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.TimeNamespace})
		if err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{child}, donorMounts()), s); err != nil {
			t.Fatalf("the spec's time namespace: %v", err)
		}
	})
	t.Run("the spec's user namespace", func(t *testing.T) {
		s := clonesSpec()
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		s.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}
		s.Linux.GIDMappings = s.Linux.UIDMappings
		ids := containerIDs()
		ids.UserNsId = proto.Uint32(14)
		for _, c := range []struct {
			name   string
			host   uint32
			refuse bool
		}{{"same maps", 100000, false}, {"root outside", 0, true}} {
			dir := writeTree(t, []*criucore.TaskKobjIdsEntry{ids}, usernsMounts())
			ext := &userns.UidGidExtent{First: proto.Uint32(0), LowerFirst: proto.Uint32(c.host), Count: proto.Uint32(65536)}
			writeImage(t, filepath.Join(dir, "userns-14.img"), "USERNS", &userns.UsernsEntry{UidMap: []*userns.UidGidExtent{ext}, GidMap: []*userns.UidGidExtent{ext}})
			if err := checkTree(dir, s); errors.Is(err, ErrRefused) != c.refuse || (!c.refuse && err != nil) {
				t.Errorf("%s: got %v", c.name, err)
			}
		}
		// A spec that joins one by path need not list its maps; snapboot
		// then cannot tell the node's ids of its users.
		joined := clonesSpec()
		joined.Linux.Namespaces = append(joined.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace, Path: "/proc/42/ns/user"})
		dir := writeTree(t, []*criucore.TaskKobjIdsEntry{ids}, donorMounts())
		writeImage(t, filepath.Join(dir, "userns-14.img"), "USERNS", &userns.UsernsEntry{})
		if err := checkTree(dir, joined); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "no uid or gid maps") {
			t.Errorf("no maps: got %v", err)
		}
	})
	t.Run("an image of another kind under the inventory's name", func(t *testing.T) {
		dir := writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, donorMounts())
		writeImage(t, filepath.Join(dir, "inventory.img"), "IDS", containerIDs())
		if err := checkTree(dir, clonesSpec()); !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
	})
	t.Run("no inventory", func(t *testing.T) {
		dir := writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, donorMounts())
		os.Remove(filepath.Join(dir, "inventory.img"))
		if err := checkTree(dir, clonesSpec()); !errors.Is(err, ErrRefused) {
			t.Fatalf("got %v, want ErrRefused", err)
		}
	})
}

func TestMountRefusals(t *testing.T) {
	without := func(at string) func([]*mnt.MntEntry) []*mnt.MntEntry {
		return func(ms []*mnt.MntEntry) []*mnt.MntEntry {
			var out []*mnt.MntEntry
			for _, m := range ms {
				if m.GetMountpoint() != at {
					out = append(out, m)
				}
			}
			return out
		}
	}
	add := func(m *mnt.MntEntry) func([]*mnt.MntEntry) []*mnt.MntEntry {
		return func(ms []*mnt.MntEntry) []*mnt.MntEntry { return append(ms, m) }
	}
	edit := func(at string, f func(*mnt.MntEntry)) func([]*mnt.MntEntry) []*mnt.MntEntry {
		return func(ms []*mnt.MntEntry) []*mnt.MntEntry {
			for _, m := range ms {
				if m.GetMountpoint() == at {
					f(m)
				}
			}
			return ms
		}
	}
	hostDisk := mount(90, 74, mnt.Fstype_AUTO, "/", "/mnt", 0)
	hostDisk.Fsname, hostDisk.Source = proto.String("ext4"), proto.String("/dev/sda1")
	unknownKey := mount(91, 74, mnt.Fstype_TMPFS, "/", "/mnt", 0)
	unknownKey.ExtKey = proto.String("/etc")
	devKey := mount(103, 74, mnt.Fstype_TMPFS, "/", "/mnt", 0)
	devKey.ExtKey = proto.String("/dev/kvm")
	// Each case is refused by the rule it is named after: want is in the reason.
	type refusal struct {
		change func([]*mnt.MntEntry) []*mnt.MntEntry
		want   string
	}
	cases := map[string]refusal{
		"a device the spec does not have":   {add(devKey), `external mount "/dev/kvm" that the spec does not have`},
		"a path within a tmpfs bound":       {add(mount(104, 77, mnt.Fstype_TMPFS, "/x", "/dev/x", nosuid)), "binds /x of a TMPFS mount"},
		"a masked file left open":           {without("/proc/keys"), "/proc/keys is not masked"},
		"a masked directory left open":      {without("/proc/acpi"), "/proc/acpi is not masked"},
		"masked sysfs path left open":       {without("/sys/firmware"), "/sys/firmware is not masked"},
		"mask made writable":                {edit("/proc/acpi", func(m *mnt.MntEntry) { m.Flags = proto.Uint32(nosuid) }), "/proc/acpi is not masked"},
		"read-only path made writable":      {edit("/proc/sys", func(m *mnt.MntEntry) { m.Flags = proto.Uint32(0) }), "/proc/sys mounts proc, which the spec does not mount there"},
		"read-only path left out":           {without("/proc/sys"), "/proc/sys is not read-only"},
		"read-only mount made writable":     {edit("/sys", func(m *mnt.MntEntry) { m.Flags = proto.Uint32(0) }), "/sys is read-write"},
		"read-only bind made writable":      {edit("/data", func(m *mnt.MntEntry) { m.Flags = proto.Uint32(0) }), "/data is read-write"},
		"a second proc":                     {add(mount(92, 74, mnt.Fstype_PROC, "/", "/tmp", 0)), "/tmp mounts proc"},
		"proc's root bound elsewhere":       {add(mount(93, 74, mnt.Fstype_PROC, "/", "/mnt", ro)), "/mnt mounts proc"},
		"proc's root over a read-only path": {edit("/proc/sys", func(m *mnt.MntEntry) { m.Root = proto.String("/") }), "/proc/sys mounts proc, which the spec does not mount there"},
		"a sysfs":                           {add(mount(94, 74, mnt.Fstype_SYSFS, "/", "/mnt", 0)), "/mnt mounts sysfs"},
		"a host disk":                       {add(hostDisk), "/mnt is a mount of type AUTO"},
		"devtmpfs":                          {add(mount(95, 74, mnt.Fstype_DEVTMPFS, "/", "/mnt", 0)), "/mnt is a mount of type DEVTMPFS"},
		"an overlay of host directories":    {add(mount(96, 74, mnt.Fstype_OVERLAYFS, "/", "/mnt", 0)), "/mnt is a mount of type OVERLAYFS"},
		"debugfs":                           {add(mount(97, 74, mnt.Fstype_DEBUGFS, "/", "/mnt", 0)), "/mnt is a mount of type DEBUGFS"},
		"a cgroup mount":                    {add(mount(98, 74, mnt.Fstype_CGROUP, "/", "/mnt", 0)), "/mnt is a cgroup mount the spec does not have"},
		"an external mount not in the spec": {add(unknownKey), `external mount "/etc" that the spec does not have`},
		"the spec's volume elsewhere":       {edit("/data", func(m *mnt.MntEntry) { m.Mountpoint = proto.String("/srv/else") }), `/srv/else is the external mount "/data", which runc mounts at /data`},
		"a path with ..":                    {add(mount(99, 74, mnt.Fstype_PROC, "/", "/proc/../mnt", 0)), "not clean and absolute"},
		"two roots":                         {add(mount(100, 1, mnt.Fstype_TMPFS, "/", "/", 0)), "two mounts at /"},
		"a tmpfs without nosuid":            {add(mount(108, 74, mnt.Fstype_TMPFS, "/", "/mnt", 0)), "/mnt is a tmpfs without nosuid"},
		"a tmpfs the spec does not have":    {add(mount(109, 74, mnt.Fstype_TMPFS, "/", "/mnt", nosuid)), "/mnt is a TMPFS mount the spec does not have"},
		"a mount id used twice":             {add(mount(82, 74, mnt.Fstype_TMPFS, "/", "/mnt", nosuid)), "mount id 82 used twice"},
		"a second proc over the masked one": {add(mount(107, 76, mnt.Fstype_PROC, "/", "/proc", 0)), "two mounts at /proc"},
		"a mask mounted on another parent":  {edit("/proc/keys", func(m *mnt.MntEntry) { m.ParentMntId = proto.Uint32(74) }), "/proc/keys is mounted on /, which is not the mount it is in"},
		"root not at /":                     {edit("/", func(m *mnt.MntEntry) { m.Mountpoint = proto.String("/x") }), "is mounted on /x, which is not the mount it is in"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, c.change(donorMounts())), clonesSpec())
			if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want ErrRefused saying %q", err, c.want)
			}
		})
	}
}

func TestMountsTheSpecAllows(t *testing.T) {
	cgroupSpec := clonesSpec()
	cgroupSpec.Mounts = append(cgroupSpec.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Options: []string{"ro"}})
	cgroupSpec.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/fuse"}}
	// runc binds the cgroup v1 hierarchies from the host, by key.
	hierarchy := mount(105, 101, mnt.Fstype_CGROUP, "/", "/sys/fs/cgroup/systemd", ro)
	hierarchy.ExtKey = proto.String("/sys/fs/cgroup/systemd")
	memory := mount(102, 101, mnt.Fstype_CGROUP, "/snapboot/x", "/sys/fs/cgroup/memory", ro)
	memory.ExtKey = proto.String("/sys/fs/cgroup/memory")
	fuse := mount(106, 77, mnt.Fstype_DEVTMPFS, "/fuse", "/dev/fuse", 0)
	fuse.ExtKey = proto.String("/dev/fuse")
	cases := map[string]struct {
		mounts []*mnt.MntEntry
		spec   *specs.Spec
	}{
		// A missing path is not masked by runc either.
		"a masked path the host lacks": {donorMounts(), clonesSpec()},
		// The spec does not mount /proc: nothing under it to mask.
		"no proc at all": {func() []*mnt.MntEntry {
			var out []*mnt.MntEntry
			for _, m := range donorMounts() {
				if !strings.HasPrefix(m.GetMountpoint(), "/proc") {
					out = append(out, m)
				}
			}
			return out
		}(), clonesSpec()},
		"cgroup v1 hierarchies under the spec's cgroup mount": {append(donorMounts(),
			cgroupHolder(101, 81), memory, hierarchy), cgroupSpec},

		"a device node of the spec": {append(donorMounts(), fuse), cgroupSpec},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, c.mounts), c.spec); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A cgroup file system CRIU mounts itself shows the root of the restored
// task's cgroup namespace: without a namespace of the container's own,
// the host's whole hierarchy, which a cold start never shows (runc binds
// the container's own cgroups). Refused, bound by key or not, in every
// form but the one a donor with a cgroup namespace has.
func TestCgroupFileSystems(t *testing.T) {
	inNS := containerIDs()
	inNS.CgroupNsId = proto.Uint32(14) // not the host's (inventory.img)
	noNS := clonesSpec()
	noNS.Mounts = append(noNS.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Options: []string{"ro"}})
	withNS := clonesSpec()
	withNS.Mounts = noNS.Mounts
	withNS.Linux.Namespaces = append(withNS.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
	tmpfs := cgroupHolder(101, 81)
	for _, c := range []struct {
		name   string
		fs     mnt.Fstype
		root   string
		spec   *specs.Spec
		refuse bool
	}{
		{"the whole v1 hierarchy, no cgroup namespace", mnt.Fstype_CGROUP, "/", noNS, true},
		// As runc's cold start mounts it on cgroup v2.
		{"the whole v2 hierarchy, no cgroup namespace", mnt.Fstype_CGROUP2, "/", noNS, false},
		{"part of the v2 hierarchy, no cgroup namespace", mnt.Fstype_CGROUP2, "/x", noNS, true},
		{"a v1 cgroup, not bound by key, no cgroup namespace", mnt.Fstype_CGROUP, "/default/x", noNS, true},
		{"a root that climbs, in the spec's cgroup namespace", mnt.Fstype_CGROUP, "/x/../..", withNS, true},
		{"a relative root, in the spec's cgroup namespace", mnt.Fstype_CGROUP, "x", withNS, true},
		{"the namespace's root, in the spec's cgroup namespace", mnt.Fstype_CGROUP, "/", withNS, false},
		{"v2, the namespace's root, in the spec's cgroup namespace", mnt.Fstype_CGROUP2, "/", withNS, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			ids := containerIDs()
			if c.spec == withNS {
				ids = inNS
			}
			err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{ids}, append(donorMounts(), tmpfs, mount(102, 101, c.fs, c.root, "/sys/fs/cgroup/memory", ro))), c.spec)
			if c.refuse != errors.Is(err, ErrRefused) || (!c.refuse && err != nil) {
				t.Fatalf("refuse %v: got %v", c.refuse, err)
			}
			t.Log(err)
		})
	}
}

func TestReadOnlyRootAndResolvedKeys(t *testing.T) {
	ids := []*criucore.TaskKobjIdsEntry{containerIDs()}
	s := clonesSpec()
	s.Root = &specs.Root{Path: "rootfs", Readonly: true}
	if err := checkTree(writeTree(t, ids, donorMounts()), s); !errors.Is(err, ErrRefused) {
		t.Errorf("a read-write root for a read-only spec root: got %v", err)
	}
	roRoot := donorMounts()
	roRoot[0].Flags = proto.Uint32(ro)
	if err := checkTree(writeTree(t, ids, roRoot), s); err != nil {
		t.Errorf("a read-only root: %v", err)
	}

	// runc's key for a destination under a link (/var/run -> /run).
	s = clonesSpec()
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/var/run/secrets/token", Type: "bind", Source: "/kubelet/token", Options: []string{"rbind", "ro"}})
	for _, c := range []struct {
		flags  uint32
		refuse bool
	}{{ro, false}, {0, true}} {
		token := mount(109, 82, mnt.Fstype_TMPFS, "/", "/run/secrets/token", c.flags)
		token.ExtKey = proto.String("/run/secrets/token")
		err := checkTree(writeTree(t, ids, append(donorMounts(), token)), s)
		if errors.Is(err, ErrRefused) != c.refuse || (!c.refuse && err != nil) {
			t.Errorf("token bound with flags %#x: got %v", c.flags, err)
		}
	}
}

// runc's restore would bind each cgroup v1 hierarchy from its own cgroup:
// the keys become snapboot's, mapped to the container's cgroup in the
// host's hierarchy of the same name, for a cgroupfs or a systemd cgroups
// path. Not for a path runc would refuse or a spec with a cgroup
// namespace; a hierarchy this node lacks keeps runc's bind.
func TestRebindCgroups(t *testing.T) {
	bound := func(id uint32, at, key string) *mnt.MntEntry {
		m := mount(id, 101, mnt.Fstype_CGROUP, "/donor", at, ro)
		m.ExtKey = proto.String(key)
		return m
	}
	tree := func(extra ...*mnt.MntEntry) map[string]*crit.CriuImage {
		mounts := append(donorMounts(), cgroupHolder(101, 81))
		dir := writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, append(mounts, extra...))
		names, _ := imageNames(dir)
		imgs := map[string]*crit.CriuImage{}
		for _, name := range names {
			if strings.HasPrefix(name, "mountpoints-") {
				img, _, err := decodeMounts(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				imgs[name] = img
			}
		}
		return imgs
	}
	hierarchies := map[string]cgroupHierarchy{"cpu,cpuacct": {"/sys/fs/cgroup/cpu,cpuacct", true}, "systemd": {"/host/cgroup/systemd", true},
		"memory": {"/sys/fs/cgroup/memory", true}}
	spec := func() *specs.Spec {
		s := clonesSpec()
		s.Mounts = append(s.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Options: []string{"ro"}})
		s.Linux.CgroupsPath = "/k8s.io/clone"
		return s
	}
	base := func() map[string]*crit.CriuImage {
		return tree(bound(102, "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu,cpuacct"), bound(103, "/sys/fs/cgroup/systemd", "/sys/fs/cgroup/systemd"))
	}

	rewritten, external, err := rebindCgroups(base(), spec(), func() map[string]cgroupHierarchy { return hierarchies })
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"mnt[snapboot-cgroup-0]:/sys/fs/cgroup/cpu,cpuacct/k8s.io/clone", "mnt[snapboot-cgroup-1]:/host/cgroup/systemd/k8s.io/clone"}
	if !slices.Equal(external, want) {
		t.Fatalf("external %q, want %q", external, want)
	}
	if len(rewritten) != 1 {
		t.Fatalf("rewritten images: %d", len(rewritten))
	}
	var keys []string
	for _, img := range rewritten {
		for _, e := range img.Entries {
			if m := e.Message.(*mnt.MntEntry); mnt.Fstype(m.GetFstype()) == mnt.Fstype_CGROUP {
				keys = append(keys, m.GetExtKey())
			}
		}
	}
	if !slices.Equal(keys, []string{"snapboot-cgroup-0", "snapboot-cgroup-1"}) {
		t.Fatalf("keys %q", keys)
	}

	// A systemd cgroups path (the CRI plugin with SystemdCgroup): the
	// container's cgroup is its scope in the expanded slice.
	s := spec()
	s.Linux.CgroupsPath = "kubepods-besteffort.slice:cri-containerd:clone"
	if _, external, err = rebindCgroups(base(), s, func() map[string]cgroupHierarchy { return hierarchies }); err != nil {
		t.Fatal(err)
	}
	scope := "/kubepods.slice/kubepods-besteffort.slice/cri-containerd-clone.scope"
	if want := []string{"mnt[snapboot-cgroup-0]:/sys/fs/cgroup/cpu,cpuacct" + scope, "mnt[snapboot-cgroup-1]:/host/cgroup/systemd" + scope}; !slices.Equal(external, want) {
		t.Fatalf("systemd path: external %q, want %q", external, want)
	}

	for name, change := range map[string]func(*specs.Spec){
		"a systemd path runc refuses": func(s *specs.Spec) { s.Linux.CgroupsPath = "system.slice:cri-containerd" },
		"a slice systemd refuses":     func(s *specs.Spec) { s.Linux.CgroupsPath = "a--b.slice:cri-containerd:clone" },
		"a relative cgroups path":     func(s *specs.Spec) { s.Linux.CgroupsPath = "k8s.io/clone" },
		// CRIU would read the rest of the line as options of its own.
		"a cgroups path with a space": func(s *specs.Spec) { s.Linux.CgroupsPath = "/a --action-script /tmp/x" },
		"a cgroups path with a quote": func(s *specs.Spec) { s.Linux.CgroupsPath = `/a"b` },
		"a spec cgroup namespace": func(s *specs.Spec) {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.CgroupNamespace})
		},
		"no cgroup mount in the spec": func(s *specs.Spec) { s.Mounts = clonesSpec().Mounts },
	} {
		s := spec()
		change(s)
		if rewritten, external, err := rebindCgroups(base(), s, func() map[string]cgroupHierarchy { return hierarchies }); err != nil || len(rewritten) != 0 || len(external) != 0 {
			t.Errorf("%s: got %d images, %q, %v; want nothing", name, len(rewritten), external, err)
		}
	}
	// Only runc's own binds of hierarchies: a key that is not the mount
	// point (/dev/null, which checkMounts lets any mount bind), a
	// hierarchy not right under the spec's cgroup mount, one this node
	// does not have, or one runc makes no cgroup in keeps its key.
	for name, m := range map[string]*mnt.MntEntry{
		"another key":            bound(104, "/sys/fs/cgroup/memory", "/dev/null"),
		"not under cgroup mount": bound(104, "/etc/memory", "/etc/memory"),
		"a hierarchy not here":   bound(104, "/sys/fs/cgroup/rdma", "/sys/fs/cgroup/rdma"),
		"not runc's":             bound(104, "/sys/fs/cgroup/elogind", "/sys/fs/cgroup/elogind"),
	} {
		h := maps.Clone(hierarchies)
		h["elogind"] = cgroupHierarchy{"/sys/fs/cgroup/elogind", false}
		if rewritten, external, err := rebindCgroups(tree(m), spec(), func() map[string]cgroupHierarchy { return h }); err != nil || len(rewritten) != 0 || len(external) != 0 {
			t.Errorf("%s: got %d images, %q, %v; want nothing", name, len(rewritten), external, err)
		}
	}
}

// A mount keeps the nosuid, nodev and noexec of the spec's options: CRIU
// mounts and binds with the image's flags.
func TestMountsKeepTheSpecsFlags(t *testing.T) {
	s := clonesSpec()
	s.Mounts[3].Options = []string{"nosuid", "noexec", "nodev"} // /dev/shm
	s.Mounts[7].Options = []string{"rbind", "ro", "nosuid", "nodev"}
	with := func(shm, data uint32) []*mnt.MntEntry {
		ms := donorMounts()
		for _, m := range ms {
			switch m.GetMountpoint() {
			case "/dev/shm":
				m.Flags = proto.Uint32(shm)
			case "/data":
				m.Flags = proto.Uint32(data)
			}
		}
		return ms
	}
	for _, c := range []struct {
		name   string
		mounts []*mnt.MntEntry
		refuse string
	}{
		{"as runc made them", with(nosuid|msNoexec|msNodev, ro|nosuid|msNodev), ""},
		{"a tmpfs without noexec", with(nosuid|msNodev, ro|nosuid|msNodev), "/dev/shm is not noexec"},
		{"a bind without nosuid", with(nosuid|msNoexec|msNodev, ro|msNodev), "/data is not nosuid"},
	} {
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, c.mounts), s)
		wantRefusal(t, c.name, err, c.refuse)
	}
}

// The tmpfs runc holds cgroup v1 hierarchies in is runc's own mount, not
// the spec's cgroup mount: mounted with runc's flags and mode 755, and
// left writable.
func TestCgroupV1HolderIsRuncs(t *testing.T) {
	s := clonesSpec()
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/sys/fs/cgroup", Type: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}})
	memory := mount(102, 101, mnt.Fstype_CGROUP, "/snapboot/x", "/sys/fs/cgroup/memory", ro|nosuid|msNodev|msNoexec)
	memory.ExtKey = proto.String("/sys/fs/cgroup/memory")
	with := func(edit func(*mnt.MntEntry)) []*mnt.MntEntry {
		holder := cgroupHolder(101, 81)
		edit(holder)
		return append(donorMounts(), holder, memory)
	}
	for _, c := range []struct {
		name   string
		mounts []*mnt.MntEntry
		refuse string
	}{
		{"as runc made it", with(func(*mnt.MntEntry) {}), ""},
		{"without noexec", with(func(m *mnt.MntEntry) { m.Flags = proto.Uint32(nosuid | msNodev) }), "/sys/fs/cgroup is not noexec"},
		{"writable by all", with(func(m *mnt.MntEntry) { m.Options = proto.String("") }), "the tmpfs at /sys/fs/cgroup has mode 1777, the spec's is 0755"},
		{"owned by a user", with(func(m *mnt.MntEntry) { m.Options = proto.String("mode=755,uid=1000") }), "is owned by 1000:0"},
	} {
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, c.mounts), s)
		wantRefusal(t, c.name, err, c.refuse)
	}
}

// The root and the external mounts share with the node's mounts no more
// than the spec's propagation: CRIU binds them from the node's tree and
// leaves them shared, or makes them slaves, as the images say.
func TestMountsKeepTheSpecsPropagation(t *testing.T) {
	with := func(at string, shared, master uint32, internal bool) []*mnt.MntEntry {
		ms := donorMounts()
		for _, m := range ms {
			if m.GetMountpoint() == at {
				m.SharedId, m.MasterId, m.InternalSharing = proto.Uint32(shared), proto.Uint32(master), proto.Bool(internal)
			}
		}
		return ms
	}
	specWith := func(rootfs string, data ...string) *specs.Spec {
		s := clonesSpec()
		s.Linux.RootfsPropagation = rootfs
		s.Mounts[7].Options = append(s.Mounts[7].Options, data...)
		return s
	}
	for _, c := range []struct {
		name   string
		spec   *specs.Spec
		mounts []*mnt.MntEntry
		refuse string
	}{
		{"private, as on a node whose mounts are private", specWith(""), donorMounts(), ""},
		{"the root a slave, runc's default", specWith(""), with("/", 0, 7, false), ""},
		{"a bind a slave, the root's propagation", specWith(""), with("/data", 0, 7, false), ""},
		{"the root shared", specWith(""), with("/", 7, 0, false), "/ is shared (peer group 7)"},
		{"the root shared within the images", specWith(""), with("/", 7, 0, true), "/ is shared (peer group 7)"},
		{"the root a slave, rprivate", specWith("rprivate"), with("/", 0, 7, false), "/ is a slave (of peer group 7)"},
		{"the root shared, rshared", specWith("rshared"), with("/", 7, 3, false), ""},
		{"a bind a slave, rprivate", specWith("", "rprivate"), with("/data", 0, 7, false), "/data is a slave (of peer group 7) of the node's mounts, which the spec's propagation of /data"},
		{"a bind shared, rslave", specWith("", "rslave"), with("/data", 7, 0, false), "/data is shared (peer group 7)"},
		{"a bind shared, the root's propagation", specWith(""), with("/data", 7, 0, false), "/data is shared"},
		{"a bind shared within the images", specWith("", "rprivate"), with("/data", 7, 0, true), ""},
		{"a bind shared, rshared after rprivate", specWith("", "rprivate", "rshared"), with("/data", 7, 0, false), ""},
		{"a bind shared, rprivate after rshared", specWith("", "rshared", "rprivate"), with("/data", 7, 0, false), "/data is shared"},
		{"a mask shared", specWith(""), with("/proc/keys", 7, 0, false), "/proc/keys is shared"},
		{"a mask a slave, rprivate", specWith("rprivate"), with("/proc/keys", 0, 7, false), "/proc/keys is a slave"},
	} {
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, c.mounts), c.spec)
		wantRefusal(t, c.name, err, c.refuse)
	}
}

// CRIU mounts a tmpfs with the image's options: its root's mode and owner
// must be the spec's, and its size and inodes no more than the spec's.
func TestTmpfsOptionsAreTheSpecs(t *testing.T) {
	with := func(shmOptions string) []*mnt.MntEntry {
		ms := donorMounts()
		for _, m := range ms {
			if m.GetMountpoint() == "/dev/shm" {
				m.Options = proto.String(shmOptions)
			}
		}
		return ms
	}
	specWith := func(shm ...string) *specs.Spec {
		s := clonesSpec()
		s.Mounts[3].Options = shm // /dev/shm
		return s
	}
	half := nodeMemPages() / 2 * pageSize / 1024
	for _, c := range []struct {
		name   string
		spec   *specs.Spec
		image  string
		refuse string
	}{
		{"as runc mounted it", specWith("nosuid", "mode=1777", "size=65536k"), "size=65536k", ""},
		{"the size in other units", specWith("size=64m"), "size=65536k", ""},
		{"smaller", specWith("size=64m"), "size=4k", ""},
		{"no size in the spec", specWith(), "size=1073741824k", ""},
		{"larger", specWith("size=64m"), "size=131072k", "may hold 32768 pages, the spec's 16384"},
		{"unbounded", specWith("size=64m"), "", "may hold"},
		{"the node's default, in percent", specWith("size=50%"), "", ""},
		{"in blocks", specWith("nr_blocks=100"), "size=400k", ""},
		{"inodes", specWith("nr_inodes=1k"), "nr_inodes=1024", ""},
		{"more inodes", specWith("nr_inodes=1k"), "nr_inodes=1025", "may hold 1025 inodes, the spec's 1024"},
		{"another mode", specWith("mode=1777"), "mode=777", "has mode 0777, the spec's is 1777"},
		{"mode 755", specWith("mode=0755"), "mode=755", ""},
		{"another owner", specWith(), "uid=1000", "is owned by 1000:0, the spec's by 0:0"},
		{"the spec's owner", specWith("uid=1000", "gid=1000"), "uid=1000,gid=1000", ""},
		{"a bad option", specWith(), "size=lots", "option \"size=lots\""},
		{"no bound, spelled 0", specWith("size=64m"), "size=0k", "may hold any number of pages, the spec's 16384"},
		{"no bound, spelled 0%", specWith("size=64m"), "size=0%", "may hold any number of pages"},
		{"no inode bound", specWith("nr_inodes=1k"), "nr_inodes=0", "may hold any number of inodes, the spec's 1024"},
		{"no bound in the spec either", specWith("size=0"), "size=0k", ""},
	} {
		if c.name == "the node's default, in percent" && half == 0 {
			continue
		}
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, with(c.image)), c.spec)
		wantRefusal(t, c.name, err, c.refuse)
	}
	// In a user namespace the kernel shows the owner in its ids; one it
	// does not show is the node's root.
	userns := clonesSpec()
	userns.Linux.Namespaces = append(userns.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
	for _, c := range []struct {
		name   string
		mounts []*mnt.MntEntry
		refuse bool
	}{{"the namespace's root", usernsMounts(), false}, {"the node's root", donorMounts(), true}} {
		r := mountRules{byDest: map[string]specs.Mount{}, userns: true, memPages: nodeMemPages()}
		for _, m := range userns.Mounts {
			r.byDest[m.Destination] = m
		}
		var err error
		for _, m := range c.mounts {
			if m.GetMountpoint() == "/dev" {
				err = r.allowed(m, c.mounts)
			}
		}
		if (err != nil) != c.refuse || c.refuse && !strings.Contains(err.Error(), "owned by the node's root") {
			t.Errorf("in a user namespace, %s: %v", c.name, err)
		}
	}
	// Fresh file systems only at the spec's mounts of their type: a tmpfs
	// where the spec binds a volume would hide it.
	s := clonesSpec()
	s.Mounts[3] = specs.Mount{Destination: "/dev/shm", Type: "bind", Source: "/run/shm", Options: []string{"rbind"}}
	err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, donorMounts()), s)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "/dev/shm is a tmpfs mount, the spec mounts a bind of /run/shm there") {
		t.Errorf("a tmpfs at a bind's place: %v", err)
	}
}

func TestMemSize(t *testing.T) {
	for _, c := range []struct {
		in   string
		of   uint64
		want uint64
		bad  bool
	}{
		{"4096", 0, 4096, false}, {"4k", 0, 4096, false}, {"64M", 0, 64 << 20, false}, {"1g", 0, 1 << 30, false},
		{"0x10", 0, 16, false}, {"50%", 1000, 500, false}, {"50%", 0, 0, true}, {"", 0, 0, true},
		{"k", 0, 0, true}, {"16777216t", 0, 0, true}, {"-1", 0, 0, true},
	} {
		got, err := memSize(c.in, c.of)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("memSize(%q, %d) = %d, %v", c.in, c.of, got, err)
		}
	}
}

// wantRefusal checks err, a check's result in the case name: a refusal
// saying refuse, or none where refuse is empty.
func wantRefusal(t *testing.T, name string, err error, refuse string) {
	t.Helper()
	switch {
	case refuse == "" && err != nil:
		t.Errorf("%s: refused: %v", name, err)
	case refuse != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), refuse)):
		t.Errorf("%s: %v, want a refusal about %q", name, err, refuse)
	}
}

// A mount of the images with the device of the root or of an external
// mount is one CRIU would bind from it, not make anew: a tmpfs of the
// spec's would become a writable view of a read-only volume.
func TestMountsCRIUWouldBindFromAnother(t *testing.T) {
	with := func(edit func(run, data *mnt.MntEntry)) []*mnt.MntEntry {
		ms := donorMounts()
		var run, data *mnt.MntEntry
		for _, m := range ms {
			switch m.GetMountpoint() {
			case "/run":
				run = m
			case "/data":
				data = m
			}
		}
		edit(run, data)
		return ms
	}
	for _, c := range []struct {
		name   string
		mounts []*mnt.MntEntry
		refuse string
	}{
		{"as dumped", donorMounts(), ""},
		{"/run with the volume's device", with(func(run, data *mnt.MntEntry) { run.RootDev = proto.Uint32(data.GetRootDev()) }),
			"/run has the device of /data (83), from which CRIU would bind it"},
		{"/run with the root's device", with(func(run, _ *mnt.MntEntry) { run.RootDev = proto.Uint32(74) }), "/run has the device of / (74)"},
		{"/run with the device of a mask's /dev/null, another root", with(func(run, data *mnt.MntEntry) {
			run.RootDev, data.Root = proto.Uint32(data.GetRootDev()), proto.String("/null")
		}), ""},
		{"/run a slave of a group not in the images", with(func(run, _ *mnt.MntEntry) { run.MasterId = proto.Uint32(4242) }),
			"/run is a slave of peer group 4242, which no mount of the checkpoint is in"},
		{"/run a slave of /dev's group", with(func(run, _ *mnt.MntEntry) { run.MasterId = proto.Uint32(9) }), ""},
		{"a mask's tmpfs with proc's device", with(func(_, _ *mnt.MntEntry) {}), "/proc (PROC) has the device of /proc/acpi (TMPFS)"},
		{"an old-style external mount", with(func(run, _ *mnt.MntEntry) { run.ExtMount = proto.Bool(true) }), "/run is an external mount in CRIU's older form"},
		{"a deleted mount root", with(func(run, _ *mnt.MntEntry) { run.Deleted = proto.Bool(true) }), "/run is a mount whose root was deleted"},
		{"a deleted root", with(func(_, _ *mnt.MntEntry) {}), "the root mount is external or deleted"},
	} {
		ms := c.mounts
		for _, m := range ms {
			switch {
			case c.name == "/run a slave of /dev's group" && m.GetMountpoint() == "/dev":
				m.SharedId = proto.Uint32(9)
			case c.name == "a mask's tmpfs with proc's device" && m.GetMountpoint() == "/proc/acpi":
				m.RootDev = proto.Uint32(76) // /proc's
			case c.name == "a deleted root" && m.GetMountpoint() == "/":
				m.Deleted = proto.Bool(true)
			}
		}
		err := checkTree(writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, ms), clonesSpec())
		wantRefusal(t, c.name, err, c.refuse)
	}
}

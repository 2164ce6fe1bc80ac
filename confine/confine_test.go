package confine

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/creds"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/seccomp"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

const (
	capChown     = 0
	capNetAdmin  = 12
	capSysAdmin  = 21
	allCapsLow32 = 0xffffffff
)

type task struct {
	uid     uint32
	caps    uint64
	seccomp criucore.SeccompMode
	noCreds bool // a core image without credentials (CRIU's oldest format)
	gid     *uint32
	groups  []uint32
	lsm     string
	tc      *criucore.TaskCoreEntry   // a thread group leader's task state
	edit    func(*criucore.CoreEntry) // if set, changes the core image further
}

// writeImages writes core images the way CRIU does, plus one other image.
func writeImages(t *testing.T, tasks ...task) string {
	t.Helper()
	dir := t.TempDir()
	for i, tk := range tasks {
		lo, hi := uint32(tk.caps), uint32(tk.caps>>32)
		core := &criucore.CoreEntry{
			Mtype: criucore.CoreEntry_X86_64.Enum(),
			ThreadCore: &criucore.ThreadCoreEntry{
				FutexRla: proto.Uint64(0), FutexRlaLen: proto.Uint32(0),
				SeccompMode: tk.seccomp.Enum(),
				Creds: &creds.CredsEntry{
					Uid: proto.Uint32(tk.uid), Gid: proto.Uint32(tk.uid), Euid: proto.Uint32(tk.uid), Egid: proto.Uint32(tk.uid),
					Suid: proto.Uint32(tk.uid), Sgid: proto.Uint32(tk.uid), Fsuid: proto.Uint32(tk.uid), Fsgid: proto.Uint32(tk.uid),
					CapInh: []uint32{0, 0}, CapPrm: []uint32{lo, hi}, CapEff: []uint32{lo, hi}, CapBnd: []uint32{lo, hi},
					Secbits: proto.Uint32(0),
				},
			},
		}
		if tk.gid != nil {
			c := core.ThreadCore.Creds
			c.Gid, c.Egid, c.Sgid, c.Fsgid = tk.gid, tk.gid, tk.gid, tk.gid
		}
		core.ThreadCore.Creds.Groups = tk.groups
		if tk.lsm != "" {
			core.ThreadCore.Creds.LsmProfile = proto.String(tk.lsm)
		}
		core.Tc = tk.tc
		if tk.noCreds {
			core.ThreadCore.Creds = nil
		}
		if tk.edit != nil {
			tk.edit(core)
		}
		f, err := os.Create(filepath.Join(dir, "core-"+string(rune('1'+i))+".img"))
		if err != nil {
			t.Fatal(err)
		}
		img := &crit.CriuImage{Magic: "CORE", Entries: []*crit.CriuEntry{{Message: core}}}
		if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	os.WriteFile(filepath.Join(dir, "pages-1.img"), []byte("memory"), 0o600)
	// In a PID namespace of their own, as spec's.
	writeImage(t, filepath.Join(dir, "inventory.img"), "INVENTORY", &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), RootIds: hostIDs()})
	for i := range tasks {
		ids := hostIDs()
		ids.PidNsId = containerIDs().PidNsId
		writeImage(t, filepath.Join(dir, "ids-"+string(rune('1'+i))+".img"), "IDS", ids)
	}
	return dir
}

func spec(uid uint32, caps []string, seccomp bool) *specs.Spec {
	s := &specs.Spec{Process: &specs.Process{User: specs.User{UID: uid, GID: uid}},
		Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.PIDNamespace}}}}
	if caps != nil {
		s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	}
	if seccomp {
		s.Linux.Seccomp = &specs.LinuxSeccomp{DefaultAction: specs.ActErrno}
	}
	return s
}

func capsOf(t *testing.T, path string) (eff, prm, inh, bnd uint64) {
	t.Helper()
	_, core, err := decodeCore(path)
	if err != nil {
		t.Fatal(err)
	}
	c := core.GetThreadCore().GetCreds()
	return words(c.CapEff), words(c.CapPrm), words(c.CapInh), words(c.CapBnd)
}

func TestNarrowsCapabilities(t *testing.T) {
	imgs := writeImages(t, task{caps: allCapsLow32}, task{caps: 1 << capChown})
	work := t.TempDir()
	res, err := Apply(imgs, work, spec(0, []string{"CAP_CHOWN"}, false), nil, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.ImagesDir == imgs || res.Tasks != 2 || res.Narrowed != 1 {
		t.Fatalf("result %+v", res)
	}
	eff, prm, inh, bnd := capsOf(t, filepath.Join(res.ImagesDir, "core-1.img"))
	if eff != 1<<capChown || prm != 1<<capChown || inh != 0 || bnd != 1<<capChown {
		t.Fatalf("narrowed caps eff=%x prm=%x inh=%x bnd=%x", eff, prm, inh, bnd)
	}
	// The shared copy is untouched; other images are the same files.
	if eff, _, _, _ := capsOf(t, filepath.Join(imgs, "core-1.img")); eff != allCapsLow32 {
		t.Fatal("the original image was modified")
	}
	a, _ := os.Stat(filepath.Join(imgs, "pages-1.img"))
	b, err := os.Stat(filepath.Join(res.ImagesDir, "pages-1.img"))
	if err != nil || !os.SameFile(a, b) {
		t.Fatalf("pages not hard-linked: %v", err)
	}
}

func TestNoCapabilitiesSpec(t *testing.T) {
	imgs := writeImages(t, task{caps: 1<<capSysAdmin | 1<<capNetAdmin})
	res, err := Apply(imgs, t.TempDir(), spec(0, nil, false), nil, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if eff, prm, inh, bnd := capsOf(t, filepath.Join(res.ImagesDir, "core-1.img")); eff|prm|inh|bnd != 0 {
		t.Fatalf("caps left: %x %x %x %x", eff, prm, inh, bnd)
	}
}

func TestFittingCheckpointIsUsedAsIs(t *testing.T) {
	imgs := writeImages(t, task{caps: 1 << capChown, seccomp: criucore.SeccompMode_filter})
	ref := runcFilter(t)
	writeSeccomp(t, imgs, &seccomp.SeccompFilter{Filter: withPrefix(ref, otherStubs[0])})
	writePstree(t, imgs, 1)
	res, err := Apply(imgs, t.TempDir(), spec(0, []string{"CAP_CHOWN", "CAP_KILL"}, true), ref, nil, false)
	if err != nil || res.ImagesDir != imgs || res.Narrowed != 0 {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestRefusals(t *testing.T) {
	cases := map[string]struct {
		task task
		spec *specs.Spec
		want string // in the reason
	}{
		"root donor, non-root spec": {task{uid: 0}, spec(1000, nil, false), "ran as root, the spec's user is 1000"},
		"no seccomp, spec needs it": {task{uid: 0, seccomp: criucore.SeccompMode_disabled}, spec(0, nil, true), "without seccomp"},
		// CRIU would then restore a creds image's uid and capabilities.
		"core image without credentials": {task{uid: 0, noCreds: true}, spec(0, nil, false), "has no credentials"},
	}
	// The filter runc installs for the spec is known, so that the donor's
	// seccomp mode is what a refusal is about.
	ref := runcFilter(t)
	for name, c := range cases {
		imgs := writeImages(t, c.task)
		writePstree(t, imgs, 1)
		_, err := Apply(imgs, t.TempDir(), c.spec, ref, nil, false)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrRefused saying %q", name, err, c.want)
		}
	}
	if _, err := Apply(t.TempDir(), t.TempDir(), spec(0, nil, false), nil, nil, false); !errors.Is(err, ErrRefused) {
		t.Errorf("no core images: got %v", err)
	}
	if _, err := Apply(writeImages(t, task{}), t.TempDir(), spec(0, []string{"CAP_NONSENSE"}, false), nil, nil, false); err == nil {
		t.Error("unknown capability in the spec: want an error")
	}
	legacy := writeImages(t, task{uid: 0})
	os.WriteFile(filepath.Join(legacy, "creds-1.img"), []byte("creds"), 0o600)
	if _, err := Apply(legacy, t.TempDir(), spec(0, nil, false), nil, nil, false); !errors.Is(err, ErrRefused) {
		t.Errorf("a separate credentials image: got %v, want ErrRefused", err)
	}
	policy := writeImages(t, task{uid: 0})
	os.WriteFile(filepath.Join(policy, "apparmor.img"), []byte("policy"), 0o600)
	if _, err := Apply(policy, t.TempDir(), spec(0, nil, false), nil, nil, false); !errors.Is(err, ErrRefused) {
		t.Errorf("AppArmor policy in the checkpoint: got %v, want ErrRefused", err)
	}
	// An entry header that claims 4 GiB: refused before anything is
	// allocated for it.
	huge := writeImages(t, task{uid: 0})
	mm := magic.LoadMagic()
	var hdr []byte
	for _, v := range []uint64{mm.ByName["IMG_COMMON"], mm.ByName["CORE"], 0xffffffff} {
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(v))
	}
	os.WriteFile(filepath.Join(huge, "core-1.img"), append(hdr, "short"...), 0o600)
	if _, err := Apply(huge, t.TempDir(), spec(0, nil, false), nil, nil, false); err == nil || !strings.Contains(err.Error(), "past the end") {
		t.Errorf("an entry past the end of its image: got %v", err)
	}
	// The magic of another kind under a core image's name.
	other := writeImages(t, task{uid: 0})
	hdr = nil
	for _, v := range []uint64{mm.ByName["IMG_COMMON"], mm.ByName["PAGEMAP"], 0} {
		hdr = binary.LittleEndian.AppendUint32(hdr, uint32(v))
	}
	os.WriteFile(filepath.Join(other, "core-1.img"), hdr, 0o600)
	if _, err := Apply(other, t.TempDir(), spec(0, nil, false), nil, nil, false); err == nil || !strings.Contains(err.Error(), "want CORE") {
		t.Errorf("a page map under a core image's name: got %v", err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "core-1.img"), []byte("garbage"), 0o600)
	if _, err := Apply(bad, t.TempDir(), spec(0, nil, false), nil, nil, false); err == nil {
		t.Error("garbage core image: want an error")
	}
}

// A zombie's core image (a task that had exited: CRIU dumps its name and
// exit code only) needs no credentials, limits or seccomp state: CRIU
// makes it exit at once.
func TestZombieTask(t *testing.T) {
	imgs := writeImages(t, task{tc: shimLimitsLeader(t)}, task{edit: func(c *criucore.CoreEntry) {
		c.ThreadCore = nil
		c.Tc = &criucore.TaskCoreEntry{TaskState: proto.Uint32(taskDead), ExitCode: proto.Uint32(0), Personality: proto.Uint32(0),
			Flags: proto.Uint32(0), BlkSigset: proto.Uint64(0), Comm: proto.String("sleep")}
	}})
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); err != nil {
		t.Fatalf("a zombie: %v", err)
	}
	// A live task without credentials is still refused.
	imgs = writeImages(t, task{tc: shimLimitsLeader(t)}, task{noCreds: true, tc: shimLimitsLeader(t)})
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); !errors.Is(err, ErrRefused) {
		t.Fatalf("a live task without credentials: %v, want a refusal", err)
	}
}

// An ID-mapped mount is refused: CRIU binds its source unmapped.
func TestIDMappedMountsRefused(t *testing.T) {
	for _, c := range []struct {
		name   string
		mount  specs.Mount
		refuse bool
	}{
		{"a plain bind", specs.Mount{Destination: "/data", Type: "bind", Source: "/srv", Options: []string{"rbind", "rw"}}, false},
		{"its own maps", specs.Mount{Destination: "/data", Type: "bind", Source: "/srv", Options: []string{"rbind"},
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}}}, true},
		{"runc's idmap option", specs.Mount{Destination: "/data", Type: "bind", Source: "/srv", Options: []string{"rbind", "idmap"}}, true},
		{"runc's ridmap option", specs.Mount{Destination: "/data", Type: "bind", Source: "/srv", Options: []string{"rbind", "ridmap"}}, true},
	} {
		s := spec(0, nil, false)
		s.Mounts = []specs.Mount{c.mount}
		if err := checkIDMappedMounts(s); errors.Is(err, ErrRefused) != c.refuse {
			t.Errorf("%s: got %v", c.name, err)
		}
	}
}

// Without a PID namespace of its own a clone gets the checkpoint's PIDs in
// the node's, which only CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN could
// choose.
func TestNodePIDsNeedTheirCapabilities(t *testing.T) {
	for _, c := range []struct {
		name   string
		caps   []string
		userns bool
		refuse bool
	}{
		{"no capabilities", nil, false, true},
		{"the default ones", []string{"CAP_CHOWN", "CAP_KILL", "CAP_SETUID", "CAP_SETGID"}, false, true},
		{"CAP_CHECKPOINT_RESTORE", []string{"CAP_CHECKPOINT_RESTORE"}, false, false},
		{"CAP_SYS_ADMIN", []string{"CAP_SYS_ADMIN"}, false, false},
		{"CAP_SYS_ADMIN in a user namespace", []string{"CAP_SYS_ADMIN"}, true, true},
	} {
		s := spec(1000, c.caps, false)
		s.Linux.Namespaces = nil
		if c.userns {
			s.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.UserNamespace}}
		}
		m, err := specMasks(s)
		if err != nil {
			t.Fatal(err)
		}
		err = checkNodePIDs(s, m)
		if c.refuse != errors.Is(err, ErrRefused) || c.refuse && !strings.Contains(err.Error(), "the checkpoint's PIDs in the node's") {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	if err := checkNodePIDs(spec(1000, nil, false), masks{}); err != nil {
		t.Errorf("a PID namespace of its own: %v", err)
	}
	// Joined by path: the node's, or another (a pod's).
	joined := spec(1000, nil, false)
	joined.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.PIDNamespace, Path: "/proc/self/ns/pid"}}
	if err := checkNodePIDs(joined, masks{}); !errors.Is(err, ErrRefused) {
		t.Errorf("the node's, joined by path: %v", err)
	}
	nodePIDNS = "/proc/self/ns/net" // stands for another PID namespace
	defer func() { nodePIDNS = "/proc/self/ns/pid" }()
	if err := checkNodePIDs(joined, masks{}); err != nil {
		t.Errorf("another, joined by path: %v", err)
	}
	joined.Linux.Namespaces[0].Path = "/proc/self/ns/missing"
	if err := checkNodePIDs(joined, masks{}); !errors.Is(err, ErrRefused) {
		t.Errorf("a path that cannot be read: %v", err)
	}
}

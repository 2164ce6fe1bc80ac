package confine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	skunix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	timerimg "github.com/checkpoint-restore/go-criu/v7/crit/images/timer"
	ttyimg "github.com/checkpoint-restore/go-criu/v7/crit/images/tty"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func TestDumpRunID(t *testing.T) {
	for _, c := range []struct {
		name   string
		id     []byte // nil: none
		refuse bool
	}{
		{name: "none (an older CRIU's image)"},
		{name: "CRIU's", id: []byte("0c5e2f4a-7d1b-4c3e-9f60-1a2b3c4d5e6f")},
		{name: "a command after it", id: []byte("x;flush table ip nat"), refuse: true},
		{name: "a UUID with more after it", id: []byte("0c5e2f4a-7d1b-4c3e-9f60-1a2b3c4d5e6f x"), refuse: true},
	} {
		dir := t.TempDir()
		inv := &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), RootIds: hostIDs()}
		if c.id != nil {
			inv.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 13, protowire.BytesType), c.id))
		}
		writeImage(t, filepath.Join(dir, "inventory.img"), "INVENTORY", inv)
		err := checkInventory(dir, []string{"inventory.img"})
		if (err != nil) != c.refuse {
			t.Errorf("%s: %v, want refused %v", c.name, err, c.refuse)
		}
	}
}

func TestTTYFiles(t *testing.T) {
	devpts := mount(5, 1, mnt.Fstype_DEVPTS, "/", "/dev/pts", 0)
	devTmpfs := mount(4, 1, mnt.Fstype_TMPFS, "/", "/dev", 0)
	root := mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)
	mounts := []*mnt.MntEntry{root, devTmpfs, devpts}
	tty := func(name string, mntID int32, mode uint32) map[uint32]*regfile.RegFileEntry {
		f := regFile(9, name).Reg
		f.Mode, f.MntId = proto.Uint32(mode), proto.Int32(mntID)
		return map[uint32]*regfile.RegFileEntry{9: f}
	}
	for _, c := range []struct {
		name   string
		regs   map[uint32]*regfile.RegFileEntry
		refuse string
	}{
		{name: "a pty", regs: tty("/dev/pts/3", 5, 0o20620)},
		{name: "the multiplexer", regs: tty("/dev/pts/ptmx", 5, 0o20666)},
		{name: "/dev/ptmx on /dev's tmpfs (a link there could lead anywhere)", regs: tty("/dev/ptmx", 4, 0o20666), refuse: "not a pseudo-terminal"},
		{name: "a pty name on another mount", regs: tty("/dev/pts/3", 1, 0o20620), refuse: "not a pseudo-terminal"},
		{name: "a program", regs: tty("/usr/bin/python3", 1, 0o100755), refuse: "not a pseudo-terminal"},
		{name: "a pty made setuid", regs: tty("/dev/pts/3", 5, 0o24755), refuse: "mode"},
		{name: "a pty through ..", regs: tty("/dev/pts/../../etc/passwd", 5, 0o20620), refuse: "not a pseudo-terminal"},
		{name: "a file files.img does not have", regs: nil, refuse: "does not have"},
	} {
		err := checkTTYs([]uint32{9}, c.regs, mounts)
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
	// The file a TTY is opened by, as CRIU finds it: regf_id's, or the
	// TTY's own id's without one.
	for _, c := range []struct {
		regf *uint32
		want uint32
	}{{regf: proto.Uint32(9), want: 9}, {want: 7}} {
		checks := fileChecks{}
		fe := &fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: proto.Uint32(7), Tty: &ttyimg.TtyFileEntry{
			Id: proto.Uint32(7), TtyInfoId: proto.Uint32(1), RegfId: c.regf, Flags: proto.Uint32(0), Fown: owner()}}
		if err := checks.check(fe); err != nil || len(checks.ttys) != 1 || checks.ttys[0] != c.want {
			t.Errorf("regf_id %v: %v %v, want file %d", c.regf, checks.ttys, err, c.want)
		}
	}
}

func TestConntrackEmptied(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "netns-ct-10.img"), []byte("a netlink message"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "netns-exp-10.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	names := []string{"netns-ct-10.img", "netns-exp-10.img"}
	for _, c := range []struct {
		name      string
		caps      []string
		capsCount bool
		emptied   bool
	}{
		{name: "without CAP_NET_ADMIN", capsCount: true, emptied: true},
		{name: "with CAP_NET_ADMIN", caps: []string{"CAP_NET_ADMIN"}, capsCount: true},
		{name: "with CAP_NET_ADMIN that does not count there", caps: []string{"CAP_NET_ADMIN"}, emptied: true},
	} {
		s := spec(0, c.caps, false)
		m, err := specMasks(s)
		if err != nil {
			t.Fatal(err)
		}
		out, err := emptyConntrack(dir, names, s, m, c.capsCount)
		if err != nil {
			t.Fatal(err)
		}
		img, emptied := out["netns-ct-10.img"]
		if emptied != c.emptied || img != nil || len(out) > 1 {
			t.Errorf("%s: %v, want netns-ct-10.img emptied %v (and the empty one left)", c.name, out, c.emptied)
		}
		if !emptied {
			continue
		}
		work := t.TempDir()
		if err := populate(dir, work, out); err != nil {
			t.Fatal(err)
		}
		if fi, err := os.Stat(filepath.Join(work, "netns-ct-10.img")); err != nil || fi.Size() != 0 {
			t.Errorf("%s: the rewritten image: %v %v, want an empty file", c.name, fi, err)
		}
	}
}

func TestAlarmTimers(t *testing.T) {
	core := func(clock uint32) *criucore.CoreEntry {
		z64, z32 := proto.Uint64(0), proto.Uint32(0)
		it := func() *timerimg.ItimerEntry {
			return &timerimg.ItimerEntry{Isec: z64, Iusec: z64, Vsec: z64, Vusec: z64}
		}
		return &criucore.CoreEntry{Tc: &criucore.TaskCoreEntry{Timers: &timerimg.TaskTimersEntry{Real: it(), Virt: it(), Prof: it(),
			Posix: []*timerimg.PosixTimerEntry{{ItId: z32, ClockId: proto.Uint32(clock), SiSigno: proto.Uint32(14), ItSigevNotify: z32,
				SivalPtr: z64, Overrun: z32, Isec: z64, Insec: z64, Vsec: z64, Vnsec: z64}}}}}
	}
	for _, c := range []struct {
		name  string
		clock uint32
		caps  []string
		ok    bool
	}{
		{name: "a monotonic timer", clock: unix.CLOCK_MONOTONIC, ok: true},
		{name: "a boottime alarm", clock: unix.CLOCK_BOOTTIME_ALARM},
		{name: "a realtime alarm", clock: unix.CLOCK_REALTIME_ALARM},
		{name: "a realtime alarm, CAP_WAKE_ALARM", clock: unix.CLOCK_REALTIME_ALARM, caps: []string{"CAP_WAKE_ALARM"}, ok: true},
	} {
		s := spec(0, c.caps, false)
		m, err := specMasks(s)
		if err != nil {
			t.Fatal(err)
		}
		caps, nodeCaps := grantedCaps(s, m)
		if err := checkAlarmTimers(core(c.clock), "core-1.img", nodeCaps && caps&(1<<unix.CAP_WAKE_ALARM) != 0); (err == nil) != c.ok {
			t.Errorf("%s: %v, want allowed %v", c.name, err, c.ok)
		}
	}
}

func TestDescriptors(t *testing.T) {
	for _, c := range []struct {
		json   string
		refuse bool
	}{
		{json: `["/dev/null","pipe:[123]","pipe:[124]"]`},
		{json: `["/dev/null","pipe:[123]","pipe:[124]","pipe:[125]"]`, refuse: true},
		{json: `{"not": "a list"}`, refuse: true},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "descriptors.json"), []byte(c.json), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := checkDescriptors(dir, []string{"descriptors.json"}); (err != nil) != c.refuse {
			t.Errorf("%s: %v, want refused %v", c.json, err, c.refuse)
		}
	}
}

func TestUnixPeers(t *testing.T) {
	usk := func(id, ino, peer, uflags uint32, name string) *skunix.UnixSkEntry {
		return &skunix.UnixSkEntry{Id: proto.Uint32(id), Ino: proto.Uint32(ino), Type: proto.Uint32(unix.SOCK_STREAM), State: proto.Uint32(1),
			Flags: proto.Uint32(0), Uflags: proto.Uint32(uflags), Backlog: proto.Uint32(0), Peer: proto.Uint32(peer), Fown: owner(),
			Opts: sockOptions(), Name: []byte(name)}
	}
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "fdinfo-7.img"), "FDINFO",
		&fdinfo.FdinfoEntry{Id: proto.Uint32(1), Flags: proto.Uint32(0), Type: fdinfo.FdTypes_UNIXSK.Enum(), Fd: proto.Uint32(3)},
		&fdinfo.FdinfoEntry{Id: proto.Uint32(2), Flags: proto.Uint32(0), Type: fdinfo.FdTypes_UNIXSK.Enum(), Fd: proto.Uint32(4)})
	names := []string{"fdinfo-7.img"}
	for _, c := range []struct {
		name    string
		sockets []*skunix.UnixSkEntry
		uid     uint32
		caps    []string
		refuse  bool
	}{
		{name: "a connection within the checkpoint", sockets: []*skunix.UnixSkEntry{usk(1, 10, 11, 0, ""), usk(2, 11, 10, 0, "/tmp/app.sock")}, uid: 1000},
		{name: "a peer flagged external", sockets: []*skunix.UnixSkEntry{usk(1, 10, 11, 0, ""), usk(3, 11, 0, usockExtern, "/run/docker.sock")}, uid: 1000, refuse: true},
		{name: "a peer no task holds", sockets: []*skunix.UnixSkEntry{usk(1, 10, 11, 0, ""), usk(3, 11, 0, 0, "/run/docker.sock")}, uid: 1000, refuse: true},
		{name: "a peer no task holds, for root without CAP_DAC_OVERRIDE", sockets: []*skunix.UnixSkEntry{usk(1, 10, 11, 0, ""), usk(3, 11, 0, 0, "/run/docker.sock")}, refuse: true},
		{name: "a peer no task holds, for root with CAP_DAC_OVERRIDE", sockets: []*skunix.UnixSkEntry{usk(1, 10, 11, 0, ""), usk(3, 11, 0, 0, "/run/docker.sock")}, caps: []string{"CAP_DAC_OVERRIDE"}},
	} {
		s := spec(c.uid, c.caps, false)
		m, err := specMasks(s)
		if err != nil {
			t.Fatal(err)
		}
		caps, nodeCaps := grantedCaps(s, m)
		checks := fileChecks{uid: c.uid, caps: caps, hostCaps: nodeCaps, unix: c.sockets}
		if err := checks.unixPeers(dir, names); (err != nil) != c.refuse {
			t.Errorf("%s: %v, want refused %v", c.name, err, c.refuse)
		}
	}
}

package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	fifopb "github.com/checkpoint-restore/go-criu/v7/crit/images/fifo"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	bpfmapfile "github.com/checkpoint-restore/go-criu/v7/crit/images/bpfmap-file"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fh"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fown"
	fsnotify "github.com/checkpoint-restore/go-criu/v7/crit/images/fsnotify"
	ghostfile "github.com/checkpoint-restore/go-criu/v7/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	nsimg "github.com/checkpoint-restore/go-criu/v7/crit/images/ns"
	packetsock "github.com/checkpoint-restore/go-criu/v7/crit/images/packet-sock"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	remapfilepath "github.com/checkpoint-restore/go-criu/v7/crit/images/remap-file-path"
	skinet "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-inet"
	sknetlink "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-netlink"
	skopts "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-opts"
	skunix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/timerfd"
	ttyimg "github.com/checkpoint-restore/go-criu/v7/crit/images/tty"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/tun"
	"github.com/checkpoint-restore/go-criu/v7/magic"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func owner() *fown.FownEntry {
	return &fown.FownEntry{Uid: proto.Uint32(0), Euid: proto.Uint32(0), Signum: proto.Uint32(0), PidType: proto.Uint32(0), Pid: proto.Uint32(0)}
}

func sockOptions() *skopts.SkOptsEntry {
	z := proto.Uint64(0)
	return &skopts.SkOptsEntry{SoSndbuf: proto.Uint32(212992), SoRcvbuf: proto.Uint32(212992), SoSndTmoSec: z, SoSndTmoUsec: z, SoRcvTmoSec: z, SoRcvTmoUsec: z}
}

func regFile(id uint32, name string) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_REG.Enum(), Id: proto.Uint32(id), Reg: &regfile.RegFileEntry{
		Id: proto.Uint32(id), Flags: proto.Uint32(0), Pos: proto.Uint64(0), Fown: owner(), Name: proto.String(name)}}
}

func inetSocket(id uint32, typ, port uint32) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_INETSK.Enum(), Id: proto.Uint32(id), Isk: &skinet.InetSkEntry{
		Id: proto.Uint32(id), Ino: proto.Uint32(id), Family: proto.Uint32(unix.AF_INET), Type: proto.Uint32(typ),
		Proto: proto.Uint32(unix.IPPROTO_TCP), State: proto.Uint32(10), SrcPort: proto.Uint32(port), DstPort: proto.Uint32(0),
		Flags: proto.Uint32(0), Backlog: proto.Uint32(128), Fown: owner(), Opts: sockOptions()}}
}

// netlinkSocket is a bound netlink socket in the groups of words.
func netlinkSocket(protocol uint32, words ...uint32) *fdinfo.FileEntry {
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_NETLINKSK.Enum(), Id: proto.Uint32(1), Nlsk: &sknetlink.NetlinkSkEntry{
		Id: proto.Uint32(1), Ino: proto.Uint32(1), Protocol: proto.Uint32(protocol), State: proto.Uint32(0), Flags: proto.Uint32(0),
		Portid: proto.Uint32(4242), Groups: words, DstPortid: proto.Uint32(0), DstGroup: proto.Uint32(0), Fown: owner(), Opts: sockOptions()}}
}

// inotifyWatch is an inotify group watching path ("": none dumped).
func inotifyWatch(path string) *fdinfo.FileEntry {
	handle := &fh.FhEntry{Bytes: proto.Uint32(8), Type: proto.Uint32(1), Handle: []uint64{7}}
	if path != "" {
		handle.Path = proto.String(path)
	}
	return &fdinfo.FileEntry{Type: fdinfo.FdTypes_INOTIFY.Enum(), Id: proto.Uint32(1), Ify: &fsnotify.InotifyFileEntry{
		Id: proto.Uint32(1), Flags: proto.Uint32(0), Fown: owner(), Wd: []*fsnotify.InotifyWdEntry{{
			Id: proto.Uint32(1), IIno: proto.Uint64(2), Mask: proto.Uint32(2), IgnoredMask: proto.Uint32(0), SDev: proto.Uint32(3), Wd: proto.Uint32(1), FHandle: handle}}}}
}

// withFiles adds files.img with entries to an images directory.
func withFiles(t *testing.T, dir string, entries ...*fdinfo.FileEntry) {
	t.Helper()
	msgs := make([]proto.Message, len(entries))
	for i, e := range entries {
		msgs[i] = e
	}
	writeImage(t, filepath.Join(dir, "files.img"), "FILES", msgs...)
}

func TestFilesTheSpecGrants(t *testing.T) {
	hostPorts := func(start uint32) hostState {
		h := plainHost
		h.netSysctl = func(path, name string) (string, error) {
			switch {
			case path != "":
				return "", errors.New("not the node's network namespace")
			case name == "net.ipv4.ip_unprivileged_port_start":
				return strconv.Itoa(int(start)), nil
			}
			return nodeSysctls(name)
		}
		return h
	}
	for _, c := range []struct {
		name   string
		files  []*fdinfo.FileEntry
		caps   []string
		host   hostState
		specs  func(*specs.Spec)
		refuse string // "" if restored
	}{
		{name: "a canonical name", files: []*fdinfo.FileEntry{regFile(1, "/tmp/app.log")}},
		{name: "a name that climbs out of its mount", files: []*fdinfo.FileEntry{regFile(1, "/../../../var/tmp/x")}, refuse: "not a canonical absolute path"},
		{name: "a relative name", files: []*fdinfo.FileEntry{regFile(1, "tmp/x")}, refuse: "not a canonical"},
		{name: "a name with a dot", files: []*fdinfo.FileEntry{regFile(1, "/tmp/./x")}, refuse: "not a canonical"},
		{name: "a listening socket on a high port", files: []*fdinfo.FileEntry{inetSocket(1, unix.SOCK_STREAM, 8080)}, host: hostPorts(1024)},
		{name: "a privileged port without CAP_NET_BIND_SERVICE", files: []*fdinfo.FileEntry{inetSocket(1, unix.SOCK_STREAM, 80)},
			host: hostPorts(1024), refuse: "port 80"},
		{name: "a privileged port with CAP_NET_BIND_SERVICE", files: []*fdinfo.FileEntry{inetSocket(1, unix.SOCK_STREAM, 80)},
			caps: []string{"CAP_NET_BIND_SERVICE"}, host: hostPorts(1024)},
		{name: "port 80 where every port is unprivileged", files: []*fdinfo.FileEntry{inetSocket(1, unix.SOCK_STREAM, 80)}, host: hostPorts(0)},
		{name: "a raw socket without CAP_NET_RAW", files: []*fdinfo.FileEntry{inetSocket(1, unix.SOCK_RAW, 0)}, refuse: "raw socket"},
		{name: "a raw socket with CAP_NET_RAW", files: []*fdinfo.FileEntry{inetSocket(1, unix.SOCK_RAW, 0)}, caps: []string{"CAP_NET_RAW"}},
		{name: "a fanotify group", files: []*fdinfo.FileEntry{{Type: fdinfo.FdTypes_FANOTIFY.Enum(), Id: proto.Uint32(1),
			Ffy: &fsnotify.FanotifyFileEntry{Id: proto.Uint32(1), Flags: proto.Uint32(0), Fown: owner(), Faflags: proto.Uint32(0), Evflags: proto.Uint32(0)}}},
			caps: []string{"CAP_NET_ADMIN"}, refuse: "fanotify"},
		{name: "an inotify watch by path", files: []*fdinfo.FileEntry{inotifyWatch("/tmp")}},
		{name: "an inotify watch by file handle alone", files: []*fdinfo.FileEntry{inotifyWatch("")}, refuse: "without a path"},
		{name: "an inotify watch through ..", files: []*fdinfo.FileEntry{inotifyWatch("/tmp/../etc")}, refuse: "not a canonical"},
		{name: "an alarm timer", files: []*fdinfo.FileEntry{{Type: fdinfo.FdTypes_TIMERFD.Enum(), Id: proto.Uint32(1),
			Tfd: &timerfd.TimerfdEntry{Id: proto.Uint32(1), Flags: proto.Uint32(0), Fown: owner(), Clockid: proto.Uint32(unix.CLOCK_BOOTTIME_ALARM),
				Ticks: proto.Uint64(0), SettimeFlags: proto.Uint32(0), Vsec: proto.Uint64(0), Vnsec: proto.Uint64(0), Isec: proto.Uint64(0), Insec: proto.Uint64(0)}}},
			refuse: "CAP_WAKE_ALARM"},
	} {
		t.Run(c.name, func(t *testing.T) {
			imgs := writeImages(t, task{tc: shimLimitsLeader(t)})
			withFiles(t, imgs, c.files...)
			s := spec(0, c.caps, false)
			if c.specs != nil {
				c.specs(s)
			}
			host := c.host
			if host.netSysctl == nil {
				host = plainHost
			}
			_, err := apply(imgs, t.TempDir(), s, host, onHost)
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

// The capability checks of each kind of file, on the entries themselves.
func TestFileCapabilities(t *testing.T) {
	packet := &fdinfo.FileEntry{Type: fdinfo.FdTypes_PACKETSK.Enum(), Psk: &packetsock.PacketSockEntry{Opts: sockOptions()}}
	tunDev := &fdinfo.FileEntry{Type: fdinfo.FdTypes_TUNF.Enum(), Tunf: &tun.TunfileEntry{}}
	bpf := &fdinfo.FileEntry{Type: fdinfo.FdTypes_BPFMAP.Enum(), Bpf: &bpfmapfile.BpfmapFileEntry{}}
	marked := inetSocket(1, unix.SOCK_STREAM, 0)
	marked.Isk.Opts.SoMark = proto.Uint32(7)
	urgent := inetSocket(1, unix.SOCK_DGRAM, 0)
	urgent.Isk.Opts.SoPriority = proto.Uint32(7)
	// As CRIU dumps them: a raw socket's port is its protocol, a ping
	// socket's its echo id.
	rawICMP := inetSocket(1, unix.SOCK_RAW, 1)
	rawICMP.Isk.Proto = proto.Uint32(unix.IPPROTO_ICMP)
	ping := inetSocket(1, unix.SOCK_DGRAM, 7)
	ping.Isk.Proto = proto.Uint32(unix.IPPROTO_ICMP)
	links := netlinkSocket(unix.NETLINK_ROUTE, 1<<(unix.RTNLGRP_LINK-1)|1<<(unix.RTNLGRP_IPV4_ROUTE-1))
	mroute := netlinkSocket(unix.NETLINK_ROUTE, 1<<(unix.RTNLGRP_LINK-1)|1<<(rtnlgrpIPv4MrouteR-1))
	conntrack := netlinkSocket(unix.NETLINK_NETFILTER, 1)
	uevents := netlinkSocket(unix.NETLINK_KOBJECT_UEVENT, 1)
	audit := netlinkSocket(unix.NETLINK_AUDIT, 1)
	genlCtrl := netlinkSocket(unix.NETLINK_GENERIC, 1<<(genlCtrlNotify-1))
	genlFamily := netlinkSocket(unix.NETLINK_GENERIC, 1<<8)
	beyond32 := netlinkSocket(unix.NETLINK_ROUTE, 0, 1)
	usersock := netlinkSocket(unix.NETLINK_USERSOCK, 1)
	procEvents := netlinkSocket(unix.NETLINK_CONNECTOR, 1)
	xfrm := netlinkSocket(unix.NETLINK_XFRM, 1)
	mroute6 := netlinkSocket(unix.NETLINK_ROUTE, 1<<(rtnlgrpIPv6MrouteR-1))
	markedNetlink := netlinkSocket(unix.NETLINK_ROUTE, 1)
	markedNetlink.Nlsk.Opts.SoMark = proto.Uint32(7)
	toGroup33 := netlinkSocket(unix.NETLINK_USERSOCK, 0)
	toGroup33.Nlsk.State, toGroup33.Nlsk.DstGroup = proto.Uint32(netlinkConnected), proto.Uint32(33)
	signalsAs := func(f *fdinfo.FileEntry, uid, euid uint32) *fdinfo.FileEntry {
		f = proto.Clone(f).(*fdinfo.FileEntry)
		k, err := kindOf(f)
		if err != nil || k.owner == nil {
			t.Fatalf("%v: no owner (%v)", f, err)
		}
		o := k.owner
		o.Pid, o.Uid, o.Euid, o.Signum = proto.Uint32(1), proto.Uint32(uid), proto.Uint32(euid), proto.Uint32(9)
		return f
	}
	inNetns := func(f *fdinfo.FileEntry, id uint32) *fdinfo.FileEntry {
		f = proto.Clone(f).(*fdinfo.FileEntry)
		switch {
		case f.Isk != nil:
			f.Isk.NsId = proto.Uint32(id)
		case f.Nlsk != nil:
			f.Nlsk.NsId = proto.Uint32(id)
		}
		return f
	}
	withBufs := func(f *fdinfo.FileEntry, snd, rcv uint32) *fdinfo.FileEntry {
		f = proto.Clone(f).(*fdinfo.FileEntry)
		o := f.GetIsk().GetOpts()
		if o == nil {
			o = f.GetNlsk().GetOpts()
		}
		o.SoSndbuf, o.SoRcvbuf = proto.Uint32(snd), proto.Uint32(rcv)
		return f
	}
	tcp := inetSocket(1, unix.SOCK_STREAM, 8080)
	connection := inetSocket(1, unix.SOCK_STREAM, 41000)
	connection.Isk.DstPort, connection.Isk.State = proto.Uint32(5432), proto.Uint32(1) // TCP_ESTABLISHED
	udp := inetSocket(1, unix.SOCK_DGRAM, 8080)
	udp.Isk.Proto = proto.Uint32(unix.IPPROTO_UDP)
	toKernel := netlinkSocket(unix.NETLINK_ROUTE, 0)
	toKernel.Nlsk.State = proto.Uint32(netlinkConnected)
	toGroup := netlinkSocket(unix.NETLINK_ROUTE, 0)
	toGroup.Nlsk.State, toGroup.Nlsk.DstGroup = proto.Uint32(netlinkConnected), proto.Uint32(unix.RTNLGRP_LINK)
	toPeer := netlinkSocket(unix.NETLINK_USERSOCK, 0)
	toPeer.Nlsk.State, toPeer.Nlsk.DstPortid = proto.Uint32(netlinkConnected), proto.Uint32(77)
	toPeerGroup := netlinkSocket(unix.NETLINK_USERSOCK, 0)
	toPeerGroup.Nlsk.State, toPeerGroup.Nlsk.DstPortid, toPeerGroup.Nlsk.DstGroup = proto.Uint32(netlinkConnected), proto.Uint32(77), proto.Uint32(3)
	for _, c := range []struct {
		name     string
		file     *fdinfo.FileEntry
		caps     []string
		uid      uint32
		repair   bool // the restore keeps established TCP connections
		userns   bool // and the node's network namespace
		refused  bool
		newNetns bool
	}{
		{name: "packet socket", file: packet, refused: true},
		{name: "packet socket, CAP_NET_RAW", file: packet, caps: []string{"CAP_NET_RAW"}},
		{name: "packet socket, CAP_NET_RAW in a user namespace, the node's network", file: packet, caps: []string{"CAP_NET_RAW"}, userns: true, refused: true},
		{name: "packet socket, CAP_NET_RAW in a user namespace, its own network", file: packet, caps: []string{"CAP_NET_RAW"}, userns: true, newNetns: true},
		{name: "TUN device", file: tunDev, caps: []string{"CAP_NET_RAW"}, refused: true},
		{name: "TUN device, CAP_NET_ADMIN", file: tunDev, caps: []string{"CAP_NET_ADMIN"}},
		{name: "BPF map", file: bpf, caps: []string{"CAP_NET_ADMIN"}, refused: true},
		{name: "BPF map, CAP_BPF", file: bpf, caps: []string{"CAP_BPF"}},
		{name: "BPF map, CAP_SYS_ADMIN", file: bpf, caps: []string{"CAP_SYS_ADMIN"}},
		{name: "BPF map, CAP_BPF in a user namespace", file: bpf, caps: []string{"CAP_BPF"}, userns: true, newNetns: true, refused: true},
		{name: "a socket with a mark", file: marked, refused: true},
		{name: "a socket with a mark, CAP_NET_ADMIN", file: marked, caps: []string{"CAP_NET_ADMIN"}},
		{name: "a raw socket's protocol is no port", file: rawICMP, caps: []string{"CAP_NET_RAW"}},
		{name: "a ping socket's id is no port", file: ping},
		{name: "a socket with a mark, CAP_NET_RAW (not before 5.17)", file: marked, caps: []string{"CAP_NET_RAW"}, refused: true},
		{name: "priority 7", file: urgent, refused: true},
		{name: "priority 7, CAP_NET_RAW (not before 6.x)", file: urgent, caps: []string{"CAP_NET_RAW"}, refused: true},
		{name: "priority 7, CAP_NET_ADMIN", file: urgent, caps: []string{"CAP_NET_ADMIN"}},
		{name: "a file signalling as root, for root", file: signalsAs(regFile(1, "/tmp/x"), 0, 0)},
		{name: "a file signalling as root, for a user", file: signalsAs(regFile(1, "/tmp/x"), 0, 0), uid: 1000, refused: true},
		{name: "a file signalling with root's euid, for a user", file: signalsAs(regFile(1, "/tmp/x"), 1000, 0), uid: 1000, refused: true},
		{name: "a file signalling with root's uid, for a user", file: signalsAs(regFile(1, "/tmp/x"), 0, 1000), uid: 1000, refused: true},
		{name: "a file signalling as another user a task runs as", file: signalsAs(regFile(1, "/tmp/x"), 1001, 1001), uid: 1000},
		{name: "a file signalling as the user", file: signalsAs(regFile(1, "/tmp/x"), 1000, 1000), uid: 1000},
		{name: "a file signalling as root, for a user with CAP_SETUID", file: signalsAs(regFile(1, "/tmp/x"), 0, 0), uid: 1000, caps: []string{"CAP_SETUID"}},
		{name: "a file signalling as root, for a user with CAP_SETUID in a user namespace", file: signalsAs(regFile(1, "/tmp/x"), 0, 0), uid: 1000, caps: []string{"CAP_SETUID"}, userns: true},
		{name: "a socket signalling as root, for a user", file: signalsAs(inetSocket(1, unix.SOCK_STREAM, 8080), 0, 0), uid: 1000, refused: true},
		{name: "a netlink socket signalling as root, for a user", file: signalsAs(links, 0, 0), uid: 1000, refused: true},
		{name: "an inotify group signalling as root, for a user", file: signalsAs(inotifyWatch("/tmp"), 0, 0), uid: 1000, refused: true},
		{name: "a socket in the tasks' network namespace", file: inNetns(inetSocket(1, unix.SOCK_STREAM, 8080), 10)},
		{name: "a socket without a network namespace id (the tasks')", file: inNetns(inetSocket(1, unix.SOCK_STREAM, 8080), 0)},
		{name: "a socket in another network namespace", file: inNetns(inetSocket(1, unix.SOCK_STREAM, 8080), 11), refused: true},
		{name: "a netlink socket in another network namespace", file: inNetns(links, 11), refused: true},
		{name: "an established connection, shut down (tcp-close)", file: connection},
		{name: "an established connection, rebuilt (tcp-established)", file: connection, repair: true, refused: true},
		{name: "an established connection, rebuilt, CAP_NET_ADMIN", file: connection, repair: true, caps: []string{"CAP_NET_ADMIN"}},
		{name: "a listening socket, tcp-established", file: tcp, repair: true},
		{name: "TCP, autotuned to tcp_wmem's and tcp_rmem's largest", file: withBufs(tcp, 4194304, 6291456)},
		{name: "TCP, a receive buffer above tcp_rmem's largest", file: withBufs(tcp, 4194304, 6291457), refused: true},
		{name: "TCP, a 1 GiB send buffer", file: withBufs(tcp, 1<<30, 131072), refused: true},
		{name: "TCP, a 1 GiB send buffer, CAP_NET_ADMIN", file: withBufs(tcp, 1<<30, 131072), caps: []string{"CAP_NET_ADMIN"}},
		{name: "TCP, a 1 GiB send buffer, CAP_NET_ADMIN in a user namespace", file: withBufs(tcp, 1<<30, 131072), caps: []string{"CAP_NET_ADMIN"}, userns: true, newNetns: true, refused: true},
		{name: "UDP, twice rmem_max", file: withBufs(udp, 212992, 425984)},
		{name: "UDP, a receive buffer of TCP's size", file: withBufs(udp, 212992, 6291456), refused: true},
		{name: "netlink, a 64 MiB receive buffer", file: withBufs(links, 212992, 64<<20), refused: true},
		{name: "netlink route, link and route groups", file: links},
		{name: "netlink route, a multicast routing group", file: mroute, refused: true},
		{name: "netlink route, a multicast routing group, CAP_NET_ADMIN", file: mroute, caps: []string{"CAP_NET_ADMIN"}},
		{name: "netlink route, a multicast routing group, CAP_NET_ADMIN in a user namespace, the node's network", file: mroute, caps: []string{"CAP_NET_ADMIN"}, userns: true, refused: true},
		{name: "netlink route, a free group in the second word (CRIU fails on it)", file: beyond32, caps: []string{"CAP_NET_ADMIN"}, refused: true},
		{name: "netlink usersock, a group", file: usersock, refused: true},
		{name: "netlink connector, process events", file: procEvents, refused: true},
		{name: "netlink connector, process events, CAP_NET_ADMIN", file: procEvents, caps: []string{"CAP_NET_ADMIN"}},
		{name: "netlink xfrm, a group", file: xfrm, refused: true},
		{name: "netlink route, group 31", file: mroute6, refused: true},
		{name: "netlink route, group 31, CAP_NET_ADMIN in a user namespace, its own network", file: mroute6, caps: []string{"CAP_NET_ADMIN"}, userns: true, newNetns: true},
		{name: "netlink route, a mark", file: markedNetlink, refused: true},
		{name: "netlink usersock, connected to group 33", file: toGroup33, caps: []string{"CAP_NET_ADMIN"}, refused: true},
		{name: "netfilter events", file: conntrack, caps: []string{"CAP_NET_RAW"}, refused: true},
		{name: "netfilter events, CAP_NET_ADMIN", file: conntrack, caps: []string{"CAP_NET_ADMIN"}},
		{name: "kobject uevents", file: uevents},
		{name: "audit events, CAP_NET_ADMIN", file: audit, caps: []string{"CAP_NET_ADMIN"}, refused: true},
		{name: "audit events, CAP_AUDIT_READ", file: audit, caps: []string{"CAP_AUDIT_READ"}},
		{name: "audit events, CAP_AUDIT_READ in a user namespace", file: audit, caps: []string{"CAP_AUDIT_READ"}, userns: true, newNetns: true, refused: true},
		{name: "generic netlink, the controller's group", file: genlCtrl},
		{name: "generic netlink, a family's group, CAP_NET_ADMIN", file: genlFamily, caps: []string{"CAP_NET_ADMIN"}, refused: true},
		{name: "generic netlink, a family's group, CAP_NET_ADMIN and CAP_SYS_ADMIN", file: genlFamily, caps: []string{"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}},
		{name: "netlink route, connected to the kernel (CRIU would make it group 32)", file: toKernel, caps: []string{"CAP_NET_ADMIN"}, refused: true},
		{name: "netlink route, connected to a group", file: toGroup, refused: true},
		{name: "netlink route, connected to a group, CAP_NET_ADMIN", file: toGroup, caps: []string{"CAP_NET_ADMIN"}},
		{name: "netlink route, connected to a group, CAP_NET_ADMIN in a user namespace, the node's network", file: toGroup, caps: []string{"CAP_NET_ADMIN"}, userns: true, refused: true},
		{name: "netlink route, connected to a group, CAP_NET_ADMIN in a user namespace, its own network", file: toGroup, caps: []string{"CAP_NET_ADMIN"}, userns: true, newNetns: true},
		{name: "netlink usersock, connected to a peer without a group", file: toPeer, refused: true},
		{name: "netlink usersock, connected to a peer and a group", file: toPeerGroup},
	} {
		m, err := specMasks(spec(0, c.caps, false))
		if err != nil {
			t.Fatal(err)
		}
		caps, _ := grantedCaps(spec(0, c.caps, false), m)
		checks := fileChecks{uid: c.uid, taskUIDs: map[uint32]bool{c.uid: true, 1001: true}, caps: caps, hostCaps: !c.userns, netns: 10, netnsKnown: true,
			net: netSpec{capsCount: !c.userns || c.newNetns, sysctl: nodeSysctls, node: nodeSysctls, tcpRepair: c.repair}}
		err = checks.check(c.file)
		if refused := err != nil; refused != c.refused {
			t.Errorf("%s: %v, want refused %v", c.name, err, c.refused)
		}
	}
}

func TestCheckpointNetns(t *testing.T) {
	withNet := func(id uint32) *criucore.TaskKobjIdsEntry {
		ids := hostIDs()
		ids.NetNsId = proto.Uint32(id)
		return ids
	}
	for _, c := range []struct {
		name   string
		tasks  []uint32 // net ns ids
		netns  []string // netns images
		refuse string
	}{
		{name: "one namespace", tasks: []uint32{10, 10}, netns: []string{"netns-10.img"}},
		{name: "an external one", tasks: []uint32{7}},
		{name: "a task in another", tasks: []uint32{10, 11}, netns: []string{"netns-10.img"}, refuse: "tasks are in more than one network namespace"},
		{name: "two namespaces' images", tasks: []uint32{10}, netns: []string{"netns-10.img", "netns-11.img"}, refuse: "more than one network namespace (netns-11.img)"},
	} {
		dir := t.TempDir()
		var names []string
		for i, id := range c.tasks {
			name := fmt.Sprintf("ids-%d.img", i+1)
			writeImage(t, filepath.Join(dir, name), "IDS", withNet(id))
			names = append(names, name)
		}
		names = append(names, c.netns...)
		id, known, err := checkpointNetns(dir, names)
		switch {
		case c.refuse == "" && (err != nil || !known || id != c.tasks[0]):
			t.Errorf("%s: %d %v %v, want %d", c.name, id, known, err, c.tasks[0])
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
}

// Entries CRIU would read otherwise than confine: another kind's entry
// beside or instead of the type's own (CRIU reads its type's only), a
// pidfd (which go-criu does not know, and CRIU restores with its owner),
// and types or fields confine does not know.
func TestFileKinds(t *testing.T) {
	rootOwner := func() *fown.FownEntry {
		o := owner()
		o.Pid, o.Uid, o.Euid, o.Signum = proto.Uint32(1), proto.Uint32(0), proto.Uint32(0), proto.Uint32(9)
		return o
	}
	tty := &fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: proto.Uint32(1), Tty: &ttyimg.TtyFileEntry{
		Id: proto.Uint32(1), TtyInfoId: proto.Uint32(1), Flags: proto.Uint32(0), Fown: rootOwner()}}
	decoyTTY := proto.Clone(tty).(*fdinfo.FileEntry)
	decoyTTY.Reg = regFile(1, "/tmp/x").Reg
	unixIn := func(id uint32) *fdinfo.FileEntry {
		return &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(1), Usk: &skunix.UnixSkEntry{
			Id: proto.Uint32(1), Ino: proto.Uint32(1), Type: proto.Uint32(unix.SOCK_STREAM), State: proto.Uint32(10), Flags: proto.Uint32(0),
			Uflags: proto.Uint32(0), Backlog: proto.Uint32(0), Peer: proto.Uint32(0), Fown: owner(), Opts: sockOptions(), NsId: proto.Uint32(id)}}
	}
	decoyUnix := unixIn(11)
	decoyUnix.Isk = inetSocket(1, unix.SOCK_STREAM, 8080).Isk
	decoyUnix.Isk.NsId = proto.Uint32(10)
	wrongKind := &fdinfo.FileEntry{Type: fdinfo.FdTypes_TTY.Enum(), Id: proto.Uint32(1), Reg: regFile(1, "/tmp/x").Reg}
	nsFile := &fdinfo.FileEntry{Type: fdinfo.FdTypes_NS.Enum(), Id: proto.Uint32(1), Nsf: &nsimg.NsFileEntry{
		Id: proto.Uint32(1), NsId: proto.Uint32(13), NsCflag: proto.Uint32(unix.CLONE_NEWNS), Flags: proto.Uint32(0)}}
	// pidfdEntry is a pidfd_entry (CRIU's images/pidfd.proto) with owner o
	// (none if nil), as its bytes.
	pidfdEntry := func(o *fown.FownEntry) []byte {
		var entry []byte
		for _, f := range []struct {
			num protowire.Number
			v   uint64
		}{{1, 1}, {2, 7}, {3, 0}, {4, 12}} {
			entry = protowire.AppendVarint(protowire.AppendTag(entry, f.num, protowire.VarintType), f.v)
		}
		if o != nil {
			fownBytes, err := proto.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			entry = protowire.AppendBytes(protowire.AppendTag(entry, 5, protowire.BytesType), fownBytes)
		}
		return entry
	}
	// pidfdFile is a files.img entry of type 20 with these bytes after its
	// type and id, as CRIU writes one: decoded by go-criu, they are
	// unknown fields.
	pidfdFile := func(rest []byte) *fdinfo.FileEntry {
		wire := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 20)
		wire = protowire.AppendVarint(protowire.AppendTag(wire, 2, protowire.VarintType), 1)
		fe := &fdinfo.FileEntry{}
		if err := proto.Unmarshal(append(wire, rest...), fe); err != nil {
			t.Fatal(err)
		}
		return fe
	}
	pidfd := func(o *fown.FownEntry, extra ...byte) *fdinfo.FileEntry {
		return pidfdFile(append(protowire.AppendBytes(protowire.AppendTag(nil, 22, protowire.BytesType), pidfdEntry(o)), extra...))
	}
	fixedOwner := append(pidfdEntry(nil), protowire.AppendFixed64(protowire.AppendTag(nil, 5, protowire.Fixed64Type), 1)...)
	cut := protowire.AppendVarint(protowire.AppendTag(pidfdEntry(nil), 5, protowire.BytesType), 10)
	cut = append(cut, 1, 2) // 2 of the owner's 10 bytes
	pidfdAndReg := pidfd(nil)
	pidfdAndReg.Reg = regFile(1, "/tmp/x").Reg
	tunIn := &fdinfo.FileEntry{Type: fdinfo.FdTypes_TUNF.Enum(), Id: proto.Uint32(1), Tunf: &tun.TunfileEntry{NsId: proto.Uint32(11)}}
	userOwner := owner()
	userOwner.Pid, userOwner.Uid, userOwner.Euid = proto.Uint32(1), proto.Uint32(1000), proto.Uint32(1000)
	unknownType := &fdinfo.FileEntry{Type: fdinfo.FdTypes(42).Enum(), Id: proto.Uint32(1)}
	unknownField := regFile(1, "/tmp/x")
	unknownField.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 30, protowire.VarintType), 1))
	for _, c := range []struct {
		name   string
		file   *fdinfo.FileEntry
		refuse string
	}{
		{name: "a TTY signalling as root", file: tty, refuse: "as uid 0, euid 0"},
		{name: "a TTY signalling as root, behind a regular file's entry", file: decoyTTY, refuse: "exactly its own kind's entry"},
		{name: "a TTY with a regular file's entry only", file: wrongKind, refuse: "exactly its own kind's entry"},
		{name: "a unix socket in another network namespace", file: unixIn(11), refuse: "network namespace 11"},
		{name: "a unix socket in another network namespace, behind an inet socket's entry", file: decoyUnix, refuse: "exactly its own kind's entry"},
		{name: "a unix socket in the tasks'", file: unixIn(10)},
		{name: "a mount namespace file (its ns_id is no network namespace)", file: nsFile},
		{name: "a pidfd signalling as the user", file: pidfd(userOwner)},
		{name: "a pidfd signalling as root", file: pidfd(rootOwner()), refuse: "as uid 0, euid 0"},
		{name: "a pidfd with another field", file: pidfd(userOwner, protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1)...), refuse: "unexpected field 3"},
		{name: "a pidfd without an owner", file: pidfd(nil), refuse: "no owner"},
		{name: "a pidfd twice", file: pidfd(userOwner, protowire.AppendBytes(protowire.AppendTag(nil, 22, protowire.BytesType), pidfdEntry(userOwner))...), refuse: "unexpected field 22"},
		{name: "a pidfd whose owner is no message", file: pidfdFile(protowire.AppendBytes(protowire.AppendTag(nil, 22, protowire.BytesType), fixedOwner)), refuse: "wire type"},
		{name: "a pidfd cut short", file: pidfdFile(protowire.AppendBytes(protowire.AppendTag(nil, 22, protowire.BytesType), cut)), refuse: "a pidfd"},
		{name: "a pidfd with a regular file's entry", file: pidfdAndReg, refuse: "another kind"},
		{name: "a TUN device in another network namespace", file: tunIn, refuse: "network namespace 11"},
		{name: "an unknown type", file: unknownType, refuse: "type 42"},
		{name: "an unknown field", file: unknownField, refuse: "fields snapboot does not know"},
	} {
		checks := fileChecks{uid: 1000, taskUIDs: map[uint32]bool{1000: true}, hostCaps: true, netns: 10, netnsKnown: true,
			net: netSpec{capsCount: true, sysctl: nodeSysctls, node: nodeSysctls}}
		err := checks.check(c.file)
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
}

// Socket buffers: TCP's bound is tcp_rmem's largest in the container's
// network namespace, not the node's; other sockets' twice rmem_max.
func TestSocketBufferBounds(t *testing.T) {
	podNetns := func(name string) (string, error) {
		if name == "net.ipv4.tcp_rmem" {
			return "4096 131072 33554432", nil
		}
		return nodeSysctls(name)
	}
	tcp := inetSocket(1, unix.SOCK_STREAM, 8080)
	tcp.Isk.Opts.SoRcvbuf = proto.Uint32(16 << 20)
	udp := proto.Clone(tcp).(*fdinfo.FileEntry)
	udp.Isk.Type, udp.Isk.Proto = proto.Uint32(unix.SOCK_DGRAM), proto.Uint32(unix.IPPROTO_UDP)
	usk := func(rcv uint32) *fdinfo.FileEntry {
		return &fdinfo.FileEntry{Type: fdinfo.FdTypes_UNIXSK.Enum(), Id: proto.Uint32(1), Usk: &skunix.UnixSkEntry{
			Id: proto.Uint32(1), Ino: proto.Uint32(1), Type: proto.Uint32(unix.SOCK_STREAM), State: proto.Uint32(10), Flags: proto.Uint32(0),
			Uflags: proto.Uint32(0), Backlog: proto.Uint32(0), Peer: proto.Uint32(0), Fown: owner(), Opts: &skopts.SkOptsEntry{
				SoSndbuf: proto.Uint32(212992), SoRcvbuf: proto.Uint32(rcv), SoSndTmoSec: proto.Uint64(0), SoSndTmoUsec: proto.Uint64(0),
				SoRcvTmoSec: proto.Uint64(0), SoRcvTmoUsec: proto.Uint64(0)}}}
	}
	for _, c := range []struct {
		name    string
		file    *fdinfo.FileEntry
		refused bool
	}{
		{name: "TCP, 16 MiB, within the pod's tcp_rmem", file: tcp},
		{name: "UDP, 16 MiB", file: udp, refused: true},
		{name: "unix, twice rmem_max", file: usk(425984)},
		{name: "unix, a byte more", file: usk(425985), refused: true},
	} {
		checks := fileChecks{hostCaps: true, net: netSpec{capsCount: true, sysctl: podNetns, node: nodeSysctls}}
		if err := checks.check(c.file); (err != nil) != c.refused {
			t.Errorf("%s: %v, want refused %v", c.name, err, c.refused)
		}
	}
}

func TestNetlinkGroups(t *testing.T) {
	got := netlinkGroups([]uint32{1<<0 | 1<<29, 0, 1 << 31})
	if want := []int{1, 30, 96}; !slices.Equal(got, want) {
		t.Errorf("groups %v, want %v", got, want)
	}
}

func TestLegacyFileImages(t *testing.T) {
	imgs := writeImages(t, task{tc: shimLimitsLeader(t)})
	os.WriteFile(filepath.Join(imgs, "inetsk.img"), []byte("x"), 0o600)
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "old format") {
		t.Fatalf("inetsk.img without files.img: %v, want a refusal", err)
	}
	// CRIU reads them when files.img has no entry: refused beside one too.
	withFiles(t, imgs)
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); !errors.Is(err, ErrRefused) {
		t.Fatalf("inetsk.img beside an empty files.img: %v, want a refusal", err)
	}
}

// writeGhost writes a ghost file image with entry g and content.
func writeGhost(t *testing.T, path string, g *ghostfile.GhostFileEntry, content string) {
	t.Helper()
	entry, err := proto.Marshal(g)
	if err != nil {
		t.Fatal(err)
	}
	magics := magic.LoadMagic()
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, uint32(magics.ByName["IMG_COMMON"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(magics.ByName["GHOST_FILE"]))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entry)))
	b = append(b, entry...)
	b = append(b, content...)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestGhostFiles(t *testing.T) {
	for _, c := range []struct {
		name    string
		mode    uint32
		refused bool
	}{
		{"a regular file", unix.S_IFREG | 0o644, false},
		{"a FIFO", unix.S_IFIFO | 0o600, false},
		{"a directory", unix.S_IFDIR | 0o755, true},
		{"a setuid file", unix.S_IFREG | unix.S_ISUID | 0o755, true},
		{"a setgid file", unix.S_IFREG | unix.S_ISGID | 0o755, true},
		{"a character device", unix.S_IFCHR | 0o600, true},
		{"a block device", unix.S_IFBLK | 0o600, true},
		{"a symbolic link", unix.S_IFLNK | 0o777, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			imgs := writeImages(t, task{tc: shimLimitsLeader(t)})
			writeGhost(t, filepath.Join(imgs, "ghost-file-1.img"), &ghostfile.GhostFileEntry{
				Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(c.mode), Rdev: proto.Uint32(0x801)}, "content")
			_, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost)
			if refused := errors.Is(err, ErrRefused); refused != c.refused || (!refused && err != nil) {
				t.Fatalf("%v, want refused %v", err, c.refused)
			}
		})
	}
	imgs := writeImages(t, task{tc: shimLimitsLeader(t)})
	os.WriteFile(filepath.Join(imgs, "ghost-file-2.img"), []byte("not an image"), 0o600)
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); !errors.Is(err, ErrRefused) {
		t.Fatalf("a broken ghost file image: %v, want a refusal", err)
	}
}

// nodeSysctls are a node's network sysctls, as the kernel sets them.
func nodeSysctls(name string) (string, error) {
	values := map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "1024",
		"net.core.wmem_max":                   "212992",
		"net.core.rmem_max":                   "212992",
		"net.core.wmem_default":               "212992",
		"net.core.rmem_default":               "212992",
		"net.ipv4.tcp_wmem":                   "4096\t16384\t4194304",
		"net.ipv4.tcp_rmem":                   "4096\t131072\t6291456",
	}
	if v, ok := values[name]; ok {
		return v, nil
	}
	return "", fmt.Errorf("no sysctl %s", name)
}

// Where the unprivileged ports begin: in a network namespace runc makes,
// the spec's sysctl (which the restore hook writes before CRIU restores
// sockets) or the kernel's default; in one joined by path, its own; else
// the node's.
func TestNetSpec(t *testing.T) {
	in := func(path, name string) (string, error) {
		if name != "net.ipv4.ip_unprivileged_port_start" {
			return "", errors.New("not the port start")
		}
		if path == "/run/netns/pod" {
			return "0", nil
		}
		return "1000", nil
	}
	for _, c := range []struct {
		name      string
		netns     *specs.LinuxNamespace
		userns    bool
		sysctl    map[string]string
		start     uint32
		capsCount bool
	}{
		{name: "the node's", start: 1000, capsCount: true},
		{name: "a new one", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace}, start: defaultPortStart, capsCount: true},
		{name: "a new one with the spec's sysctl", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace},
			sysctl: map[string]string{"net/ipv4/ip_unprivileged_port_start": "80"}, start: 80, capsCount: true},
		{name: "a pod's", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/pod"}, start: 0, capsCount: true},
		{name: "a new one in a user namespace", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace}, userns: true, start: defaultPortStart, capsCount: true},
		{name: "a pod's in a user namespace", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/pod"}, userns: true, start: 0},
	} {
		s := spec(0, nil, false)
		if c.netns != nil {
			s.Linux.Namespaces = append(s.Linux.Namespaces, *c.netns)
		}
		if c.userns {
			s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		}
		s.Linux.Sysctl = c.sysctl
		n := netSpecFor(s, in)
		start, err := n.portStart()
		if err != nil || start != c.start || n.capsCount != c.capsCount {
			t.Errorf("%s: port start %d (%v), capabilities count %v; want %d, %v", c.name, start, err, n.capsCount, c.start, c.capsCount)
		}
	}
}

// The TCP buffer sizes: in a network namespace runc makes, the spec's or
// (copied when the kernel makes it) the node's; in a pod's, its own.
func TestNetSpecTCPBuffers(t *testing.T) {
	in := func(path, name string) (string, error) {
		if name != "net.ipv4.tcp_rmem" {
			return "", errors.New("not tcp_rmem")
		}
		if path == "/run/netns/pod" {
			return "4096 131072 33554432", nil
		}
		return "4096 131072 6291456", nil
	}
	for _, c := range []struct {
		name   string
		netns  *specs.LinuxNamespace
		sysctl map[string]string
		want   string
	}{
		{name: "the node's", want: "6291456"},
		{name: "a new one", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace}, want: "6291456"},
		{name: "a new one with the spec's sysctl", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace},
			sysctl: map[string]string{"net.ipv4.tcp_rmem": "4096 131072 16777216"}, want: "16777216"},
		{name: "a pod's", netns: &specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/run/netns/pod"}, want: "33554432"},
	} {
		s := spec(0, nil, false)
		if c.netns != nil {
			s.Linux.Namespaces = append(s.Linux.Namespaces, *c.netns)
		}
		s.Linux.Sysctl = c.sysctl
		got, err := netSpecFor(s, in).sysctl("net.ipv4.tcp_rmem")
		if f := strings.Fields(got); err != nil || len(f) != 3 || f[2] != c.want {
			t.Errorf("%s: tcp_rmem %q (%v), want its largest %s", c.name, got, err, c.want)
		}
	}
}

// remap is a remap-fpath entry; typ nil is CRIU's old format.
func remap(orig, remapID uint32, typ *remapfilepath.RemapType) *remapfilepath.RemapFilePathEntry {
	return &remapfilepath.RemapFilePathEntry{OrigId: proto.Uint32(orig), RemapId: proto.Uint32(remapID), RemapType: typ}
}

func inMount(f *fdinfo.FileEntry, id int32) *fdinfo.FileEntry {
	f.Reg.MntId = proto.Int32(id)
	return f
}

func TestFilesCRIUMakes(t *testing.T) {
	// Two layers: the topmost has /tmp/out -> /var/tmp (the donor's), the
	// lower /tmp, /var/tmp and /data/file.
	upper, lower := t.TempDir(), t.TempDir()
	for _, d := range []string{"tmp", "var/tmp"} {
		os.MkdirAll(filepath.Join(lower, d), 0o755)
	}
	os.MkdirAll(filepath.Join(upper, "tmp"), 0o755)
	os.Symlink("/var/tmp", filepath.Join(upper, "tmp/out"))
	os.WriteFile(filepath.Join(lower, "data"), []byte("a file"), 0o644)
	ghost, linked := remapfilepath.RemapType_GHOST.Enum(), remapfilepath.RemapType_LINKED.Enum()
	if os.Geteuid() == 0 {
		// A whiteout in the topmost layer over a link in the lower one.
		os.Symlink("/etc", filepath.Join(lower, "gone"))
		if err := unix.Mknod(filepath.Join(upper, "gone"), unix.S_IFCHR|0o600, 0); err != nil {
			t.Fatal(err)
		}
	}
	rootMount := mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)
	tmpfs := mount(2, 1, mnt.Fstype_TMPFS, "/", "/dev/shm", 0)
	readOnly := mount(3, 1, mnt.Fstype_TMPFS, "/", "/ro", msRdonly)
	proc := mount(4, 1, mnt.Fstype_PROC, "/", "/proc", 0)
	volume := mount(5, 1, mnt.Fstype_AUTO, "/", "/data/volume", 0)
	volume.ExtKey = proto.String("/data/volume")
	mounts := []*mnt.MntEntry{rootMount, tmpfs, readOnly, proc, volume}
	for _, c := range []struct {
		name   string
		files  []*fdinfo.FileEntry
		remaps []*remapfilepath.RemapFilePathEntry
		layers []string
		refuse string
		root   bool
	}{
		{name: "a ghost under directories", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}},
		{name: "a ghost through a symbolic link", files: []*fdinfo.FileEntry{inMount(regFile(1, "/tmp/out/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "/tmp/out is not a directory"},
		{name: "a ghost under a file", files: []*fdinfo.FileEntry{inMount(regFile(1, "/data/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "/data is not a directory"},
		{name: "CRIU's old format: the ghost flag in the id", files: []*fdinfo.FileEntry{inMount(regFile(1, "/tmp/out/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9|remapGhost, nil)}, refuse: "/tmp/out is not a directory"},
		{name: "a ghost in a tmpfs's root", files: []*fdinfo.FileEntry{inMount(regFile(1, "/dev/shm/x"), 2)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}},
		{name: "a ghost in a tmpfs's directory", files: []*fdinfo.FileEntry{inMount(regFile(1, "/dev/shm/d/x"), 2)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "cannot check"},
		{name: "a ghost in a read-only mount", files: []*fdinfo.FileEntry{inMount(regFile(1, "/ro/x"), 3)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "read-only"},
		{name: "a ghost in a mount the checkpoint does not have", files: []*fdinfo.FileEntry{inMount(regFile(1, "/tmp/x"), 7)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "mount 7"},
		{name: "a ghost in a mount it is not in", files: []*fdinfo.FileEntry{inMount(regFile(1, "/tmp/x"), 2)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "not in its mount"},
		{name: "a ghost in the root file system, under another mount", files: []*fdinfo.FileEntry{inMount(regFile(1, "/dev/shm/out/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "not in its mount"},
		{name: "a ghost in the root of proc", files: []*fdinfo.FileEntry{inMount(regFile(1, "/proc/x"), 4)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "would not make it safely"},
		{name: "a ghost in the root of a volume", files: []*fdinfo.FileEntry{inMount(regFile(1, "/data/volume/x"), 5)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}},
		{name: "a ghost in a directory of a volume", files: []*fdinfo.FileEntry{inMount(regFile(1, "/data/volume/logs/x"), 5)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, refuse: "cannot check"},
		{name: "a linked remap", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1), inMount(regFile(2, "/var/tmp/link_remap.2"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}},
		{name: "a linked remap's link through a symbolic link", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1), inMount(regFile(2, "/tmp/out/link_remap.2"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "link to a deleted file"},
		{name: "a linked remap's link in another mount than the file", files: []*fdinfo.FileEntry{inMount(regFile(1, "/dev/shm/x"), 2), inMount(regFile(2, "/etc/lnk/passwd"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "is in mount 1, the file in mount 2"},
		{name: "a linked remap's link in a directory above the file's", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/gone/x"), 1), inMount(regFile(2, "/var/link_remap.2"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}},
		// CRIU removes the link as the node's root after the restore.
		{name: "a linked remap's link named as another file", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1), inMount(regFile(2, "/var/tmp/victim"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "is not the link_remap.2 CRIU's dump makes"},
		{name: "a linked remap's link with another id", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1), inMount(regFile(2, "/var/tmp/link_remap.3"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "is not the link_remap.2"},
		{name: "a linked remap's link in another directory", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1), inMount(regFile(2, "/var/tmp/sub/link_remap.2"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "is not the link_remap.2"},
		{name: "a linked remap's link in a sibling directory", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmpx/x"), 1), inMount(regFile(2, "/var/tmp/link_remap.2"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "is not the link_remap.2"},
		{name: "a linked remap to a file the checkpoint does not have", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 2, linked)}, refuse: "does not have"},
		{name: "no layers to check", files: []*fdinfo.FileEntry{inMount(regFile(1, "/var/tmp/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, layers: []string{}, refuse: "not an overlay or a bind mount"},
		{name: "a /proc remap", files: []*fdinfo.FileEntry{inMount(regFile(1, "/proc/1/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, remapfilepath.RemapType_PROCFS.Enum())}},
		{name: "a ghost under a whiteout of a link", files: []*fdinfo.FileEntry{inMount(regFile(1, "/gone/x"), 1)},
			remaps: []*remapfilepath.RemapFilePathEntry{remap(1, 9, ghost)}, root: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.root && os.Geteuid() != 0 {
				t.Skip("needs root: a whiteout")
			}
			dir := t.TempDir()
			msgs := make([]proto.Message, len(c.remaps))
			for i, r := range c.remaps {
				msgs[i] = r
			}
			writeImage(t, filepath.Join(dir, "remap-fpath.img"), "REMAP_FPATH", msgs...)
			regs := map[uint32]*regfile.RegFileEntry{}
			for _, f := range c.files {
				regs[f.GetReg().GetId()] = f.GetReg()
			}
			dirs := c.layers
			if dirs == nil {
				dirs = []string{upper, lower}
			}
			root := &layers{dirs: dirs}
			defer root.close()
			r := remaps{regs: regs, mounts: mounts, layers: root}
			err := r.check(dir, []string{"remap-fpath.img"})
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

func TestGhostChunks(t *testing.T) {
	chunk := func(off, n uint64) []byte {
		e, err := proto.Marshal(&ghostfile.GhostChunkEntry{Off: proto.Uint64(off), Len: proto.Uint64(n)})
		if err != nil {
			t.Fatal(err)
		}
		return append(binary.LittleEndian.AppendUint32(nil, uint32(len(e))), e...)
	}
	data := func(n int) string { return strings.Repeat("x", n) }
	for _, c := range []struct {
		name    string
		size    *uint64
		content string
		refused bool
	}{
		{"two chunks", proto.Uint64(100), string(chunk(0, 10)) + data(10) + string(chunk(50, 50)) + data(50), false},
		{"no size", nil, string(chunk(0, 10)) + data(10), true},
		{"a chunk past the file's size", proto.Uint64(20), string(chunk(15, 10)) + data(10), true},
		{"a chunk past the image's end", proto.Uint64(100), string(chunk(0, 10)) + data(5), true},
		{"a malformed chunk entry", proto.Uint64(100), "\x03\x00\x00\x00\xff\xff\xff" + string(chunk(0, 10)) + data(10), true},
		{"a truncated chunk header", proto.Uint64(100), "\x03\x00", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "ghost-file-1.img")
			writeGhost(t, p, &ghostfile.GhostFileEntry{Uid: proto.Uint32(0), Gid: proto.Uint32(0), Mode: proto.Uint32(unix.S_IFREG | 0o644),
				Chunks: proto.Bool(true), Size: c.size}, c.content)
			if err := checkGhost(p); (err != nil) != c.refused {
				t.Fatalf("%v, want refused %v", err, c.refused)
			}
		})
	}
}

func TestDuplicateFileIDs(t *testing.T) {
	imgs := writeImages(t, task{tc: shimLimitsLeader(t)})
	withFiles(t, imgs, regFile(1, "/tmp/a"), regFile(1, "/tmp/b"))
	if _, err := apply(imgs, t.TempDir(), spec(0, nil, false), plainHost, onHost); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "two files") {
		t.Fatalf("%v, want a refusal", err)
	}
}

func TestOneMountNamespace(t *testing.T) {
	dir := writeTree(t, []*criucore.TaskKobjIdsEntry{containerIDs()}, donorMounts())
	writeImage(t, filepath.Join(dir, "mountpoints-14.img"), "MNTS", messages(donorMounts())...)
	if err := checkTree(dir, clonesSpec()); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "more than one mount namespace") {
		t.Fatalf("%v, want a refusal", err)
	}
}

// CRIU opens a FIFO's file read-write, as root, whatever the descriptor's
// flags, and writes the image's data into it: a FIFO held read-only needs
// write permission too.
func TestFIFOOpenedReadWrite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: files of other owners")
	}
	layer := t.TempDir()
	put(t, layer, "run/", 0, 0, 0o755)
	put(t, layer, "run/theirs", 0, 0, 0o644)
	put(t, layer, "run/shared", 0, 0, 0o666)
	mounts := []*mnt.MntEntry{mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)}
	fifo := func(name string) []*fdinfo.FileEntry {
		reg := regFile(1, name) // O_RDONLY
		return []*fdinfo.FileEntry{reg, {Type: fdinfo.FdTypes_FIFO.Enum(), Id: proto.Uint32(2),
			Fifo: &fifopb.FifoEntry{Id: proto.Uint32(2), PipeId: proto.Uint32(5), RegfId: proto.Uint32(1)}}}
	}
	for _, c := range []struct {
		name   string
		files  []*fdinfo.FileEntry
		refuse string
	}{
		{"a FIFO the user may only read", fifo("/run/theirs"), "may not read and write"},
		{"a FIFO the user may write", fifo("/run/shared"), ""},
		{"a regular file the user may only read", fifo("/run/theirs")[:1], ""},
	} {
		dir := t.TempDir()
		withFiles(t, dir, c.files...)
		s := spec(1000, nil, false)
		m, err := specMasks(s)
		if err != nil {
			t.Fatal(err)
		}
		err = checkFiles(dir, []string{"files.img"}, s, m, netSpec{}, mounts, []string{layer}, map[uint32]bool{1000: true})
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
}

// A non-root spec's inotify instances, which CRIU makes as root, are
// bounded: the kernel counts them to root's.
func TestInotifyChargedToRootBounded(t *testing.T) {
	for _, c := range []struct {
		name      string
		uid       uint32
		hostCaps  bool
		instances int
		refuse    bool
	}{
		{"a user's few", 1000, true, maxInotifyInstances, false},
		{"a user's many", 1000, true, maxInotifyInstances + 1, true},
		{"root's many", 0, true, maxInotifyInstances + 1, false},
		{"many in a user namespace", 1000, false, maxInotifyInstances + 1, false},
	} {
		checks := &fileChecks{uid: c.uid, hostCaps: c.hostCaps}
		for range c.instances {
			if err := checks.check(inotifyWatch("/tmp")); err != nil {
				t.Fatal(err)
			}
		}
		if err := checks.inotifyCharge(); (err != nil) != c.refuse {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

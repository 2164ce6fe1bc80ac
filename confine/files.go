package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	ghostfile "github.com/checkpoint-restore/go-criu/v7/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	remapfilepath "github.com/checkpoint-restore/go-criu/v7/crit/images/remap-file-path"
	skopts "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-opts"
	skunix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/snapboot/snapboot/restorehook"
)

// legacyFileImages are the per-kind file images of CRIU's old format.
// CRIU 4 never writes them, and reads them when files.img has no entry
// (an empty one, say): they would escape checkFiles, so they are refused.
var legacyFileImages = []string{"reg-files.img", "ext-files.img", "ns-files.img", "eventfd.img", "eventpoll.img",
	"eventpoll-tfd.img", "signalfd.img", "inotify.img", "inotify-wd.img", "fanotify.img", "fanotify-mark.img",
	"unixsk.img", "inetsk.img", "packetsk.img", "netlinksk.img", "tunfile.img", "timerfd.img", "fifo.img",
	"pipes.img", "tty.img"}

// netSpec says where the container's sockets live, for the capability
// checks of checkFiles.
type netSpec struct {
	// capsCount: the spec's capabilities count in the container's network
	// namespace (no user namespace, or one that owns a network namespace
	// runc makes).
	capsCount bool
	// sysctl returns a network sysctl's value (dotted name) in the
	// container's network namespace; node the node's (the global ones,
	// net.core's, are read there).
	sysctl, node func(name string) (string, error)
	// tcpRepair: CRIU rebuilds established TCP connections in TCP repair
	// mode (the restore's tcp-established); otherwise it shuts them down.
	tcpRepair bool
}

// newNetnsDefaults are the values of the sysctls confine reads that a
// new network namespace does not copy from the node's (the TCP buffer
// sizes, tcp_rmem and tcp_wmem, it copies).
var newNetnsDefaults = map[string]string{"net.ipv4.ip_unprivileged_port_start": "1024"}

// defaultPortStart is the kernel's net.ipv4.ip_unprivileged_port_start in
// a new network namespace.
const defaultPortStart = 1024

func netSpecFor(spec *specs.Spec, sysctlIn func(path, name string) (string, error)) netSpec {
	_, userns := restorehook.SpecNamespace(spec, specs.UserNamespace)
	netns, has := restorehook.SpecNamespace(spec, specs.NetworkNamespace)
	n := netSpec{capsCount: !userns || (has && netns.Path == "")}
	if sysctlIn == nil {
		unknown := func(string) (string, error) { return "", errors.New("unknown on this host") }
		n.sysctl, n.node = unknown, unknown
		return n
	}
	n.node = func(name string) (string, error) { return sysctlIn("", name) }
	switch {
	case has && netns.Path == "":
		// runc's, where snapboot's restore hook writes the spec's
		// sysctls before CRIU restores the sockets.
		n.sysctl = func(name string) (string, error) {
			if value, ok := restorehook.Sysctl(spec, name); ok {
				return value, nil
			}
			if value, ok := newNetnsDefaults[name]; ok {
				return value, nil
			}
			return sysctlIn("", name)
		}
	case has:
		n.sysctl = func(name string) (string, error) { return sysctlIn(netns.Path, name) }
	default:
		n.sysctl = n.node
	}
	return n
}

// portStart returns net.ipv4.ip_unprivileged_port_start in the
// container's network namespace.
func (n netSpec) portStart() (uint32, error) {
	value, err := n.sysctl("net.ipv4.ip_unprivileged_port_start")
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
	return uint32(v), err
}

// checkFiles refuses a checkpoint whose tasks hold a file CRIU would make
// for them with a privilege their spec does not grant, or outside the
// container: CRIU opens, binds and creates every file as root, before it
// narrows the tasks' capabilities, and makes some of them in a mount
// namespace of its own, whose root is the node's. Refused:
//   - CRIU's old per-kind file images (see legacyFileImages);
//   - a file name that is not an absolute path without "." or "..",
//     which CRIU dumps, two files with one id, and flags that create or
//     truncate a file;
//   - a file the cold start's user could not open as CRIU will (see
//     fileAccess);
//   - a deleted file or link CRIU would make where it cannot be sure to
//     stay in the container (see remaps), and a ghost file (a deleted
//     file's stand-in) that is not a regular file or a FIFO, is setuid or
//     setgid, or whose image is malformed (see checkGhost);
//   - without CAP_NET_RAW, a packet or raw socket; without
//     CAP_NET_BIND_SERVICE, a socket on a port below the network
//     namespace's ip_unprivileged_port_start; without CAP_NET_ADMIN, a
//     socket with a mark or a priority above 6, or a TUN device;
//   - a TTY opened by a file that is not a pseudo-terminal (see
//     checkTTYs), and a unix socket connected to one outside the
//     checkpoint (see unixPeers);
//   - a unix socket's name in a directory where the spec's user could not
//     bind it or remove a socket already there, or a socket file owned by
//     another user (see unixNames);
//   - a file entry CRIU would read otherwise (see kindOf), and a file
//     whose signals CRIU would send as a user no task runs as (see
//     owner);
//   - a socket in another network namespace than the tasks', and tasks
//     in more than one (see netnsOf, checkpointNetns);
//   - a netlink socket in a multicast group, or connected, where the
//     kernel asks a capability of the cold start (see netlink);
//   - without CAP_LEASE or CAP_SETUID, a lease on a file the spec's user
//     does not own (see checkLeases);
//   - without CAP_NET_ADMIN, an established TCP connection that CRIU
//     rebuilds in TCP repair mode (a restore with tcp-established);
//   - without CAP_SYS_ADMIN, a fanotify group; without CAP_BPF (or
//     CAP_SYS_ADMIN), a BPF map; without CAP_WAKE_ALARM, an alarm timer.
//
// mounts are the entries of the checkpoint's mount namespace; rootLayers
// the directories of the container's root file system, topmost first;
// taskUIDs the user ids the checkpoint's tasks run with.
func checkFiles(imagesDir string, names []string, spec *specs.Spec, m masks, net netSpec, mounts []*mnt.MntEntry, rootLayers []string, taskUIDs map[uint32]bool) error {
	for _, legacy := range legacyFileImages {
		if slices.Contains(names, legacy) {
			return fmt.Errorf("%w: the checkpoint has files in CRIU's old format (%s), which CRIU would restore unchecked", ErrRefused, legacy)
		}
	}
	regs := map[uint32]*regfile.RegFileEntry{}
	root := &layers{dirs: rootLayers}
	defer root.close()
	caps, nodeCaps := grantedCaps(spec, m)
	c := fileChecks{caps: caps, net: net, hostCaps: nodeCaps, taskUIDs: taskUIDs}
	if spec.Process != nil {
		c.uid = spec.Process.User.UID
		c.gids = append([]uint32{spec.Process.User.GID}, spec.Process.User.AdditionalGids...)
	}
	var err error
	if c.netns, c.netnsKnown, err = checkpointNetns(imagesDir, names); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if slices.Contains(names, "files.img") {
		img, err := decodeImage(filepath.Join(imagesDir, "files.img"), &fdinfo.FileEntry{})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		for _, e := range img.Entries {
			fe := e.Message.(*fdinfo.FileEntry)
			if err := c.check(fe); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
			if reg := fe.GetReg(); reg != nil {
				if regs[reg.GetId()] != nil {
					return fmt.Errorf("%w: files.img has two files with id %#x", ErrRefused, reg.GetId())
				}
				regs[reg.GetId()] = reg
			}
		}
	}
	if err := c.inotifyCharge(); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := checkTTYs(c.ttys, regs, mounts); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if err := c.unixPeers(imagesDir, names); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	r := remaps{regs: regs, mounts: mounts, layers: root}
	if err := r.check(imagesDir, names); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	var made *fileAccess
	accessOnce := func() *fileAccess {
		if made == nil {
			made = newFileAccess(spec, m, mounts, root)
			made.tmpfs = &tmpfsTrees{imagesDir: imagesDir, names: names}
		}
		return made
	}
	if len(c.unix) > 0 || len(regs) > 0 {
		// Names are matched against mount points as written.
		if a := accessOnce(); a.checkBits {
			if err := a.mountPointsDirect(); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
	}
	if a := accessOnce(); a.checkBits {
		if err := a.checkTmpfsContents(spec); err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
	}
	if err := unixNames(c.unix, &c, accessOnce); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	if len(regs) > 0 || len(c.watched) > 0 {
		access := accessOnce()
		// The memory maps and the process tree are read only where they
		// count: most restores (root with CAP_DAC_OVERRIDE, a PID
		// namespace of the container's own) need neither.
		var searched, written map[uint32]bool
		var err error
		if access.checkBits {
			if searched, written, err = fileNeeds(imagesDir, names); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
		if access.sharedPIDNS {
			if access.pids, err = checkpointPids(imagesDir, names); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
		for _, id := range slices.Sorted(maps.Keys(regs)) {
			reg, name := regs[id], regs[id].GetName()
			if r.ghosts[id] {
				continue // CRIU makes it from the image (see remaps)
			}
			if link, ok := r.links[id]; ok {
				name = link // CRIU opens the deleted file through its link
			}
			flags := reg.GetFlags()
			if c.fifos[id] {
				flags = flags&^unix.O_ACCMODE | unix.O_RDWR
			}
			if err := access.check(name, flags, searched[id], written[id]); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
		for _, p := range c.watched {
			if err := access.check(p, unix.O_RDONLY, false, false); err != nil {
				return fmt.Errorf("%w: an inotify watch: %w", ErrRefused, err)
			}
		}
	}
	if err := checkLeases(imagesDir, names, regs, &r, &c, accessOnce); err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	for _, name := range names {
		if strings.HasPrefix(name, "ghost-file-") && strings.HasSuffix(name, ".img") {
			if err := checkGhost(filepath.Join(imagesDir, name)); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
	}
	return nil
}

type fileChecks struct {
	uid      uint32          // the spec's user
	gids     []uint32        // the spec's groups
	taskUIDs map[uint32]bool // the user ids the checkpoint's tasks run with
	caps     uint64          // what the spec grants (grantedCaps)
	watched  []string        // paths of inotify watches
	net      netSpec
	hostCaps bool // the spec's capabilities are the node's (no user namespace)
	start    *uint32
	// netns is the network namespace id of the checkpoint's tasks, if
	// netnsKnown (checkpointNetns).
	netns      uint32
	netnsKnown bool
	limits     map[string]uint32 // bufLimit's, read once each
	ttys       []uint32          // the regular files TTYs are opened by (checkTTYs)
	fifos      map[uint32]bool   // the regular files FIFOs are opened by
	// inotify and inotifyWatches count the inotify instances and their
	// watches (see inotifyCharge).
	inotify, inotifyWatches int
	unix                    []*skunix.UnixSkEntry
}

// granted reports whether the spec lets the app have capability c
// (grantedCaps), counted where it applies (the node, or the container's
// network namespace).
func (c *fileChecks) granted(cap int, network bool) bool {
	if network && !c.net.capsCount || !network && !c.hostCaps {
		return false
	}
	return c.caps&(1<<uint(cap)) != 0
}

// The most inotify instances, and watches in all, a checkpoint of a
// non-root spec may have (see inotifyCharge).
const maxInotifyInstances, maxInotifyWatches = 16, 8192

// inotifyCharge bounds the inotify instances and watches of a checkpoint
// whose spec's user is not root, without a user namespace: CRIU makes them
// in the task while it is still root, and the kernel counts them to root's
// fs.inotify.max_user_instances (128 by default) and max_user_watches for
// as long as the clone holds them, where the node's own services need
// theirs. A cold start's would count to its own user. (With a user
// namespace they count to the node's id of its root.)
func (c *fileChecks) inotifyCharge() error {
	if !c.hostCaps || c.uid == 0 {
		return nil
	}
	if c.inotify > maxInotifyInstances || c.inotifyWatches > maxInotifyWatches {
		return fmt.Errorf("the checkpoint has %d inotify instances with %d watches, which CRIU makes as root and the kernel counts to root's; a spec whose user is not root may have at most %d and %d", c.inotify, c.inotifyWatches, maxInotifyInstances, maxInotifyWatches)
	}
	return nil
}

// grantedOwn reports whether the spec lets the app have capability c
// over the container's own ids: ownership and credentials, which a user
// namespace's capabilities cover for the ids it maps, as CRIU sets them
// in it.
func (c *fileChecks) grantedOwn(cap int) bool {
	return c.caps&(1<<uint(cap)) != 0
}

func (c *fileChecks) need(cap int, network bool, what string) error {
	if c.granted(cap, network) {
		return nil
	}
	return fmt.Errorf("the checkpoint holds %s, which takes %s; the spec does not grant it", what, capName(cap))
}

func capName(c int) string {
	switch c {
	case unix.CAP_NET_RAW:
		return "CAP_NET_RAW"
	case unix.CAP_NET_BIND_SERVICE:
		return "CAP_NET_BIND_SERVICE"
	case unix.CAP_NET_ADMIN:
		return "CAP_NET_ADMIN"
	case unix.CAP_SYS_ADMIN:
		return "CAP_SYS_ADMIN"
	case unix.CAP_BPF:
		return "CAP_BPF"
	case unix.CAP_WAKE_ALARM:
		return "CAP_WAKE_ALARM"
	case unix.CAP_AUDIT_READ:
		return "CAP_AUDIT_READ"
	case unix.CAP_LEASE:
		return "CAP_LEASE"
	}
	return "capability " + strconv.Itoa(c)
}

func (c *fileChecks) check(fe *fdinfo.FileEntry) error {
	k, err := kindOf(fe)
	if err != nil {
		return err
	}
	if err := c.owner(fe, k.owner); err != nil {
		return err
	}
	if err := c.netnsOf(fe, k); err != nil {
		return err
	}
	switch fe.GetType() {
	case fdinfo.FdTypes_REG:
		// CRIU opens a file with the flags it has; the kernel keeps none of
		// these in an open file's, so no dump has them.
		if f := fe.GetReg().GetFlags(); f&(unix.O_CREAT|unix.O_EXCL|unix.O_TRUNC) != 0 {
			return fmt.Errorf("the checkpoint opens %s with flags %#o, which create or truncate it", fe.GetReg().GetName(), f)
		}
		return checkFileName(fe.GetReg().GetName())
	case fdinfo.FdTypes_INETSK:
		sk := fe.GetIsk()
		if sk.GetType() == unix.SOCK_RAW {
			if err := c.need(unix.CAP_NET_RAW, true, "a raw socket"); err != nil {
				return err
			}
		}
		// A connection CRIU rebuilds sets its addresses, sequence numbers
		// and windows in TCP repair mode, which takes CAP_NET_ADMIN: the
		// clone's packets would be whatever the images say.
		if c.net.tcpRepair && sk.GetProto() == unix.IPPROTO_TCP && sk.GetDstPort() != 0 {
			if err := c.need(unix.CAP_NET_ADMIN, true, "an established TCP connection, which CRIU rebuilds in TCP repair mode (tcp-established)"); err != nil {
				return err
			}
		}
		// A raw socket's port is its protocol, and an ICMP (ping) socket's
		// its echo id: neither is bound to a port.
		icmp := sk.GetProto() == unix.IPPROTO_ICMP || sk.GetProto() == unix.IPPROTO_ICMPV6
		if port := sk.GetSrcPort(); port != 0 && sk.GetType() != unix.SOCK_RAW && !icmp {
			if c.start == nil {
				start, err := c.net.portStart()
				if err != nil {
					return fmt.Errorf("the network namespace's ip_unprivileged_port_start: %w", err)
				}
				c.start = &start
			}
			if port < *c.start {
				if err := c.need(unix.CAP_NET_BIND_SERVICE, true, fmt.Sprintf("a socket on port %d (ports below %d are privileged there)", port, *c.start)); err != nil {
					return err
				}
			}
		}
		return c.sockOpts(sk.GetOpts(), sk.GetType() == unix.SOCK_STREAM && (sk.GetProto() == unix.IPPROTO_TCP || sk.GetProto() == unix.IPPROTO_MPTCP))
	case fdinfo.FdTypes_PACKETSK:
		if err := c.need(unix.CAP_NET_RAW, true, "a packet socket"); err != nil {
			return err
		}
		return c.sockOpts(fe.GetPsk().GetOpts(), false)
	case fdinfo.FdTypes_NETLINKSK:
		return c.netlink(fe.GetNlsk())
	case fdinfo.FdTypes_UNIXSK:
		c.unix = append(c.unix, fe.GetUsk())
		return c.sockOpts(fe.GetUsk().GetOpts(), false)
	case fdinfo.FdTypes_TUNF:
		return c.need(unix.CAP_NET_ADMIN, true, "a TUN/TAP device")
	case fdinfo.FdTypes_TTY:
		// CRIU opens the file regf_id names, or, without one, the file of
		// the TTY's own id.
		id := fe.GetTty().GetRegfId()
		if fe.GetTty().RegfId == nil {
			id = fe.GetTty().GetId()
		}
		c.ttys = append(c.ttys, id)
	case fdinfo.FdTypes_INOTIFY:
		// CRIU finds a watched file by the path it dumped, opened in the
		// task, or else by its file handle, as root, on any mount of its
		// file system, past the mount's root (a node's directory, behind a
		// bind of one of its files): that is refused. The user must be
		// able to read what it watches (checked with the files).
		for _, wd := range fe.GetIfy().GetWd() {
			p := wd.GetFHandle().GetPath()
			if p == "" {
				return fmt.Errorf("the checkpoint has an inotify watch without a path, which CRIU would find by file handle, as root")
			}
			if err := checkFileName(p); err != nil {
				return err
			}
			c.watched = append(c.watched, p)
		}
		c.inotify++
		c.inotifyWatches += len(fe.GetIfy().GetWd())
	case fdinfo.FdTypes_FIFO:
		// CRIU opens a FIFO's file read-write first, as root, whatever
		// the flags, and writes the image's data for it into it
		// (do_open_fifo): the user must be able to.
		if c.fifos == nil {
			c.fifos = map[uint32]bool{}
		}
		c.fifos[fe.GetFifo().GetRegfId()] = true
	case fdinfo.FdTypes_FANOTIFY:
		return c.need(unix.CAP_SYS_ADMIN, false, "a fanotify group")
	case fdinfo.FdTypes_BPFMAP:
		if c.granted(unix.CAP_SYS_ADMIN, false) {
			return nil
		}
		return c.need(unix.CAP_BPF, false, "a BPF map")
	case fdinfo.FdTypes_TIMERFD:
		if id := fe.GetTfd().GetClockid(); id == unix.CLOCK_REALTIME_ALARM || id == unix.CLOCK_BOOTTIME_ALARM {
			return c.need(unix.CAP_WAKE_ALARM, false, "an alarm timer")
		}
	}
	return nil
}

// sockBufs checks the buffer sizes CRIU gives a socket: it forces the
// image's (SO_SNDBUFFORCE, SO_RCVBUFFORCE), which takes CAP_NET_ADMIN on
// the node, as root. Without it, the cold start's socket has at most the
// default size (net.core.wmem_default, rmem_default), twice
// net.core.wmem_max (rmem_max) through SO_SNDBUF (SO_RCVBUF), or, for
// TCP, what the kernel's autotuning grows it to: the largest of
// net.ipv4.tcp_wmem (tcp_rmem) in the container's network namespace. The
// memory a socket's buffers hold is the kernel's, and a socket's own
// peer can fill them (a socket pair of the app's).
func (c *fileChecks) sockBufs(o *skopts.SkOptsEntry, tcp bool) error {
	if c.granted(unix.CAP_NET_ADMIN, false) {
		return nil
	}
	for _, b := range []struct {
		what, core, tcp string
		size            uint32
	}{
		{"send", "wmem", "net.ipv4.tcp_wmem", o.GetSoSndbuf()},
		{"receive", "rmem", "net.ipv4.tcp_rmem", o.GetSoRcvbuf()},
	} {
		limit, err := c.bufLimit(b.core, tcp, b.tcp)
		if err != nil {
			return fmt.Errorf("the largest %s buffer of a socket there: %w", b.what, err)
		}
		if b.size > limit {
			return fmt.Errorf("the checkpoint holds a socket with a %s buffer of %d bytes, larger than the spec's user may make one (%d), which takes CAP_NET_ADMIN; the spec does not grant it", b.what, b.size, limit)
		}
	}
	return nil
}

// bufLimit returns the largest buffer the cold start's socket could have
// (see sockBufs), by core: "wmem" or "rmem", and for a TCP socket also
// the maximum of tcpName. Read once each.
func (c *fileChecks) bufLimit(core string, tcp bool, tcpName string) (uint32, error) {
	if c.limits == nil {
		c.limits = map[string]uint32{}
	}
	key := core + strconv.FormatBool(tcp)
	if v, ok := c.limits[key]; ok {
		return v, nil
	}
	var limit uint64
	for _, r := range []struct {
		name   string
		netns  bool
		factor uint64
	}{
		{"net.core." + core + "_max", false, 2},
		{"net.core." + core + "_default", false, 1},
		{tcpName, true, 1},
	} {
		if r.netns && !tcp {
			continue
		}
		read := c.net.node
		if r.netns {
			read = c.net.sysctl
		}
		value, err := read(r.name)
		if err != nil {
			return 0, err
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			return 0, fmt.Errorf("%s is empty", r.name)
		}
		v, err := strconv.ParseUint(fields[len(fields)-1], 10, 32)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", r.name, err)
		}
		limit = max(limit, v*r.factor)
	}
	c.limits[key] = uint32(min(limit, 1<<32-1))
	return c.limits[key], nil
}

// ttyName is what a TTY's file may be named: a pseudo-terminal of the
// container's devpts, or its multiplexer there.
var ttyName = regexp.MustCompile(`^/dev/pts/(ptmx|[0-9]+)$`)

// checkTTYs checks the files CRIU opens TTYs by: it opens each by its
// regular file's name, with the TTY's flags, then, as root, sets the
// file's mode from the image (fchmod) and the owner from tty-info.img
// (fchown), and writes the queued input into it. Anything but a
// pseudo-terminal of a devpts mount (where no symbolic link can be made:
// /dev's own names are on a tmpfs the images fill) would have CRIU chmod,
// chown or write another file the user can reach (a setuid copy of a
// program, say): refused, and so are setuid, setgid and sticky modes.
func checkTTYs(ttys []uint32, regs map[uint32]*regfile.RegFileEntry, mounts []*mnt.MntEntry) error {
	for _, id := range ttys {
		reg := regs[id]
		if reg == nil {
			return fmt.Errorf("a TTY is opened by file %#x, which files.img does not have", id)
		}
		devpts := false
		for _, m := range mounts {
			if int32(m.GetMntId()) == reg.GetMntId() {
				devpts = mnt.Fstype(m.GetFstype()) == mnt.Fstype_DEVPTS && m.GetMountpoint() == "/dev/pts"
			}
		}
		if !ttyName.MatchString(reg.GetName()) || !devpts {
			return fmt.Errorf("a TTY is opened by %s, which is not a pseudo-terminal of the devpts at /dev/pts; CRIU would set its mode and owner as root", reg.GetName())
		}
		if reg.GetMode()&0o7000 != 0 {
			return fmt.Errorf("a TTY (%s) has mode %#o, which CRIU would set as root", reg.GetName(), reg.GetMode())
		}
	}
	return nil
}

// usockExtern is CRIU's flag of a unix socket outside the checkpoint
// (USK_EXTERN), dumped with ext-unix-sk.
const usockExtern = 1

// unixPeers refuses a unix socket CRIU would connect by its peer's name
// to a socket outside the checkpoint: one flagged external (ext-unix-sk),
// or one no task holds, which CRIU does not make and connects to by name
// all the same. CRIU connects as root, in the task before it drops its
// credentials: the socket file's permissions are not checked, and the
// server sees the clone's credentials as root's (SO_PEERCRED). A cold
// start of root with CAP_DAC_OVERRIDE would connect the same way.
func (c *fileChecks) unixPeers(imagesDir string, names []string) error {
	if c.uid == 0 && c.granted(unix.CAP_DAC_OVERRIDE, false) {
		return nil
	}
	byIno := map[uint32]*skunix.UnixSkEntry{}
	for _, u := range c.unix {
		byIno[u.GetIno()] = u
	}
	var held map[uint32]bool
	for _, u := range c.unix {
		peer := byIno[u.GetPeer()]
		if u.GetPeer() == 0 || peer == nil {
			continue // no peer, or one CRIU does not find: it fails
		}
		if held == nil {
			var err error
			if held, err = heldFiles(imagesDir, names); err != nil {
				return err
			}
		}
		if peer.GetUflags()&usockExtern != 0 || !held[peer.GetId()] {
			return fmt.Errorf("a unix socket is connected to %q, outside the checkpoint, which CRIU would connect to as root; the spec's user (%d) has no CAP_DAC_OVERRIDE or is not root", peer.GetName(), c.uid)
		}
	}
	return nil
}

// heldFiles returns the ids of the files the checkpoint's tasks hold
// (fdinfo-*.img).
func heldFiles(imagesDir string, names []string) (map[uint32]bool, error) {
	held := map[uint32]bool{}
	for _, name := range names {
		if !strings.HasPrefix(name, "fdinfo-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		img, err := decodeImage(filepath.Join(imagesDir, name), &fdinfo.FdinfoEntry{})
		if err != nil {
			return nil, err
		}
		for _, e := range img.Entries {
			held[e.Message.(*fdinfo.FdinfoEntry).GetId()] = true
		}
	}
	return held, nil
}

// sockOpts checks the options CRIU sets on a socket it restores: a mark,
// or a priority above 6, takes CAP_NET_ADMIN (newer kernels also take
// CAP_NET_RAW, kernels before 5.17 do not: not counted); so do buffers
// larger than the cold start's could be (see sockBufs).
func (c *fileChecks) sockOpts(o *skopts.SkOptsEntry, tcp bool) error {
	if err := c.sockBufs(o, tcp); err != nil {
		return err
	}
	if o.GetSoMark() != 0 {
		if err := c.need(unix.CAP_NET_ADMIN, true, "a socket with a mark (SO_MARK)"); err != nil {
			return err
		}
	}
	if o.GetSoPriority() > 6 {
		return c.need(unix.CAP_NET_ADMIN, true, fmt.Sprintf("a socket with priority %d (SO_PRIORITY)", o.GetSoPriority()))
	}
	return nil
}

// remaps checks the files CRIU makes, or removes, itself, in a mount
// namespace of its own whose root is the node's: the stand-in of a deleted
// file the donor held open (a ghost file, created at the file's name, as
// root, with the image's owner and mode) and the link a link-remap dump
// made to one (removed after the restore, at its name in the deleted
// file's mount). A symbolic link on the way, which CRIU follows from the
// node's root, made it create a ghost file on the node. So each such name
// must be in a mount of the container's (the one its path is in, as CRIU
// lays mounts out in its older mode too) that is not read-only (CRIU
// would make it writable), and that is the root file system, a tmpfs or a
// bind mount of the node's (CRIU's error paths on proc and the like move
// up out of the mount); directly in that mount's root, or, in the root
// file system, under directories only: the root file system, as its
// layers merge (see layers.lookup), may show nothing but a directory at
// one of its parent directories.
type remaps struct {
	regs   map[uint32]*regfile.RegFileEntry
	mounts []*mnt.MntEntry
	layers *layers
	// ghosts are the ids of deleted files CRIU makes from their images;
	// links the names of the links a link-remap dump made, by the
	// deleted file's id.
	ghosts map[uint32]bool
	links  map[uint32]string
}

func (r *remaps) check(imagesDir string, names []string) error {
	if !slices.Contains(names, "remap-fpath.img") {
		return nil
	}
	img, err := decodeImage(filepath.Join(imagesDir, "remap-fpath.img"), &remapfilepath.RemapFilePathEntry{})
	if err != nil {
		return err
	}
	r.ghosts, r.links = map[uint32]bool{}, map[uint32]string{}
	for _, e := range img.Entries {
		rp := e.Message.(*remapfilepath.RemapFilePathEntry)
		typ, remapID := rp.GetRemapType(), rp.GetRemapId()
		if rp.RemapType == nil {
			// The format before the type: a flag in the id, as CRIU reads it.
			typ = remapfilepath.RemapType_LINKED
			if remapID&remapGhost != 0 {
				typ, remapID = remapfilepath.RemapType_GHOST, remapID&^remapGhost
			}
		}
		orig := r.regs[rp.GetOrigId()]
		if orig == nil {
			return fmt.Errorf("remap-fpath.img names file %#x, which files.img does not have", rp.GetOrigId())
		}
		switch typ {
		case remapfilepath.RemapType_GHOST:
			if err := r.made(orig.GetName(), orig.GetMntId(), "deleted file"); err != nil {
				return err
			}
			r.ghosts[rp.GetOrigId()] = true
		case remapfilepath.RemapType_LINKED:
			// CRIU opens the deleted file through the link inside the
			// container, and removes the link from its own namespace, at
			// the link's name in the deleted file's mount.
			link := r.regs[remapID]
			if link == nil {
				return fmt.Errorf("remap-fpath.img names file %#x, which files.img does not have", remapID)
			}
			if link.GetMntId() != orig.GetMntId() {
				return fmt.Errorf("the link %s to deleted file %s is in mount %d, the file in mount %d", link.GetName(), orig.GetName(), link.GetMntId(), orig.GetMntId())
			}
			if err := r.made(link.GetName(), orig.GetMntId(), "link to a deleted file"); err != nil {
				return err
			}
			if err := linkRemapName(link.GetName(), orig.GetName(), remapID); err != nil {
				return err
			}
			r.links[rp.GetOrigId()] = link.GetName()
		case remapfilepath.RemapType_PROCFS:
		default:
			return fmt.Errorf("remap-fpath.img has remap type %d", typ)
		}
	}
	return nil
}

// linkRemapName checks the name of a deleted file's link: once the
// restore is done, CRIU's own process removes it, as the node's root
// (clean_one_remap), whatever the container's user or user namespace. So
// it must be a link CRIU's dump made: link_remap.<its id> in the deleted
// file's directory, or in one above it where that one was gone
// (create_link_remap). Any other name could be another program's file,
// in a volume say, which the restore would remove.
func linkRemapName(link, deleted string, id uint32) error {
	want := "link_remap." + strconv.Itoa(int(int32(id))) // CRIU's %d
	dir, file := path.Dir(link), path.Base(link)
	if file != want || !path.IsAbs(link) || (dir != path.Dir(deleted) && !strings.HasPrefix(path.Dir(deleted), strings.TrimSuffix(dir, "/")+"/")) {
		return fmt.Errorf("the link %s to deleted file %s is not the %s CRIU's dump makes in the file's directory, and CRIU would remove it as root after the restore", link, deleted, want)
	}
	return nil
}

// remapGhost is the flag of a ghost file's remap id in CRIU's old format.
const remapGhost = 0x80000000

// made checks a name CRIU makes or removes in mount mntID (see remaps).
func (r *remaps) made(name string, mntID int32, what string) error {
	if err := checkFileName(name); err != nil {
		return err
	}
	var m *mnt.MntEntry
	for _, e := range r.mounts {
		if int32(e.GetMntId()) == mntID {
			m = e
		}
	}
	if m == nil {
		return fmt.Errorf("%s %s is in mount %d, which the checkpoint's mount namespace does not have", what, name, mntID)
	}
	if coveringMount(name, r.mounts) != m {
		return fmt.Errorf("%s %s is not in its mount at %s", what, name, m.GetMountpoint())
	}
	if isReadOnly(m) || m.GetSbFlags()&msRdonly != 0 {
		return fmt.Errorf("%s %s is in the read-only mount at %s, which CRIU would make writable for it", what, name, m.GetMountpoint())
	}
	isRoot := m.GetMountpoint() == "/"
	if !isRoot && mnt.Fstype(m.GetFstype()) != mnt.Fstype_TMPFS && m.GetExtKey() == "" {
		return fmt.Errorf("%s %s is in the %s mount at %s, where CRIU would not make it safely", what, name, mnt.Fstype(m.GetFstype()), m.GetMountpoint())
	}
	dir := path.Dir(strings.TrimPrefix(strings.TrimPrefix(name, m.GetMountpoint()), "/"))
	if dir == "." {
		return nil // directly in the mount's root
	}
	if !isRoot {
		return fmt.Errorf("%s %s is in a directory of the mount at %s, which snapboot cannot check for symbolic links", what, name, m.GetMountpoint())
	}
	found, err := r.layers.lookup(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, name, err)
	}
	for _, e := range found {
		if !e.fi.IsDir() {
			kind := "a file"
			if e.fi.Mode()&os.ModeSymlink != 0 {
				kind = "a symbolic link"
			}
			return fmt.Errorf("%s %s: /%s is not a directory but %s in layer %d of the root file system (CRIU makes the file from the node's root, and would follow a link)",
				what, name, path.Join(splitPath(dir)[:len(found)]...), kind, e.layer)
		}
	}
	return nil
}

// checkFileName refuses a file name that is not an absolute path in
// canonical form, as CRIU dumps them.
func checkFileName(name string) error {
	if !path.IsAbs(name) || path.Clean(name) != name || strings.ContainsRune(name, 0) {
		return fmt.Errorf("the checkpoint has a file named %q, not a canonical absolute path", name)
	}
	return nil
}

// maxGhostEntry bounds an entry of a ghost file image (its metadata, or a
// chunk's).
const maxGhostEntry = 64 << 10

// checkGhost refuses a ghost file (a deleted file the donor held open,
// which CRIU creates again, as root, with the image's owner and mode)
// that is not a regular file or a FIFO (a device a cold start could not
// make; a symbolic link later ghost files could be made through; a
// directory CRIU would take over if it exists), that is setuid or setgid
// (the clone could run it with its owner's ids), or whose image is not
// what CRIU writes: a malformed one makes CRIU fail without an error
// number, and retry one directory up, out of the mount, or copy forever.
func checkGhost(p string) error {
	base := filepath.Base(p)
	f, fi, err := openImage(p, "GHOST_FILE")
	if err != nil {
		return err
	}
	defer f.Close()
	var g ghostfile.GhostFileEntry
	if err := readGhostEntry(f, &g); err != nil {
		return fmt.Errorf("%s: %w", base, err)
	}
	mode := g.GetMode()
	switch mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFIFO:
	default:
		return fmt.Errorf("%s is a deleted file of mode %o, which CRIU would make again; only regular files and FIFOs are restored", base, mode)
	}
	if mode&(unix.S_ISUID|unix.S_ISGID) != 0 {
		return fmt.Errorf("%s is a deleted setuid or setgid file (mode %o), which CRIU would make again", base, mode)
	}
	if mode&unix.S_IFMT != unix.S_IFREG || !g.GetChunks() {
		return nil // the rest is the content, to the end
	}
	if g.Size == nil {
		return fmt.Errorf("%s: chunks without a size", base)
	}
	for {
		pos, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		if pos == fi.Size() {
			return nil
		}
		var c ghostfile.GhostChunkEntry
		if err := readGhostEntry(f, &c); err != nil {
			return fmt.Errorf("%s: chunk at %d: %w", base, pos, err)
		}
		if c.GetOff() > g.GetSize() || c.GetLen() > g.GetSize()-c.GetOff() {
			return fmt.Errorf("%s: chunk of %d bytes at %d, past the file's %d", base, c.GetLen(), c.GetOff(), g.GetSize())
		}
		if rest := fi.Size() - pos; c.GetLen() > uint64(rest) {
			return fmt.Errorf("%s: chunk of %d bytes, %d left in the image", base, c.GetLen(), rest)
		}
		if _, err := f.Seek(int64(c.GetLen()), io.SeekCurrent); err != nil {
			return err
		}
	}
}

// readGhostEntry reads one entry of a ghost file image: its size, then
// the entry.
func readGhostEntry(f *os.File, msg proto.Message) error {
	var size [4]byte
	if _, err := io.ReadFull(f, size[:]); err != nil {
		return err
	}
	n := binary.LittleEndian.Uint32(size[:])
	if n > maxGhostEntry {
		return fmt.Errorf("an entry of %d bytes", n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(f, buf); err != nil {
		return err
	}
	return proto.Unmarshal(buf, msg)
}

package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	ghostfile "github.com/checkpoint-restore/go-criu/v7/crit/images/ghost-file"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/regfile"
	remapfilepath "github.com/checkpoint-restore/go-criu/v7/crit/images/remap-file-path"
	skopts "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-opts"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/snapboot/snapboot/restorehook"
)

// legacyFileImages are the per-kind file images of CRIU's old format. CRIU
// reads them only for a checkpoint without files.img, which then escapes
// checkFiles: refused.
var legacyFileImages = []string{"reg-files.img", "ext-files.img", "ns-files.img", "eventfd.img", "eventpoll.img",
	"signalfd.img", "inotify.img", "fanotify.img", "unixsk.img", "inetsk.img", "packetsk.img", "netlinksk.img",
	"tunfile.img", "timerfd.img", "fifo.img", "pipes.img", "tty.img"}

// netSpec says where the container's sockets live, for the capability
// checks of checkFiles.
type netSpec struct {
	// capsCount: the spec's capabilities count in the container's network
	// namespace (no user namespace, or one that owns a network namespace
	// runc makes).
	capsCount bool
	// portStart returns net.ipv4.ip_unprivileged_port_start there.
	portStart func() (uint32, error)
}

// defaultPortStart is the kernel's net.ipv4.ip_unprivileged_port_start in
// a new network namespace.
const defaultPortStart = 1024

func netSpecFor(spec *specs.Spec, portStartIn func(path string) (uint32, error)) netSpec {
	_, userns := restorehook.SpecNamespace(spec, specs.UserNamespace)
	netns, has := restorehook.SpecNamespace(spec, specs.NetworkNamespace)
	n := netSpec{capsCount: !userns || (has && netns.Path == "")}
	switch {
	case has && netns.Path == "":
		// runc's, where snapboot's restore hook writes the spec's
		// sysctls before CRIU restores the sockets.
		n.portStart = func() (uint32, error) {
			for key, value := range spec.Linux.Sysctl {
				if restorehook.SysctlKey(key) == "net.ipv4.ip_unprivileged_port_start" {
					v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
					return uint32(v), err
				}
			}
			return defaultPortStart, nil
		}
	case portStartIn == nil:
		n.portStart = func() (uint32, error) { return 0, errors.New("unknown on this host") }
	case has:
		n.portStart = func() (uint32, error) { return portStartIn(netns.Path) }
	default:
		n.portStart = func() (uint32, error) { return portStartIn("") }
	}
	return n
}

// checkFiles refuses a checkpoint whose tasks hold a file CRIU would make
// for them with a privilege their spec does not grant: CRIU opens, binds
// and creates every file as root, before it narrows the tasks'
// capabilities. A cold start could not have made it. So are refused:
//   - a file name that is not an absolute path without "." or ".."
//     (CRIU dumps canonical paths; one that climbs out of its mount made
//     CRIU create a deleted file's stand-in, a ghost file, on the node);
//   - a ghost file that is a device node, or setuid or setgid;
//   - without CAP_NET_RAW, a packet or raw socket; without
//     CAP_NET_BIND_SERVICE, a socket on a port below the network
//     namespace's ip_unprivileged_port_start; without CAP_NET_ADMIN, a
//     socket with a mark or a priority above 6, or a TUN device;
//   - without CAP_SYS_ADMIN, a fanotify group; without CAP_BPF (or
//     CAP_SYS_ADMIN), a BPF map; without CAP_WAKE_ALARM, an alarm timer.
func checkFiles(imagesDir string, names []string, spec *specs.Spec, m masks, net netSpec, mounts []*mnt.MntEntry, rootLayers []string) error {
	has := func(name string) bool { return slices.Contains(names, name) }
	if !has("files.img") {
		for _, legacy := range legacyFileImages {
			if has(legacy) {
				return fmt.Errorf("%w: the checkpoint has files in CRIU's old format (%s), which CRIU would restore unchecked", ErrRefused, legacy)
			}
		}
		if has("remap-fpath.img") {
			return fmt.Errorf("%w: the checkpoint remaps files (remap-fpath.img) but has no files.img", ErrRefused)
		}
	} else {
		img, err := decodeImage(filepath.Join(imagesDir, "files.img"), &fdinfo.FileEntry{})
		if err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
		_, userns := restorehook.SpecNamespace(spec, specs.UserNamespace)
		c := fileChecks{m: m, net: net, hostCaps: !userns}
		regs := map[uint32]*regfile.RegFileEntry{}
		for _, e := range img.Entries {
			fe := e.Message.(*fdinfo.FileEntry)
			if err := c.check(fe); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
			if reg := fe.GetReg(); reg != nil {
				regs[reg.GetId()] = reg
			}
		}
		if err := checkRemaps(imagesDir, names, regs, mounts, rootLayers); err != nil {
			return fmt.Errorf("%w: %w", ErrRefused, err)
		}
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
	m        masks
	net      netSpec
	hostCaps bool // the spec's capabilities are the node's (no user namespace)
	start    *uint32
}

// granted reports whether the spec lets the app have capability c: in its
// permitted set, counted where it applies (the node, or the container's
// network namespace).
func (c *fileChecks) granted(cap int, network bool) bool {
	if network && !c.net.capsCount || !network && !c.hostCaps {
		return false
	}
	return c.m.prm&(1<<uint(cap)) != 0
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
	}
	return "capability " + strconv.Itoa(c)
}

func (c *fileChecks) check(fe *fdinfo.FileEntry) error {
	switch fe.GetType() {
	case fdinfo.FdTypes_REG:
		return checkFileName(fe.GetReg().GetName())
	case fdinfo.FdTypes_INETSK:
		sk := fe.GetIsk()
		if sk.GetType() == unix.SOCK_RAW {
			if err := c.need(unix.CAP_NET_RAW, true, "a raw socket"); err != nil {
				return err
			}
		}
		if port := sk.GetSrcPort(); port != 0 {
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
		return c.sockOpts(sk.GetOpts())
	case fdinfo.FdTypes_PACKETSK:
		if err := c.need(unix.CAP_NET_RAW, true, "a packet socket"); err != nil {
			return err
		}
		return c.sockOpts(fe.GetPsk().GetOpts())
	case fdinfo.FdTypes_NETLINKSK:
		return c.sockOpts(fe.GetNlsk().GetOpts())
	case fdinfo.FdTypes_UNIXSK:
		return c.sockOpts(fe.GetUsk().GetOpts())
	case fdinfo.FdTypes_TUNF:
		return c.need(unix.CAP_NET_ADMIN, true, "a TUN/TAP device")
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

// sockOpts checks the options CRIU sets on a socket it restores.
func (c *fileChecks) sockOpts(o *skopts.SkOptsEntry) error {
	if o.GetSoMark() != 0 {
		if err := c.need(unix.CAP_NET_ADMIN, true, "a socket with a mark (SO_MARK)"); err != nil {
			return err
		}
	}
	if o.GetSoPriority() > 6 && !c.granted(unix.CAP_NET_RAW, true) {
		return c.need(unix.CAP_NET_ADMIN, true, fmt.Sprintf("a socket with priority %d (SO_PRIORITY)", o.GetSoPriority()))
	}
	return nil
}

// checkFileName refuses a file name that is not an absolute path in
// canonical form, as CRIU dumps them: CRIU makes some files (ghost files,
// link remaps) from the name in a mount namespace of its own.
func checkFileName(name string) error {
	if !path.IsAbs(name) || path.Clean(name) != name || strings.ContainsRune(name, 0) {
		return fmt.Errorf("the checkpoint has a file named %q, not a canonical absolute path", name)
	}
	return nil
}

// checkRemaps checks the files CRIU makes, or removes, itself, in a mount
// namespace of its own, where the container's root is not the root: the
// stand-in of a deleted file the donor held open (a ghost file, created
// at its name, as root), and the link to one that the dump made
// (link-remap, removed after the restore). A symbolic link on the way,
// which CRIU follows from the node's root, made it create the ghost file
// on the node. So each such name must be in a mount of the container's
// that is not read-only (CRIU would make it writable), directly in that
// mount's root, or, in the root file system, under directories only: no
// layer of it (rootLayers, topmost first) may have anything else at any
// of its parent directories.
func checkRemaps(imagesDir string, names []string, regs map[uint32]*regfile.RegFileEntry, mounts []*mnt.MntEntry, rootLayers []string) error {
	if !slices.Contains(names, "remap-fpath.img") {
		return nil
	}
	img, err := decodeImage(filepath.Join(imagesDir, "remap-fpath.img"), &remapfilepath.RemapFilePathEntry{})
	if err != nil {
		return err
	}
	byID := map[int32]*mnt.MntEntry{}
	var root *mnt.MntEntry
	for _, m := range mounts {
		byID[int32(m.GetMntId())] = m
		if m.GetMountpoint() == "/" {
			root = m
		}
	}
	layers := make([]*os.Root, 0, len(rootLayers))
	defer func() {
		for _, l := range layers {
			l.Close()
		}
	}()
	for _, dir := range rootLayers {
		l, err := os.OpenRoot(dir)
		if err != nil {
			return fmt.Errorf("a layer of the container's root file system: %w", err)
		}
		layers = append(layers, l)
	}
	made := func(id uint32, what string) error {
		reg := regs[id]
		if reg == nil {
			return fmt.Errorf("remap-fpath.img names file %#x, which files.img does not have", id)
		}
		name := reg.GetName()
		if err := checkFileName(name); err != nil {
			return err
		}
		m := byID[reg.GetMntId()]
		if m == nil {
			return fmt.Errorf("%s %s is in mount %d, which the checkpoint does not have", what, name, reg.GetMntId())
		}
		if isReadOnly(m) || m.GetSbFlags()&msRdonly != 0 {
			return fmt.Errorf("%s %s is in the read-only mount at %s, which CRIU would make writable for it", what, name, m.GetMountpoint())
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(name, m.GetMountpoint()), "/")
		if m.GetMountpoint() != "/" && !strings.HasPrefix(name, m.GetMountpoint()+"/") {
			return fmt.Errorf("%s %s is not in its mount at %s", what, name, m.GetMountpoint())
		}
		dir := path.Dir(rel)
		if dir == "." {
			return nil // directly in the mount's root
		}
		if m != root {
			return fmt.Errorf("%s %s is in a directory of the mount at %s, which snapboot cannot check for symbolic links", what, name, m.GetMountpoint())
		}
		if len(layers) == 0 {
			return fmt.Errorf("%s %s: the container's root file system has no layers snapboot can check for symbolic links", what, name)
		}
		parts := strings.Split(dir, "/")
		for i := range parts {
			prefix := strings.Join(parts[:i+1], "/")
			for j, l := range layers {
				fi, err := l.Lstat(prefix)
				if errors.Is(err, os.ErrNotExist) {
					continue
				}
				if err != nil {
					return fmt.Errorf("%s %s: /%s in layer %d of the root file system: %w", what, name, prefix, j, err)
				}
				if !fi.IsDir() {
					kind := "a file"
					if fi.Mode()&os.ModeSymlink != 0 {
						kind = "a symbolic link"
					}
					return fmt.Errorf("%s %s: /%s is not a directory but %s in layer %d of the root file system (CRIU makes the file from the node's root, and would follow a link)", what, name, prefix, kind, j)
				}
			}
		}
		return nil
	}
	for _, e := range img.Entries {
		r := e.Message.(*remapfilepath.RemapFilePathEntry)
		typ, remapID := r.GetRemapType(), r.GetRemapId()
		if r.RemapType == nil {
			// The format before the type: a flag in the id, as CRIU reads it.
			typ = remapfilepath.RemapType_LINKED
			if remapID&remapGhost != 0 {
				typ, remapID = remapfilepath.RemapType_GHOST, remapID&^remapGhost
			}
		}
		switch typ {
		case remapfilepath.RemapType_GHOST:
			if err := made(r.GetOrigId(), "deleted file"); err != nil {
				return err
			}
		case remapfilepath.RemapType_LINKED:
			if err := made(r.GetOrigId(), "deleted file"); err != nil {
				return err
			}
			if err := made(remapID, "link to a deleted file"); err != nil {
				return err
			}
		case remapfilepath.RemapType_PROCFS:
		default:
			return fmt.Errorf("remap-fpath.img has remap type %d", typ)
		}
	}
	return nil
}

// remapGhost is the flag of a ghost file's remap id in CRIU's old format.
const remapGhost = 0x80000000

// maxGhostEntry bounds a ghost file image's entry (its metadata; the
// file's content follows it).
const maxGhostEntry = 64 << 10

// checkGhost refuses a ghost file (a deleted file the donor held open,
// which CRIU creates again, as root) that is a device node, or setuid or
// setgid: the clone would hold a device a cold start could not make, or
// could run a file with its owner's ids (CRIU gives it the image's owner).
func checkGhost(p string) error {
	g, err := readGhostEntry(p)
	if err != nil {
		return err
	}
	mode := g.GetMode()
	switch mode & unix.S_IFMT {
	case unix.S_IFCHR, unix.S_IFBLK:
		return fmt.Errorf("%s is a deleted device node, which CRIU would make again", filepath.Base(p))
	}
	if mode&unix.S_IFMT == unix.S_IFLNK {
		// CRIU would make it before the ghost files under it, and follow it.
		return fmt.Errorf("%s is a deleted symbolic link, which CRIU would make again", filepath.Base(p))
	}
	if mode&(unix.S_ISUID|unix.S_ISGID) != 0 && mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("%s is a deleted setuid or setgid file (mode %o), which CRIU would make again", filepath.Base(p), mode)
	}
	return nil
}

// readGhostEntry reads a ghost file image's entry: its magic, the entry's
// size and the entry (the file's content that follows is not read).
func readGhostEntry(p string) (*ghostfile.GhostFileEntry, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	magic, err := crit.ReadMagic(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	if magic != "GHOST_FILE" {
		return nil, fmt.Errorf("%s: a %s image, want GHOST_FILE", filepath.Base(p), magic)
	}
	var size [4]byte
	if _, err := io.ReadFull(f, size[:]); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	n := binary.LittleEndian.Uint32(size[:])
	if n > maxGhostEntry {
		return nil, fmt.Errorf("%s: an entry of %d bytes", filepath.Base(p), n)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	var g ghostfile.GhostFileEntry
	if err := proto.Unmarshal(buf, &g); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
	}
	return &g, nil
}

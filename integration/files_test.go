//go:build integration && linux

package integration

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/fdinfo"
	ghostfile "github.com/checkpoint-restore/go-criu/v7/crit/images/ghost-file"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// watchCreates reports the names created in dir from now on, until stop
// is called.
func watchCreates(t *testing.T, dir string) (stop func() []string) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE); err != nil {
		unix.Close(fd)
		t.Fatal(err)
	}
	return func() []string {
		defer unix.Close(fd)
		var names []string
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				return names
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				names = append(names, string(bytes.TrimRight(name, "\x00")))
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// ghostScript holds a deleted file open on fd 5 (CRIU dumps it as a ghost
// file, and creates it again at restore, as root) and counts.
const ghostScript = `ln -sfn /var/tmp /tmp/out; exec 5>/tmp/ghost; echo secret >&5; rm /tmp/ghost; ` + counterScript

// renameGhost renames the file the donor held open in its checkpoint.
func renameGhost(name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		renamed := 0
		editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
			for _, e := range img.Entries {
				if reg := e.Message.(*fdinfo.FileEntry).GetReg(); reg != nil && reg.GetName() == "/tmp/ghost" {
					reg.Name = proto.String(name)
					renamed++
				}
			}
		})
		if renamed != 1 {
			t.Fatalf("%d files named /tmp/ghost in the checkpoint, want 1", renamed)
		}
	}
}

// expectRestored waits for clone's restore (not a cold start) and for it
// to count on.
func expectRestored(t *testing.T, offset int64, clone, cloneLog string) {
	t.Helper()
	if line := logLine(t, offset, "snapboot.", clone, 60*time.Second); !strings.Contains(line, "event=snapboot.restore") {
		t.Fatalf("not restored: %s", line)
	}
	if ns := waitCount(t, cloneLog, 3); ns[0] == 1 {
		t.Fatal("the clone cold-started")
	}
}

// rootMountID is the mount id of / in process pid's mount namespace.
func rootMountID(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/" {
			return f[0]
		}
	}
	t.Fatalf("no root mount in /proc/%d/mountinfo", pid)
	return ""
}

// fdMountID is the mount id of process pid's file descriptor fd.
func fdMountID(t *testing.T, pid, fd int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "mnt_id:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no mnt_id in fdinfo %d of %d", fd, pid)
	return ""
}

// TestCraftedFileNamesStayInTheContainer restores checkpoints whose
// deleted-but-open file was renamed to lead out of the container. CRIU
// makes such a file again (a ghost file) as root, in a mount namespace of
// its own whose root is the node's: through the container's symbolic link
// /tmp/out -> /var/tmp, it created /var/tmp/<name>.cr.1.ghost on the node
// (4 runs of 4; with a name that climbs out with "..", in one run of
// several). Both are refused now; the untouched checkpoint is restored,
// its deleted file in the container's root file system.
func TestCraftedFileNamesStayInTheContainer(t *testing.T) {
	requireShim(t)
	const probe = "snapboot-ghost-escape-probe"
	donor, donorLog := startScriptClone(t, "", ghostScript)
	waitCount(t, donorLog, 5)
	for i, c := range []struct {
		name, path, refusal string
	}{
		{"untouched", "/tmp/ghost", ""},
		{"dot-dot", strings.Repeat("/..", 24) + "/var/tmp/" + probe, "not a canonical absolute path"},
		{"symbolic link", "/tmp/out/" + probe, "/tmp/out is not a directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ck := packAndPush(t, donor, registryAddr+"/it/crafted:ghost-"+strconv.Itoa(i), packOptions{tamper: renameGhost(c.path)})
			stop := watchCreates(t, "/var/tmp")
			offset := containerdLogOffset()
			clone, cloneLog := startScriptClone(t, ck.Ref, ghostScript)
			if c.refusal != "" {
				expectSpecFallback(t, offset, clone, cloneLog, c.refusal)
			} else {
				expectRestored(t, offset, clone, cloneLog)
				pid := taskPID(t, clone)
				if got, root := fdMountID(t, pid, 5), rootMountID(t, pid); got != root {
					t.Errorf("the clone's fd 5 is on mount %s, not its root file system (%s)", got, root)
				}
			}
			for _, n := range stop() {
				if strings.HasPrefix(n, probe) {
					t.Errorf("the restore created /var/tmp/%s on the node", n)
				}
			}
		})
	}
}

// setGhostMode rewrites the mode in every ghost file image of dir (the
// file's content after the entry is kept).
func setGhostMode(mode uint32) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		paths, _ := filepath.Glob(filepath.Join(dir, "ghost-file-*.img"))
		if len(paths) == 0 {
			t.Fatal("no ghost file in the checkpoint")
		}
		for _, p := range paths {
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			// IMG_COMMON, GHOST_FILE, the entry's size, the entry, content.
			n := binary.LittleEndian.Uint32(data[8:12])
			var g ghostfile.GhostFileEntry
			if err := proto.Unmarshal(data[12:12+n], &g); err != nil {
				t.Fatal(err)
			}
			g.Mode = proto.Uint32(g.GetMode()&unix.S_IFMT | mode)
			entry, err := proto.Marshal(&g)
			if err != nil {
				t.Fatal(err)
			}
			out := append(binary.LittleEndian.AppendUint32(append([]byte{}, data[:8]...), uint32(len(entry))), entry...)
			if err := os.WriteFile(p, append(out, data[12+n:]...), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestCraftedSetuidGhostColdStarts restores a checkpoint whose ghost file
// was made setuid: CRIU would create it so, owned by root, and the clone
// could run it through its descriptor with root's ids.
func TestCraftedSetuidGhostColdStarts(t *testing.T) {
	requireShim(t)
	donor, donorLog := startScriptClone(t, "", ghostScript)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:setuid-ghost", packOptions{tamper: setGhostMode(unix.S_ISUID | 0o755)})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, ghostScript)
	expectSpecFallback(t, offset, clone, cloneLog, "setuid or setgid")
}

// TestPrivilegedSocketsNeedTheirCapabilities restores a donor that listens
// on port 80 and pings (a raw socket) into clones whose spec drops
// CAP_NET_BIND_SERVICE or CAP_NET_RAW: CRIU binds and opens sockets as
// root, so the clone would hold what its cold start could not make.
func TestPrivilegedSocketsNeedTheirCapabilities(t *testing.T) {
	requireShim(t)
	const script = `httpd -p 80 -h /tmp; ping -q 127.0.0.1 >/dev/null 2>&1 & ` + counterScript
	donor, donorLog := startScriptClone(t, "", script)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:sockets", packOptions{})
	for _, c := range []struct{ drop, reason string }{
		{"CAP_NET_BIND_SERVICE", "port 80"},
		{"CAP_NET_RAW", "raw socket"},
	} {
		t.Run(c.drop, func(t *testing.T) {
			offset := containerdLogOffset()
			clone, cloneLog := startScriptClone(t, ck.Ref, script, "--cap-drop", c.drop)
			expectSpecFallback(t, offset, clone, cloneLog, c.reason)
		})
	}
	t.Run("both granted", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script)
		logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		if ns := waitCount(t, cloneLog, 3); ns[0] == 1 {
			t.Fatal("the clone cold-started")
		}
	})
}

// asNobody edits every task's credentials in dir to nobody's, and the
// signal owner's of each file that has one (a lease sets it): a donor
// running as nobody cannot be dumped on this machine (CRIU, without
// CAP_SYS_RESOURCE here, may not read another user's limits).
func asNobody(t *testing.T, dir string) {
	editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
		for _, e := range img.Entries {
			if o := e.Message.(*fdinfo.FileEntry).GetReg().GetFown(); o.GetPid() != 0 {
				o.Uid, o.Euid = proto.Uint32(65534), proto.Uint32(65534)
			}
		}
	})
	editImages(t, dir, "core-*.img", &criucore.CoreEntry{}, func(img *crit.CriuImage) {
		cr := img.Entries[0].Message.(*criucore.CoreEntry).GetThreadCore().GetCreds()
		if cr == nil {
			return // a zombie's
		}
		n := proto.Uint32(65534)
		cr.Uid, cr.Euid, cr.Suid, cr.Fsuid, cr.Gid, cr.Egid, cr.Sgid, cr.Fsgid = n, n, n, n, n, n, n, n
		cr.Groups = nil
	})
}

// TestFileOpenedAsRootNeedsItsPermissions restores checkpoints of a donor
// that holds /etc/hosts open, edited to run as nobody, into clones that
// run as nobody without capabilities. In one, the file was renamed to
// /etc/shadow, root's only: CRIU opens every file as root, so the clone
// would hold a file its cold start could not open.
func TestFileOpenedAsRootNeedsItsPermissions(t *testing.T) {
	requireShim(t)
	const script = `exec 4</etc/hosts; i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`
	donor, donorLog := startScriptClone(t, "", script)
	waitCount(t, donorLog, 5)
	for i, c := range []struct {
		name, file, refusal string
	}{
		{"its own file", "/etc/hosts", ""},
		{"root's file", "/etc/shadow", "may not read"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ck := packAndPush(t, donor, registryAddr+"/it/crafted:held-"+strconv.Itoa(i), packOptions{tamper: func(t *testing.T, dir string) {
				asNobody(t, dir)
				renamed := 0
				editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
					for _, e := range img.Entries {
						if reg := e.Message.(*fdinfo.FileEntry).GetReg(); reg != nil && reg.GetName() == "/etc/hosts" {
							reg.Name, reg.Size = proto.String(c.file), nil // CRIU compares a size it has
							renamed++
						}
					}
				})
				if renamed != 1 {
					t.Fatalf("%d files named /etc/hosts in the checkpoint, want 1", renamed)
				}
			}})
			offset := containerdLogOffset()
			clone, cloneLog := startScriptClone(t, ck.Ref, script, append([]string{"--user", "65534:65534"}, dropAll...)...)
			if c.refusal != "" {
				expectSpecFallback(t, offset, clone, cloneLog, c.refusal)
				return
			}
			expectRestored(t, offset, clone, cloneLog)
			if got := statusField(t, taskPID(t, clone), "Uid"); !strings.HasPrefix(got, "65534") {
				t.Errorf("the clone runs as %s, want nobody", got)
			}
		})
	}
}

// TestInotifyWatchNeedsItsPath restores a donor that watches /etc with
// inotify: restored, with the path CRIU dumped. With the path taken out
// of the images, CRIU would find the watched directory by its file handle
// alone, as root, on any mount of its file system: refused.
func TestInotifyWatchNeedsItsPath(t *testing.T) {
	requireShim(t)
	script, flags := buildProgram(t, "watch", watchProgram)
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	for i, c := range []struct {
		name    string
		tamper  bool
		refusal string
	}{
		{"as dumped", false, ""},
		{"by file handle alone", true, "without a path"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ck := packAndPush(t, donor, registryAddr+"/it/crafted:inotify-"+strconv.Itoa(i), packOptions{tamper: func(t *testing.T, dir string) {
				watches := 0
				editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
					for _, e := range img.Entries {
						for _, wd := range e.Message.(*fdinfo.FileEntry).GetIfy().GetWd() {
							if wd.GetFHandle().GetPath() == "" {
								t.Fatalf("CRIU dumped a watch without a path: %v", wd)
							}
							if c.tamper {
								wd.FHandle.Path = nil
							}
							watches++
						}
					}
				})
				if watches == 0 {
					t.Fatal("no inotify watch in the checkpoint")
				}
			}})
			offset := containerdLogOffset()
			clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
			if c.refusal != "" {
				expectSpecFallback(t, offset, clone, cloneLog, c.refusal)
				return
			}
			expectRestored(t, offset, clone, cloneLog)
		})
	}
}

// watchProgram watches /etc with inotify (a directory CRIU finds by
// name: its hints hold /etc; it could not dump a watch on /tmp here) and counts, as counterScript
// does.
const watchProgram = `package main

import (
	"fmt"
	"syscall"
	"time"
)

func main() {
	fd, err := syscall.InotifyInit()
	if err != nil {
		panic(err)
	}
	if _, err := syscall.InotifyAddWatch(fd, "/etc", syscall.IN_CREATE); err != nil {
		panic(err)
	}
	for i := 1; ; i++ {
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
	}
}
`

// TestNetlinkGroupsNeedTheirCapabilities restores a donor with
// CAP_NET_ADMIN that holds a route netlink socket in the link group and in
// the IPv4 multicast routing group, which the kernel lets only
// CAP_NET_ADMIN join. CRIU joins the groups again as root: a clone
// without the capability cold-starts, with the reason; one with it gets
// both groups back. A donor whose socket is connected to the kernel
// cold-starts even with the capability: CRIU would connect the clone's to
// group 32.
func TestNetlinkGroupsNeedTheirCapabilities(t *testing.T) {
	requireShim(t)
	script, flags := buildProgram(t, "netlink", netlinkProgram)
	donor, donorLog := startScriptClone(t, "", script, append(flags, "--cap-add", "CAP_NET_ADMIN")...)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:netlink", packOptions{})

	t.Run("without CAP_NET_ADMIN", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
		expectSpecFallback(t, offset, clone, cloneLog, "NETLINK_ROUTE socket in multicast group 30")
		if groups := netlinkGroups(t, clone); !slices.Equal(groups, []string{"00000001"}) {
			t.Errorf("the cold start's route netlink sockets are in groups %v, want the link group only (00000001)", groups)
		}
	})
	t.Run("with CAP_NET_ADMIN", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, append(flags, "--cap-add", "CAP_NET_ADMIN")...)
		expectRestored(t, offset, clone, cloneLog)
		// RTNLGRP_LINK and RTNLGRP_IPV4_MROUTE_R
		if groups := netlinkGroups(t, clone); !slices.Equal(groups, []string{"20000001"}) {
			t.Errorf("the clone's route netlink sockets are in groups %v, want 20000001", groups)
		}
	})
	t.Run("connected to the kernel", func(t *testing.T) {
		script := script + " connect"
		flags := append(flags, "--cap-add", "CAP_NET_ADMIN")
		donor, donorLog := startScriptClone(t, "", script, flags...)
		waitCount(t, donorLog, 5)
		ck := packAndPush(t, donor, registryAddr+"/it/crafted:netlink-connected", packOptions{})
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
		expectSpecFallback(t, offset, clone, cloneLog, "connected to port 0 without a group, which CRIU would connect to group 32")
	})
}

// netlinkGroups lists the first 32 groups, in hex, of each route netlink
// socket of a process in a task's network namespace (/proc/net/netlink: sk, protocol,
// port id, groups, ...).
func netlinkGroups(t *testing.T, id string) []string {
	t.Helper()
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/netlink", taskPID(t, id)))
	if err != nil {
		t.Fatal(err)
	}
	var groups []string
	for _, line := range strings.Split(string(table), "\n")[1:] {
		if f := strings.Fields(line); len(f) > 3 && f[1] == "0" && f[2] != "0" { // not the kernel's
			groups = append(groups, f[3])
		}
	}
	return groups
}

const netlinkProgram = `package main

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

func main() {
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_RAW, syscall.NETLINK_ROUTE)
	if err != nil {
		panic(err)
	}
	if len(os.Args) > 1 && os.Args[1] == "connect" {
		// To the kernel: port 0, no group.
		err = syscall.Connect(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK})
	} else {
		err = join(fd)
	}
	if err != nil {
		panic(err)
	}
	for i := 1; ; i++ {
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
	}
}

func join(fd int) error {
	// RTNLGRP_LINK (1) and RTNLGRP_IPV4_MROUTE_R (30), which takes
	// CAP_NET_ADMIN; without it, the link group only.
	err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK, Groups: 1<<0 | 1<<29})
	if err == syscall.EPERM {
		err = syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK, Groups: 1 << 0})
	}
	return err
}
`

// TestLeaseNeedsTheFilesOwner restores a donor that holds a read lease on
// /etc/hosts, root's. CRIU takes leases again as the file's owner: as
// dumped, the clone (root) has its lease; with the images edited to run
// as nobody, a clone that runs as nobody without CAP_LEASE, which the
// kernel would refuse the lease, cold-starts.
func TestLeaseNeedsTheFilesOwner(t *testing.T) {
	requireShim(t)
	script, flags := buildProgram(t, "lease", leaseProgram)
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	if got := leases(t, donor); got != 1 {
		t.Fatalf("the donor holds %d leases, want 1", got)
	}
	t.Run("as dumped", func(t *testing.T) {
		ck := packAndPush(t, donor, registryAddr+"/it/crafted:lease", packOptions{})
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
		expectRestored(t, offset, clone, cloneLog)
		if got := leases(t, clone); got != 1 {
			t.Errorf("the clone holds %d leases, want 1", got)
		}
	})
	t.Run("as nobody", func(t *testing.T) {
		ck := packAndPush(t, donor, registryAddr+"/it/crafted:lease-nobody", packOptions{tamper: func(t *testing.T, dir string) { asNobody(t, dir) }})
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, append(append([]string{"--user", "65534:65534"}, dropAll...), flags...)...)
		expectSpecFallback(t, offset, clone, cloneLog, "lease on /etc/hosts, owned by uid 0")
		if got := leases(t, clone); got != 0 {
			t.Errorf("the cold start holds %d leases, want none", got)
		}
	})
}

// leases counts the leases a task's process holds (/proc/locks: number,
// kind, ..., pid, ...).
func leases(t *testing.T, id string) int {
	t.Helper()
	table, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	pid, n := strconv.Itoa(taskPID(t, id)), 0
	for _, line := range strings.Split(string(table), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[1] == "LEASE" && f[4] == pid {
			n++
		}
	}
	return n
}

const leaseProgram = `package main

import (
	"fmt"
	"os"
	"syscall"
	"time"
)

func main() {
	fd, err := syscall.Open("/etc/hosts", syscall.O_RDONLY, 0)
	if err != nil {
		panic(err)
	}
	// F_SETLEASE, F_RDLCK: the owner's (or CAP_LEASE's) only.
	if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), 1024, syscall.F_RDLCK); errno != 0 {
		fmt.Fprintln(os.Stderr, "no lease:", errno)
	}
	for i := 1; ; i++ {
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
	}
}
`

// TestSignalOwnerIsTheSpecsUser restores a donor's checkpoint edited to
// run as nobody, with /etc/hosts, which it holds open, set to send its signals (F_SETOWN_EX)
// to PID 1 as root: CRIU would set that owner as root, and a root owner's
// SIGIO reaches any process. A clone that runs as nobody cold-starts.
func TestSignalOwnerIsTheSpecsUser(t *testing.T) {
	requireShim(t)
	const script = `exec 4</etc/hosts; i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`
	donor, donorLog := startScriptClone(t, "", script)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:fown", packOptions{tamper: func(t *testing.T, dir string) {
		asNobody(t, dir)
		edited := 0
		editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
			for _, e := range img.Entries {
				if reg := e.Message.(*fdinfo.FileEntry).GetReg(); reg != nil && reg.GetName() == "/etc/hosts" {
					o := reg.GetFown()
					o.Pid, o.PidType, o.Uid, o.Euid, o.Signum = proto.Uint32(1), proto.Uint32(1), proto.Uint32(0), proto.Uint32(0), proto.Uint32(9)
					edited++
				}
			}
		})
		if edited != 1 {
			t.Fatalf("%d files named /etc/hosts in the checkpoint, want 1", edited)
		}
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, script, append([]string{"--user", "65534:65534"}, dropAll...)...)
	expectSpecFallback(t, offset, clone, cloneLog, "sends its signals to pid 1 as uid 0, euid 0")
}

// TestSocketBuffersNeedCAPNetAdmin restores a donor listening on port
// 8080, its images edited to give the listening socket a 1 GiB receive
// buffer. CRIU forces the image's size (SO_RCVBUFFORCE, which takes
// CAP_NET_ADMIN) as root: a clone without the capability cold-starts.
func TestSocketBuffersNeedCAPNetAdmin(t *testing.T) {
	requireShim(t)
	const script = `httpd -p 8080 -h /tmp; ` + counterScript
	donor, donorLog := startScriptClone(t, "", script)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:buffers", packOptions{tamper: func(t *testing.T, dir string) {
		edited := 0
		editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
			for _, e := range img.Entries {
				if sk := e.Message.(*fdinfo.FileEntry).GetIsk(); sk.GetSrcPort() == 8080 {
					sk.Opts.SoRcvbuf = proto.Uint32(1 << 30)
					edited++
				}
			}
		})
		if edited != 1 {
			t.Fatalf("%d sockets on port 8080 in the checkpoint, want 1", edited)
		}
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, script)
	expectSpecFallback(t, offset, clone, cloneLog, "a receive buffer of 1073741824 bytes")
}

// TestRebuiltConnectionNeedsCAPNetAdmin restores a donor that holds both
// ends of a TCP connection to itself, with tcp-established: CRIU rebuilds
// the connection in TCP repair mode, which takes CAP_NET_ADMIN, so a clone
// without it cold-starts; one with it gets the connection back, and the
// program goes on sending a byte through it on every count.
func TestRebuiltConnectionNeedsCAPNetAdmin(t *testing.T) {
	requireShim(t)
	script, flags := buildProgram(t, "loop", loopbackProgram)
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:connection", packOptions{})
	keep := append(flags, "--annotation", "snapboot.dev/criu-options=tcp-established")
	t.Run("without CAP_NET_ADMIN", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, keep...)
		expectSpecFallback(t, offset, clone, cloneLog, "an established TCP connection, which CRIU rebuilds in TCP repair mode")
	})
	t.Run("with CAP_NET_ADMIN", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, append(keep, "--cap-add", "CAP_NET_ADMIN")...)
		expectRestored(t, offset, clone, cloneLog)
		ns := waitCount(t, cloneLog, 3)
		waitCount(t, cloneLog, ns[len(ns)-1]+5) // five more trips through the connection
	})
}

const loopbackProgram = `// CRIU cannot dump the MPTCP listeners Go makes by default.
//go:debug multipathtcp=0
package main

import (
	"fmt"
	"io"
	"net"
	"time"
)

func main() {
	l, err := net.Listen("tcp", "127.0.0.1:9000")
	if err != nil {
		panic(err)
	}
	client, err := net.Dial("tcp", "127.0.0.1:9000")
	if err != nil {
		panic(err)
	}
	server, err := l.Accept()
	if err != nil {
		panic(err)
	}
	b := make([]byte, 1)
	for i := 1; ; i++ {
		// Through the connection, both ways: a broken one ends the count.
		if _, err := client.Write([]byte{byte(i)}); err != nil {
			panic(err)
		}
		if _, err := io.ReadFull(server, b); err != nil || b[0] != byte(i) {
			panic(fmt.Sprint("read ", b, err))
		}
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
	}
}
`

// TestUnixSocketNameNeedsItsDirectory restores a donor that listens on a
// unix socket in a volume whose directory is root's. CRIU unlinks the
// socket file at that name and binds the socket there again, as root.
// Restored as dumped, for root; in a checkpoint edited to run as nobody,
// into a clone that runs as nobody, it would remove whatever socket is at
// the name, here one the node's root listens on: that clone cold-starts,
// and the node's socket stays.
func TestUnixSocketNameNeedsItsDirectory(t *testing.T) {
	requireShim(t)
	script, flags := buildProgram(t, "unixsock", unixSocketProgram)
	volume := testDir(t)
	flags = append(flags, "--mount", "type=bind,src="+volume+",dst=/vol,options=rbind:rw")
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	sock := filepath.Join(volume, "app.sock")
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the donor's socket: %v, %v", fi, err)
	}
	asDumped := packAndPush(t, donor, registryAddr+"/it/crafted:unixsock", packOptions{})
	// Its file nobody's too, so that only its directory is not.
	nobody := packAndPush(t, donor, registryAddr+"/it/crafted:unixsock-nobody", packOptions{tamper: asNobodyWithSocket("/vol/app.sock")})
	t.Run("as dumped", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, asDumped.Ref, script, flags...)
		expectRestored(t, offset, clone, cloneLog)
	})
	t.Run("as nobody", func(t *testing.T) {
		if err := os.Remove(sock); err != nil {
			t.Fatal(err)
		}
		node, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		before, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, nobody.Ref, script, append(append([]string{"--user", "65534:65534"}, dropAll...), flags...)...)
		waitCount(t, cloneLog, 3) // restored or cold-started
		after, err := os.Lstat(sock)
		if err != nil || !os.SameFile(before, after) {
			t.Errorf("the node's socket at %s was replaced or removed: %v", sock, err)
		}
		expectSpecFallback(t, offset, clone, cloneLog, "the unix socket /vol/app.sock is in /vol, where the spec's user (65534) may not make or remove files")
	})
}

// unixSocketProgram listens on /vol/app.sock, or the name it is given (a
// cold start that may not says so), and counts, as counterScript does.
const unixSocketProgram = `package main

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"time"
)

func main() {
	name := "/vol/app.sock"
	if len(os.Args) > 1 {
		name = os.Args[1]
	}
	l, err := net.Listen("unix", name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "no socket:", err)
	}
	for i := 1; ; i++ {
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
		runtime.KeepAlive(l)
	}
}
`

// TestUnixSocketInTmpfsRestoresForItsUser restores a donor listening on
// /dev/shm/app/app.sock, in a directory of nobody's on /dev/shm, a tmpfs
// in containerd's default spec that anyone may write to, its images
// edited to run as nobody, into a clone that runs as nobody: the name is
// looked up in the tmpfs's contents, which are the checkpoint's, and the
// clone restores. (A directory of nobody's on /run, root's, is one
// nobody could not make: see TestTmpfsContentsNeedTheSpecsUser.)
func TestUnixSocketInTmpfsRestoresForItsUser(t *testing.T) {
	requireShim(t)
	program, flags := buildProgram(t, "unixsock", unixSocketProgram)
	script := "mkdir -p /dev/shm/app; chown 65534:65534 /dev/shm/app 2>/dev/null; " + program + " /dev/shm/app/app.sock"
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:unixsock-shm", packOptions{tamper: asNobodyWithSocket("/dev/shm/app/app.sock")})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, script, append(append([]string{"--user", "65534:65534"}, dropAll...), flags...)...)
	expectRestored(t, offset, clone, cloneLog)
}

// asNobodyWithSocket edits a checkpoint to run as nobody (asNobody), the
// file of the unix socket named name nobody's too.
func asNobodyWithSocket(name string) func(t *testing.T, dir string) {
	return func(t *testing.T, dir string) {
		asNobody(t, dir)
		edited := 0
		editImages(t, dir, "files.img", &fdinfo.FileEntry{}, func(img *crit.CriuImage) {
			for _, e := range img.Entries {
				if u := e.Message.(*fdinfo.FileEntry).GetUsk(); u != nil && string(u.GetName()) == name+"\x00" {
					u.FilePerms.Uid, u.FilePerms.Gid = proto.Uint32(65534), proto.Uint32(65534)
					edited++
				}
			}
		})
		if edited != 1 {
			t.Fatalf("%d unix sockets named %s in the checkpoint, want 1", edited, name)
		}
	}
}

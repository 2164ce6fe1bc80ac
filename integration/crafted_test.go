//go:build integration && linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	ipcvar "github.com/checkpoint-restore/go-criu/v7/crit/images/ipc-var"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// editImages decodes every CRIU image named by glob in dir as entries of
// msg's type, lets edit change them, and writes the images back.
func editImages(t *testing.T, dir, glob string, msg proto.Message, edit func(img *crit.CriuImage)) {
	t.Helper()
	paths, _ := filepath.Glob(filepath.Join(dir, glob))
	if len(paths) == 0 {
		t.Fatalf("no %s in %s", glob, dir)
	}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := crit.New(f, nil, "", false, false).Decode(msg)
		f.Close()
		if err != nil {
			t.Fatalf("decode %s: %v", p, err)
		}
		edit(img)
		out, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := crit.New(nil, out, "", false, false).Encode(img); err != nil {
			t.Fatalf("encode %s: %v", p, err)
		}
		out.Close()
	}
}

// hostNamespaces makes the tasks' UTS and IPC namespaces the dumping
// CRIU's, the host's: CRIU then creates neither.
func hostNamespaces(t *testing.T, dir string) {
	var root *criucore.TaskKobjIdsEntry
	editImages(t, dir, "inventory.img", &inventory.InventoryEntry{}, func(img *crit.CriuImage) {
		root = img.Entries[0].Message.(*inventory.InventoryEntry).GetRootIds()
	})
	editImages(t, dir, "ids-*.img", &criucore.TaskKobjIdsEntry{}, func(img *crit.CriuImage) {
		ids := img.Entries[0].Message.(*criucore.TaskKobjIdsEntry)
		ids.UtsNsId, ids.IpcNsId = root.UtsNsId, root.IpcNsId
	})
}

// unmask drops runc's masks and read-only mounts under /proc and /sys.
func unmask(t *testing.T, dir string) {
	editImages(t, dir, "mountpoints-*.img", &mnt.MntEntry{}, func(img *crit.CriuImage) {
		var keep []*crit.CriuEntry
		for _, e := range img.Entries {
			at := e.Message.(*mnt.MntEntry).GetMountpoint()
			if !strings.HasPrefix(at, "/proc/") && !strings.HasPrefix(at, "/sys/") {
				keep = append(keep, e)
			}
		}
		if len(keep) == len(img.Entries) {
			t.Fatal("no masks under /proc or /sys in the donor's mount tree")
		}
		img.Entries = keep
	})
}

// rootCgroup puts the tasks' cgroup set in each hierarchy's root cgroup.
func rootCgroup(t *testing.T, dir string) {
	editImages(t, dir, "cgroup.img", &cgroup.CgroupEntry{}, func(img *crit.CriuImage) {
		for _, set := range img.Entries[0].Message.(*cgroup.CgroupEntry).GetSets() {
			for _, m := range set.GetCtls() {
				m.Path = proto.String("/")
			}
		}
	})
}

// wholeCgroupHierarchy makes the first cgroup v1 hierarchy runc bound by
// key a cgroup file system of its own, at its root: CRIU then mounts it
// itself, in the host's cgroup namespace, and it shows the host's whole
// hierarchy instead of the container's cgroup.
func wholeCgroupHierarchy(t *testing.T, dir string) {
	done := false
	editImages(t, dir, "mountpoints-*.img", &mnt.MntEntry{}, func(img *crit.CriuImage) {
		for _, e := range img.Entries {
			m := e.Message.(*mnt.MntEntry)
			if !done && mnt.Fstype(m.GetFstype()) == mnt.Fstype_CGROUP && m.ExtKey != nil {
				m.ExtKey, m.Root = nil, proto.String("/")
				done = true
			}
		}
	})
	if !done {
		t.Fatal("no cgroup hierarchy bound by key in the donor's mount tree")
	}
}

// TestCraftedCheckpointsColdStart restores checkpoints whose images were
// edited to give the clone more than its spec. Without confine's checks,
// CRIU restores both: the clone runs in the host's UTS and IPC namespaces,
// or with /proc/sys writable and /proc/keys readable.
func TestCraftedCheckpointsColdStart(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 5)
	cases := []struct {
		name, tag, reason string
		tamper            func(*testing.T, string)
	}{
		{"host namespaces", "host-ns", "in the host's", hostNamespaces},
		{"masks removed", "unmasked", "; the spec makes it so", unmask}, // not masked, or not read-only
		{"root cgroup", "root-cgroup", "outside the container's cgroup", rootCgroup},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ck := packAndPush(t, donor, registryAddr+"/it/crafted:"+c.tag, packOptions{tamper: c.tamper})
			offset := containerdLogOffset()
			id, logFile := startCounterClone(t, ck.Ref)
			expectSpecFallback(t, offset, id, logFile, c.reason)
		})
	}
}

// TestCraftedCgroupHierarchyColdStart restores a checkpoint of a container
// with cgroup v1 mounted (runc binds the container's own cgroup in each
// hierarchy, by key) whose first hierarchy was edited into a cgroup file
// system of its own, at its root. Without confine's check CRIU mounts it
// itself, in the host's cgroup namespace: the clone sees the host's whole
// hierarchy there.
func TestCraftedCgroupHierarchyColdStart(t *testing.T) {
	donor := cgroupV1Donor(t)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:whole-cgroup", packOptions{tamper: wholeCgroupHierarchy})
	offset := containerdLogOffset()
	id, logFile := startScriptClone(t, ck.Ref, counterScript, cgroupV1Mount...)
	expectSpecFallback(t, offset, id, logFile, "in the host's cgroup namespace")
}

// TestFallbackAfterCopyUp fails a restore after CRIU has opened a file of
// the rootfs changes for writing (overlayfs copies it up into the
// container's writable layer): the donor holds two log files open, and the
// second is left out of the checkpoint. The shim must have removed the
// copy (it logs how many entries it removed, only when there were some),
// and the cold start must not see it.
func TestFallbackAfterCopyUp(t *testing.T) {
	requireShim(t)
	donor, donorLog := startScriptClone(t, "", `echo donor > /tmp/first.log; exec 3>>/tmp/first.log; exec 4>>/tmp/second.log; `+
		`i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:copy-up", packOptions{dropFromRootfs: []string{"tmp/second.log"}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, `i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`)
	line := logLine(t, offset, "snapboot.fallback", clone, 60*time.Second)
	if !strings.Contains(line, "runc restore") {
		t.Fatalf("the restore should fail in runc:\n%s", line)
	}
	// Logged before the fallback's line, by the same shim; without it
	// nothing was copied up, and the checks below would pass regardless.
	cleared := logLineWith(t, offset, "removed what the failed restore wrote", 5*time.Second)
	if n, err := strconv.Atoi(logField(cleared, "entries")); err != nil || n < 1 {
		t.Fatalf("the shim should have removed at least one entry of the failed restore from the writable layer:\n%s", cleared)
	}
	if ns := waitCount(t, cloneLog, 3); ns[0] != 1 {
		t.Fatalf("cold start should count from 1, counted from %d", ns[0])
	}
	if _, ok := tarEntries(t, snapshotDiffTar(t, clone))["tmp/first.log"]; ok {
		t.Fatal("the cold start's rootfs holds the donor's tmp/first.log, copied up by the failed restore")
	}
}

// logLineWith waits for a line of containerd's log after offset that
// contains substr, and returns the first such line.
func logLineWith(t *testing.T, offset int64, substr string, timeout time.Duration) string {
	t.Helper()
	waitForLogSince(t, offset, substr, timeout)
	for _, l := range strings.Split(containerdLog()[offset:], "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	t.Fatalf("containerd log: no line with %q after offset %d", substr, offset)
	return ""
}

// logField is the value of the field key=value of log line l, "" if it
// has none (a quoted value is returned up to its first space).
func logField(l, key string) string {
	for _, f := range strings.Fields(l) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// TestCraftedNoNewPrivsSetAgain restores a checkpoint whose credentials
// were edited to drop no_new_privs, for a spec that sets it (ctr's
// default): the clone is restored with it set, as a cold start would be.
func TestCraftedNoNewPrivsSetAgain(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 5)
	if got := statusField(t, taskPID(t, donor), "NoNewPrivs"); got != "1" {
		t.Fatalf("the donor's NoNewPrivs is %q; ctr's spec sets it", got)
	}
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:new-privs", packOptions{tamper: func(t *testing.T, dir string) {
		editImages(t, dir, "core-*.img", &criucore.CoreEntry{}, func(img *crit.CriuImage) {
			cr := img.Entries[0].Message.(*criucore.CoreEntry).GetThreadCore().GetCreds()
			if cr == nil {
				return // a zombie's (a sleep that had just exited)
			}
			var kept []byte
			for b := cr.ProtoReflect().GetUnknown(); len(b) > 0; {
				num, typ, n := protowire.ConsumeTag(b)
				m := protowire.ConsumeFieldValue(num, typ, b[n:])
				if n < 0 || m < 0 {
					t.Fatal("unparsable credentials")
				}
				if num != 18 { // no_new_privs
					kept = append(kept, b[:n+m]...)
				}
				b = b[n+m:]
			}
			cr.ProtoReflect().SetUnknown(kept)
		})
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startCounterClone(t, ck.Ref)
	line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if strings.Contains(line, "narrowed=0") {
		t.Errorf("the restore should report narrowed tasks:\n%s", line)
	}
	if ns := waitCount(t, cloneLog, 3); ns[0] == 1 {
		t.Fatal("the clone cold-started")
	}
	if got := statusField(t, taskPID(t, clone), "NoNewPrivs"); got != "1" {
		t.Fatalf("the restored clone's NoNewPrivs is %q, want 1 as its spec says", got)
	}
}

// statusField is a field of /proc/<pid>/status.
func statusField(t *testing.T, pid int, name string) string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no %s in /proc/%d/status", name, pid)
	return ""
}

// TestCraftedCgroupPropertyStaysInTheHierarchy restores images edited to
// add a cgroup below the container's with a property whose name climbs out
// of the hierarchy to a file of the node's (the test's). CRIU would open
// it by that name, as root, and write the value into it; snapboot strips
// the properties (and directory owners) from cgroup.img: the clone
// restores and the file is untouched.
func TestCraftedCgroupPropertyStaysInTheHierarchy(t *testing.T) {
	requireShim(t)
	target := filepath.Join(testDir(t), "target")
	if err := os.WriteFile(target, []byte("intact\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	donor, donorLog := startScriptClone(t, "", counterScript)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:cgroup-property", packOptions{tamper: func(t *testing.T, dir string) {
		added := 0
		editImages(t, dir, "cgroup.img", &cgroup.CgroupEntry{}, func(img *crit.CriuImage) {
			for _, c := range img.Entries[0].Message.(*cgroup.CgroupEntry).GetControllers() {
				if added == 0 && strings.Contains(strings.Join(c.GetCnames(), ","), "memory") && len(c.GetDirs()) == 1 {
					top := c.GetDirs()[0]
					top.Children = append(top.Children, &cgroup.CgroupDirEntry{DirName: proto.String("crafted"),
						Properties: []*cgroup.CgroupPropEntry{{Name: proto.String(strings.Repeat("../", 40) + strings.TrimPrefix(target, "/")), Value: proto.String("written by CRIU")}}})
					added++
				}
			}
		})
		if added != 1 {
			t.Fatal("no memory controller in cgroup.img")
		}
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, counterScript)
	expectRestored(t, offset, clone, cloneLog)
	if got, err := os.ReadFile(target); err != nil || string(got) != "intact\n" {
		t.Errorf("the node's file reads %q (%v) after the restore, want it untouched", got, err)
	}
}

// TestCraftedIPCSysctlsAreANewNamespaces restores a donor whose images
// were edited to raise the IPC namespace's limits (kernel.msgmnb, a
// message queue's bytes, to 1 GiB; kernel.shmmni). CRIU writes them, as root, into the clone's new IPC
// namespace, where a cold start's app could set none (/proc/sys is
// read-only): the clone restores with a new namespace's values (the
// spec's on top: unit tests; ctr sets no sysctls).
func TestCraftedIPCSysctlsAreANewNamespaces(t *testing.T) {
	requireShim(t)
	donor, donorLog := startScriptClone(t, "", counterScript)
	waitCount(t, donorLog, 5)
	want := map[string]string{"kernel/msgmnb": ipcSysctl(t, taskPID(t, donor), "kernel/msgmnb"), "kernel/shmmni": ipcSysctl(t, taskPID(t, donor), "kernel/shmmni")}
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:ipc-sysctls", packOptions{tamper: func(t *testing.T, dir string) {
		editImages(t, dir, "ipcns-var-*.img", &ipcvar.IpcVarEntry{}, func(img *crit.CriuImage) {
			e := img.Entries[0].Message.(*ipcvar.IpcVarEntry)
			e.MsgCtlmnb, e.ShmCtlmni = proto.Uint32(1<<30), proto.Uint32(32768) // the kernel's largest shmmni
		})
	}})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, counterScript)
	expectRestored(t, offset, clone, cloneLog)
	for key, value := range want {
		if got := ipcSysctl(t, taskPID(t, clone), key); got != value {
			t.Errorf("the clone's %s is %s, want %s", key, got, value)
		}
	}
}

// ipcSysctl reads an IPC sysctl in a process's IPC namespace.
func ipcSysctl(t *testing.T, pid int, key string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(pid), "-i", "cat", "/proc/sys/"+key).CombinedOutput()
	if err != nil {
		t.Fatalf("read %s of %d: %v: %s", key, pid, err, out)
	}
	return strings.TrimSpace(string(out))
}

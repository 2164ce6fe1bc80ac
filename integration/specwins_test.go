//go:build integration && linux

package integration

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// capsOf reads the capability sets of PID 1 in a container.
func capsOf(t *testing.T, id string) map[string]uint64 {
	t.Helper()
	status := ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "caps-"+strconv.FormatInt(time.Now().UnixNano(), 36), id, "/bin/cat", "/proc/1/status")
	caps := map[string]uint64{}
	for _, l := range strings.Split(status, "\n") {
		for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
			if v, ok := strings.CutPrefix(l, k+":"); ok {
				n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
				if err != nil {
					t.Fatalf("%s: %v", l, err)
				}
				caps[k] = n
			}
		}
	}
	if len(caps) < 4 {
		t.Fatalf("no capabilities in /proc/1/status:\n%s", status)
	}
	return caps
}

// dropAll drops every capability of containerd's default set (ctr has no
// --cap-drop ALL).
var dropAll = func() []string {
	var flags []string
	for _, c := range []string{"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
		"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"} {
		flags = append(flags, "--cap-drop", "CAP_"+c)
	}
	return flags
}()

func TestCallerSpecWins(t *testing.T) {
	requireShim(t)
	const capSysAdmin = 1 << 21
	donor := uniqueID(t)
	donorLog := runDetachedOpts(t, donor, runOptions{Runtime: snapbootRuntime,
		Flags: []string{"--with-ns", "network:" + newNetns(t), "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_NET_ADMIN"}},
		"/bin/sh", "-c", counterScript)
	waitCount(t, donorLog, 5)
	if c := capsOf(t, donor); c["CapEff"]&capSysAdmin == 0 {
		t.Fatalf("the donor should hold CAP_SYS_ADMIN: %x", c["CapEff"])
	}
	ref := registryAddr + "/it/caps:v1"
	mustSnapboot(t, "checkpoint", donor, ref)

	t.Run("capabilities narrowed to the spec", func(t *testing.T) {
		offset := containerdLogOffset()
		clone := uniqueID(t)
		cloneLog := runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ref},
			Flags: append([]string{"--with-ns", "network:" + newNetns(t)}, dropAll...)}, "/bin/sh", "-c", counterScript)
		line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		if strings.Contains(line, "narrowed=0") {
			t.Errorf("restore should report narrowed tasks:\n%s", line)
		}
		ns := waitCount(t, cloneLog, 8)
		if ns[0] == 1 {
			t.Fatal("the clone cold-started")
		}
		for k, v := range capsOf(t, clone) {
			if v != 0 {
				t.Errorf("restored PID 1 has %s %016x; the spec drops all capabilities", k, v)
			}
		}
	})

	refusals := []struct {
		name   string
		flags  []string
		reason string
	}{
		{"seccomp required", []string{"--seccomp"}, "without seccomp"},
		{"non-root user", []string{"--user", "1000:1000"}, "ran as root"},
	}
	for _, c := range refusals {
		t.Run(c.name, func(t *testing.T) {
			offset := containerdLogOffset()
			clone := uniqueID(t)
			flags := append([]string{"--with-ns", "network:" + newNetns(t)}, c.flags...)
			cloneLog := runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ref},
				Flags: flags}, "/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done")
			line := logLine(t, offset, "snapboot.fallback", clone, 60*time.Second)
			if !strings.Contains(line, c.reason) {
				t.Errorf("fallback reason should say %q:\n%s", c.reason, line)
			}
			if ns := waitCount(t, cloneLog, 3); ns[0] != 1 {
				t.Fatalf("cold start should count from 1, got %d", ns[0])
			}
		})
	}
}

// cgroupV1Mount is the ctr flag that mounts cgroup v1 read-only, as
// containerd's CRI plugin does.
var cgroupV1Mount = []string{"--mount", "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev"}

// cgroupV1Donor starts a counter with cgroupV1Mount (skipped on cgroup
// v2, where runc binds no hierarchy by key).
func cgroupV1Donor(t *testing.T) string {
	t.Helper()
	requireShim(t)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		t.Skip("cgroup v2: runc binds no hierarchy by key")
	}
	id, logFile := startScriptClone(t, "", counterScript, cgroupV1Mount...)
	waitCount(t, logFile, 3)
	return id
}

// cgroupBinds returns, for the cgroup v1 mounts under /sys/fs/cgroup in
// container id, the root of each (the cgroup it shows) by mount point.
func cgroupBinds(t *testing.T, id string) map[string]string {
	t.Helper()
	return cgroupMountRoots(ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "mi-"+strconv.FormatInt(time.Now().UnixNano(), 36), id, "/bin/cat", "/proc/1/mountinfo"))
}

// cgroupMountRoots returns the root of each cgroup v1 mount under
// /sys/fs/cgroup in mountinfo, by mount point.
func cgroupMountRoots(mountinfo string) map[string]string {
	roots := map[string]string{}
	for _, l := range strings.Split(mountinfo, "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f := strings.Fields(pre)
		if ok && len(f) >= 5 && strings.HasPrefix(post, "cgroup ") && strings.HasPrefix(f[4], "/sys/fs/cgroup/") {
			roots[f[4]] = f[3]
		}
	}
	return roots
}

// A systemd cgroups path with runc's cgroupfs driver (which takes it as a
// path relative to runc's own cgroup): the cgroup mounts are mapped to the
// scope runc's systemd driver would make, which is not there, so CRIU
// cannot mount them and the clone cold-starts, with the reason. This is
// the way out if the mapping of a systemd path is ever wrong.
func TestMisplacedSystemdCgroupColdStarts(t *testing.T) {
	donor := cgroupV1Donor(t)
	ck := packAndPush(t, donor, registryAddr+"/it/cgroup-systemd-path:v1", packOptions{})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, counterScript, append([]string{"--cgroup", "snapbootit.slice:it:" + donor + "-clone"}, cgroupV1Mount...)...)
	line := logLine(t, offset, "snapboot.fallback", clone, 60*time.Second)
	if want := "/snapbootit.slice/it-" + donor + "-clone.scope: No such file or directory"; !strings.Contains(line, want) {
		t.Errorf("the fallback's reason should be CRIU's, about the scope (%s):\n%s", want, line)
	}
	if ns := waitCount(t, cloneLog, 1); ns[0] != 1 {
		t.Errorf("the clone counts from %d, not from 1: it was not cold-started", ns[0])
	}
}

// A restored container with cgroup v1 mounted (no cgroup namespace) sees
// its own cgroup in each hierarchy, as a cold start does, not the one
// runc's restore would bind (runc's own, the shim's).
func TestRestoredCgroupMountsAreTheContainers(t *testing.T) {
	donor := cgroupV1Donor(t)
	cold := cgroupBinds(t, donor)
	if len(cold) < 2 {
		t.Fatalf("the donor has %d cgroup hierarchies mounted: %v", len(cold), cold)
	}
	for at, root := range cold {
		if !strings.HasSuffix(root, "/"+donor) {
			t.Fatalf("the cold start's %s shows %s, not its own cgroup", at, root)
		}
	}
	ck := packAndPush(t, donor, registryAddr+"/it/cgroup-binds:v1", packOptions{})
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ck.Ref, counterScript, cgroupV1Mount...)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	waitCount(t, cloneLog, 1)
	restored := cgroupBinds(t, clone)
	if len(restored) != len(cold) {
		t.Fatalf("restored: %v, cold: %v", restored, cold)
	}
	for at, root := range cold {
		if want := strings.TrimSuffix(root, donor) + clone; restored[at] != want {
			t.Errorf("the clone's %s shows %s, want its own cgroup %s", at, restored[at], want)
		}
	}
}

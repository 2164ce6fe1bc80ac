//go:build integration && linux

package integration

import (
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

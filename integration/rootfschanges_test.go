//go:build integration && linux

package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestRootfsChangesNeedTheSpecsUser restores checkpoints of a root donor,
// edited to run as nobody, into clones that run as nobody without
// capabilities. In one the donor rewrote /etc/shadow, root's only: the
// checkpoint's rootfs changes are stacked on the clone's image, and a
// clone allowed to gain privileges could then su to root with a password
// of the checkpoint's. The previous build restored it with the new
// /etc/shadow. A donor's change its user could make (a file of nobody's
// in /tmp) restores.
func TestRootfsChangesNeedTheSpecsUser(t *testing.T) {
	requireShim(t)
	for i, c := range []struct {
		name, change, refusal string
	}{
		{"nobody's file in /tmp", `echo mine > /tmp/mine; chown 65534:65534 /tmp/mine; `, ""},
		{"root's /etc/shadow", `echo 'root:$1$known$hash:20000:0:99999:7:::' > /etc/shadow; `,
			"the checkpoint's rootfs changes /etc/shadow (-rw-------, owner 0:0), which the spec's user (65534) could not: it may not write the image's file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			clone, cloneLog, offset := nobodyClone(t, c.change, "rootfs-"+fmt.Sprint(i))
			shadow := func() string {
				data, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/etc/shadow", taskPID(t, clone)))
				if err != nil {
					t.Fatal(err)
				}
				return string(data)
			}
			if c.refusal == "" {
				expectRestored(t, offset, clone, cloneLog)
				if got := readFile(fmt.Sprintf("/proc/%d/root/tmp/mine", taskPID(t, clone))); got != "mine\n" {
					t.Errorf("the clone's /tmp/mine: %q", got)
				}
				return
			}
			waitCount(t, cloneLog, 3) // restored or cold-started
			if got := shadow(); strings.Contains(got, "known") {
				t.Errorf("the clone's /etc/shadow is the checkpoint's: %q", got)
			}
			expectSpecFallback(t, offset, clone, cloneLog, c.refusal)
		})
	}
}

// TestTmpfsContentsNeedTheSpecsUser restores checkpoints of a root donor,
// edited to run as nobody, into clones that run as nobody without
// capabilities. In one the donor made a sudo timestamp in /run, a tmpfs
// CRIU fills from the checkpoint as root: a setuid sudo of the image would
// take it for a password just given. The previous build restored it. A
// file nobody could make (its own, in /dev/shm) restores.
func TestTmpfsContentsNeedTheSpecsUser(t *testing.T) {
	requireShim(t)
	for i, c := range []struct {
		name, change, file, refusal string
	}{
		{"nobody's file in /dev/shm", `echo mine > /dev/shm/mine; chown 65534:65534 /dev/shm/mine; `, "/dev/shm/mine", ""},
		{"root's sudo timestamp in /run", `mkdir -p -m 700 /run/sudo/ts; echo mine > /run/sudo/ts/nobody; `, "/run/sudo/ts/nobody",
			"the checkpoint's tmpfs at /run holds /run/sudo (d0755, owner 0:0), which the spec's user (65534) could not make: it may not make files in its directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			clone, cloneLog, offset := nobodyClone(t, c.change, "tmpfs-"+fmt.Sprint(i))
			if c.refusal == "" {
				expectRestored(t, offset, clone, cloneLog)
				if got := readFile(fmt.Sprintf("/proc/%d/root%s", taskPID(t, clone), c.file)); got != "mine\n" {
					t.Errorf("the clone's %s: %q", c.file, got)
				}
				return
			}
			waitCount(t, cloneLog, 3) // restored or cold-started
			if _, err := os.Stat(fmt.Sprintf("/proc/%d/root%s", taskPID(t, clone), c.file)); err == nil {
				t.Errorf("the clone has the checkpoint's %s", c.file)
			}
			expectSpecFallback(t, offset, clone, cloneLog, c.refusal)
		})
	}
}

// countLoop counts, one number a line, ten a second.
const countLoop = `i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`

// nobodyClone starts a root donor that first runs change, checkpoints it
// with its images edited to run as nobody (tagged tag), and starts a clone
// of it that runs as nobody without capabilities. offset is containerd's
// log's before the clone.
func nobodyClone(t *testing.T, change, tag string) (clone, cloneLog string, offset int64) {
	t.Helper()
	donor, donorLog := startScriptClone(t, "", change+countLoop)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:"+tag, packOptions{tamper: asNobody})
	offset = containerdLogOffset()
	clone, cloneLog = startScriptClone(t, ck.Ref, countLoop, append([]string{"--user", "65534:65534"}, dropAll...)...)
	return clone, cloneLog, offset
}

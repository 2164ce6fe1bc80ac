//go:build integration && linux

package integration

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/seccomp"
	"google.golang.org/protobuf/proto"
)

// startSeccompCounter starts a counter under ctr's default seccomp profile
// (--seccomp), restored from ref if it is not "".
func startSeccompCounter(t *testing.T, ref string) (id, logFile string) {
	t.Helper()
	return startScriptClone(t, ref, counterScript, "--seccomp")
}

// allowAll is a seccomp filter of one instruction: return ALLOW.
func allowAll() []byte {
	f := make([]byte, 8)
	binary.NativeEndian.PutUint16(f, 0x06) // BPF_RET|BPF_K
	binary.NativeEndian.PutUint32(f[4:], 0x7fff0000)
	return f
}

// TestSeccompFilter restores a donor that ran under ctr's default seccomp
// profile into a container with the same profile: its filter is the one
// runc installs for that profile, and it is restored. The same checkpoint
// with the filter replaced by one that allows every system call, or with
// the task's old per-task seccomp mode (which CRIU prefers to the
// thread's) turned off, cold-starts.
func TestSeccompFilter(t *testing.T) {
	requireShim(t)
	donor, donorLog := startSeccompCounter(t, "")
	waitCount(t, donorLog, 5)
	if got := statusField(t, taskPID(t, donor), "Seccomp"); got != "2" {
		t.Fatalf("the donor's Seccomp is %q, want 2 (filter)", got)
	}

	t.Run("restored", func(t *testing.T) {
		ck := packAndPush(t, donor, registryAddr+"/it/seccomp:same", packOptions{})
		offset := containerdLogOffset()
		clone, cloneLog := startSeccompCounter(t, ck.Ref)
		logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		if ns := waitCount(t, cloneLog, 3); ns[0] == 1 {
			t.Fatal("the clone cold-started")
		}
		pid := taskPID(t, clone)
		if got := statusField(t, pid, "Seccomp"); got != "2" {
			t.Fatalf("the restored clone's Seccomp is %q, want 2", got)
		}
		if got := statusField(t, pid, "Seccomp_filters"); got != "1" {
			t.Fatalf("the restored clone has %s seccomp filters, want 1", got)
		}
	})

	cases := []struct {
		name, tag, reason string
		tamper            func(*testing.T, string)
	}{
		{"allow-all filter", "allow-all", "does not run the seccomp filter runc installs", func(t *testing.T, dir string) {
			editImages(t, dir, "seccomp.img", &seccomp.SeccompEntry{}, func(img *crit.CriuImage) {
				filters := img.Entries[0].Message.(*seccomp.SeccompEntry).GetSeccompFilters()
				if len(filters) == 0 {
					t.Fatal("no filters in seccomp.img")
				}
				for _, f := range filters {
					f.Filter = allowAll()
				}
			})
		}},
		{"old per-task mode off", "old-mode", "ran without seccomp", func(t *testing.T, dir string) {
			editImages(t, dir, "core-*.img", &criucore.CoreEntry{}, func(img *crit.CriuImage) {
				if tc := img.Entries[0].Message.(*criucore.CoreEntry).GetTc(); tc != nil {
					tc.OldSeccompMode = criucore.SeccompMode_disabled.Enum()
					tc.OldSeccompFilter = proto.Uint32(0)
				}
			})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ck := packAndPush(t, donor, registryAddr+"/it/seccomp:"+c.tag, packOptions{tamper: c.tamper})
			offset := containerdLogOffset()
			clone, cloneLog := startSeccompCounter(t, ck.Ref)
			expectSpecFallback(t, offset, clone, cloneLog, c.reason)
		})
	}
}

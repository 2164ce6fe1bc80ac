//go:build integration && linux

package integration

import (
	"encoding/binary"
	"fmt"
	"os"
	"strconv"
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

// threadsProgram counts, like counterScript, from a Go program that also
// keeps four more threads of its own (each locked to a goroutine that
// wakes every 5 ms), so that CRIU dumps and restores several threads,
// each with its own copy of runc's filter.
const threadsProgram = `package main

import (
	"fmt"
	"runtime"
	"time"
)

func main() {
	for i := 0; i < 4; i++ {
		go func() {
			runtime.LockOSThread()
			for {
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	for i := 1; ; i++ {
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
	}
}
`

// threadsSeccomp returns, for each thread of process pid, its Seccomp
// mode and number of filters ("2/1").
func threadsSeccomp(t *testing.T, pid int) []string {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		out = append(out, statusField(t, tid, "Seccomp")+"/"+statusField(t, tid, "Seccomp_filters"))
	}
	return out
}

// TestSeccompMultiThreaded restores a multi-threaded donor (a Go program)
// that ran under ctr's default seccomp profile: every thread comes back,
// each running runc's filter once, and the program goes on counting.
func TestSeccompMultiThreaded(t *testing.T) {
	requireShim(t)
	script, flags := buildProgram(t, "threads", threadsProgram)
	flags = append(flags, "--seccomp")
	start := func(ref string) (string, string) {
		return startScriptClone(t, ref, script, flags...)
	}
	threadsOK := func(who string, pid int) {
		t.Helper()
		got := threadsSeccomp(t, pid)
		if len(got) < 5 {
			t.Fatalf("%s has %d threads, want at least 5", who, len(got))
		}
		for i, s := range got {
			if s != "2/1" {
				t.Fatalf("%s's thread %d of %d: Seccomp/Seccomp_filters %s, want 2/1 (all: %v)", who, i+1, len(got), s, got)
			}
		}
		t.Logf("%s: %d threads, each with runc's filter", who, len(got))
	}
	donor, donorLog := start("")
	waitCount(t, donorLog, 5)
	threadsOK("the donor", taskPID(t, donor))

	ck := packAndPush(t, donor, registryAddr+"/it/seccomp:threads", packOptions{})
	offset := containerdLogOffset()
	clone, cloneLog := start(ck.Ref)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	ns := waitCount(t, cloneLog, 3)
	if ns[0] == 1 {
		t.Fatal("the clone cold-started")
	}
	waitFor(t, 30*time.Second, "the clone to count on", func() bool {
		n := numbers(cloneLog)
		return n[len(n)-1] >= ns[len(ns)-1]+5
	})
	threadsOK("the restored clone", taskPID(t, clone))
}

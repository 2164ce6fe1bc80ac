//go:build integration && linux

package integration

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	criucore "github.com/checkpoint-restore/go-criu/v7/crit/images/criu-core"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// schedOf is the nice value and scheduling policy of thread tid, from
// /proc/<tid>/stat; ok is false if the thread has gone (the counter's
// sleeps come and go).
func schedOf(t *testing.T, tid int) (nice, policy int, ok bool) {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/stat")
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
		return 0, 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:]) // from field 3, the state
	nice, _ = strconv.Atoi(fields[19-3])
	policy, _ = strconv.Atoi(fields[41-3])
	return nice, policy, true
}

// hardNiceLimit is the hard RLIMIT_NICE of process pid.
func hardNiceLimit(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(l, "Max nice priority"); ok {
			f := strings.Fields(rest)
			if len(f) >= 2 {
				if n, err := strconv.Atoi(f[1]); err == nil {
					return n
				}
			}
		}
	}
	t.Fatalf("no nice limit in /proc/%d/limits:\n%s", pid, data)
	return 0
}

// threadsOf are the ids of every thread of every process in the container
// whose init is pid (the processes of its PID namespace's tree).
func threadsOf(t *testing.T, pid int) []int {
	t.Helper()
	var tids []int
	var walk func(pid int)
	walk = func(pid int) {
		ents, _ := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			tids = append(tids, tid)
			children, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/task/" + e.Name() + "/children")
			for _, c := range strings.Fields(string(children)) {
				if n, err := strconv.Atoi(c); err == nil {
					walk(n)
				}
			}
		}
	}
	walk(pid)
	if len(tids) == 0 {
		t.Fatalf("no threads under %d", pid)
	}
	return tids
}

func loginuidOf(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/loginuid")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// TestCraftedSchedulingAndLoginuid restores a checkpoint whose threads
// were edited to run at nice -15 with loginuid 1000: CRIU would set both
// as root. The clone gets its cold start's, its donor's: what the spec
// (no CAP_SYS_NICE, RLIMIT_NICE 0) lets it have, and the shim's loginuid.
func TestCraftedSchedulingAndLoginuid(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 5)
	donorPID := taskPID(t, donor)
	donorNice, donorPolicy, _ := schedOf(t, donorPID)
	if donorNice <= -15 {
		t.Fatalf("the donor's nice value is %d already", donorNice)
	}
	if limit := hardNiceLimit(t, donorPID); 20-limit <= -15 {
		t.Fatalf("the cold start's RLIMIT_NICE is %d: nice -15 is its own to take", limit)
	}
	// A loginuid the donor does not have.
	craftedUID := uint32(1000)
	if loginuidOf(t, donorPID) == "1000" {
		craftedUID = 1001
	}
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:sched", packOptions{tamper: func(t *testing.T, dir string) {
		editImages(t, dir, "core-*.img", &criucore.CoreEntry{}, func(img *crit.CriuImage) {
			core := img.Entries[0].Message.(*criucore.CoreEntry)
			if core.ThreadCore == nil {
				return // a zombie's (a sleep that had just exited)
			}
			core.ThreadCore.SchedPolicy, core.ThreadCore.SchedNice = proto.Uint32(0), proto.Int32(-15)
			if core.Tc != nil {
				core.Tc.Loginuid = proto.Uint32(craftedUID)
			}
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
	clonePID := taskPID(t, clone)
	for _, tid := range threadsOf(t, clonePID) {
		if nice, policy, ok := schedOf(t, tid); ok && (nice != donorNice || policy != donorPolicy) {
			t.Errorf("restored thread %d has nice %d, policy %d; its cold start (the donor) has %d, %d", tid, nice, policy, donorNice, donorPolicy)
		}
	}
	if got, want := loginuidOf(t, clonePID), loginuidOf(t, donorPID); got != want {
		t.Errorf("the restored clone's loginuid is %s, its cold start's (the donor's) %s", got, want)
	}
}

// runWithSpec starts a detached container from busybox through
// containerd's Go client, as `ctr run` would, in network namespace netns,
// with opts applied to its spec; its output goes to the returned log file.
// ctr has no flag for the settings this is for (the spec's scheduler and
// I/O priority).
func runWithSpec(t *testing.T, id, netns string, annotations map[string]string, opts []oci.SpecOpts, cmd ...string) string {
	t.Helper()
	client, err := containerd.New(containerdAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := namespaces.WithNamespace(context.Background(), namespace)
	img, err := client.GetImage(ctx, busyboxImage)
	if err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(logsDir, id+".log")
	t.Cleanup(func() {
		if err := removeContainer(id); err != nil {
			t.Errorf("cleanup of container %s: %v", id, err)
		}
	})
	all := append([]oci.SpecOpts{oci.WithImageConfig(img), oci.WithProcessArgs(cmd...), oci.WithAnnotations(annotations),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns})}, opts...)
	c, err := client.NewContainer(ctx, id, containerd.WithRuntime(snapbootRuntime, nil),
		containerd.WithNewSnapshot(id, img), containerd.WithNewSpec(all...))
	if err != nil {
		t.Fatal(err)
	}
	task, err := c.NewTask(ctx, cio.LogFile(logFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return logFile
}

// ioprioWhoProcess is IOPRIO_WHO_PROCESS: ioprio_get(2) of one thread.
const ioprioWhoProcess = 1

// ioprioOf is ioprio_get(2) of thread tid; ok is false if it has gone.
func ioprioOf(t *testing.T, tid int) (prio int, ok bool) {
	t.Helper()
	v, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if errno == unix.ESRCH {
		return 0, false
	}
	if errno != 0 {
		t.Fatalf("ioprio_get %d: %v", tid, errno)
	}
	// An exited task not yet reaped (the counter loop's sleep, between
	// its exit and the shell's wait) has no I/O context any more, and
	// ioprio_get gives 0 for it: not the task's, so not counted. Checked
	// after the read, so that a value read while it lived counts.
	if _, err := os.Stat("/proc/" + strconv.Itoa(tid)); err != nil || isZombie(tid) {
		return 0, false
	}
	return int(v), true
}

// TestSpecSchedulerAndIOPriority restores clones whose spec sets a
// scheduler and an I/O priority, which runc's create applies and its
// restore does not (CRIU restores the donor's scheduling, and no I/O
// priority at all): every thread of the clone has the spec's, as a cold
// start's would.
func TestSpecSchedulerAndIOPriority(t *testing.T) {
	requireShim(t)
	withSched := func(nice int32, class specs.IOPriorityClass, prio int) oci.SpecOpts {
		return func(_ context.Context, _ oci.Client, _ *containers.Container, s *oci.Spec) error {
			s.Process.Scheduler = &specs.Scheduler{Policy: specs.SchedOther, Nice: nice}
			s.Process.IOPriority = &specs.LinuxIOPriority{Class: class, Priority: prio}
			return nil
		}
	}
	// A donor with a second process, so that inheritance is seen too.
	const script = `sleep 1000 & ` + counterScript
	donor := uniqueID(t)
	donorLog := runWithSpec(t, donor, newNetns(t), nil, []oci.SpecOpts{withSched(5, specs.IOPRIO_CLASS_BE, 6)}, "/bin/sh", "-c", script)
	waitCount(t, donorLog, 5)
	donorPID := taskPID(t, donor)
	for _, tid := range threadsOf(t, donorPID) {
		if nice, _, ok := schedOf(t, tid); ok && nice != 5 {
			t.Fatalf("the donor's thread %d has nice %d; runc should have set the spec's 5", tid, nice)
		}
		if got, ok := ioprioOf(t, tid); ok && got != 2<<13|6 {
			t.Fatalf("the donor's thread %d has I/O priority %#x; runc should have set the spec's", tid, got)
		}
	}
	if limit := hardNiceLimit(t, donorPID); 20-limit <= 5 {
		t.Fatalf("the cold start's RLIMIT_NICE is %d: the second clone could lower its nice value to 5 itself", limit)
	}
	ref := registryAddr + "/it/sched:v1"
	mustSnapboot(t, "checkpoint", donor, ref)

	for _, c := range []struct {
		name  string
		nice  int32
		class specs.IOPriorityClass
		prio  int
	}{
		{"the donor's spec", 5, specs.IOPRIO_CLASS_BE, 6},
		// A higher nice value than the donor's, which the app could not
		// lower again (RLIMIT_NICE 0), and another I/O priority.
		{"a lower priority than the donor's", 10, specs.IOPRIO_CLASS_IDLE, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			offset := containerdLogOffset()
			clone := uniqueID(t)
			cloneLog := runWithSpec(t, clone, newNetns(t), map[string]string{"snapboot.dev/checkpoint": ref},
				[]oci.SpecOpts{withSched(c.nice, c.class, c.prio)}, "/bin/sh", "-c", script)
			logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
			if ns := waitCount(t, cloneLog, 3); ns[0] == 1 {
				t.Fatal("the clone cold-started")
			}
			want := map[specs.IOPriorityClass]int{specs.IOPRIO_CLASS_BE: 2, specs.IOPRIO_CLASS_IDLE: 3}[c.class]<<13 | c.prio
			tids := threadsOf(t, taskPID(t, clone))
			if len(tids) < 2 {
				t.Fatalf("the clone has %d threads, want its shell and sleep at least", len(tids))
			}
			for _, tid := range tids {
				if nice, _, ok := schedOf(t, tid); ok && nice != int(c.nice) {
					t.Errorf("restored thread %d has nice %d, want the spec's %d", tid, nice, c.nice)
				}
				if got, ok := ioprioOf(t, tid); ok && got != want {
					t.Errorf("restored thread %d has I/O priority %#x, want the spec's %#x", tid, got, want)
				}
			}
		})
	}
}

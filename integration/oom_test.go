//go:build integration && linux

package integration

import (
	"bufio"
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestRestoredOOMReported: an OOM kill inside a restored container produces
// containerd's TaskOOM event, as it does for a cold-started one (Kubernetes
// reports OOMKilled from it). The runc task service only watches cgroups of
// containers it created cold; snapboot watches restored ones.
func TestRestoredOOMReported(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 5)
	ck := packAndPush(t, donor, registryAddr+"/it/oom:v1", packOptions{exit: true})

	// containerd's events, from now on.
	ctx, cancel := context.WithCancel(context.Background())
	events := ctrCmd(ctx, "events")
	out, err := events.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		lines []string
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			lines = append(lines, sc.Text())
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		events.Wait()
		<-done
	})
	oomOf := func(id string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l, "/tasks/oom") && strings.Contains(l, id) {
				return true
			}
		}
		return false
	}

	offset := containerdLogOffset()
	clone := uniqueID(t)
	cloneLog := runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime,
		Annotations: map[string]string{"snapboot.dev/checkpoint": ck.Ref},
		Flags:       []string{"--with-ns", "network:" + newNetns(t), "--memory-limit", "67108864"}},
		"/bin/sh", "-c", counterScript)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if ns := waitCount(t, cloneLog, 8); ns[0] <= 1 {
		t.Fatalf("the clone started counting at %d: not restored", ns[0])
	}

	// A process in the container's cgroup outgrows its 64 MiB limit.
	_, stderr, err := ctrErr("task", "exec", "--fifo-dir", fifoDir, "--exec-id", "hog", clone,
		"/bin/sh", "-c", `x=$(head -c 200000000 /dev/zero | tr '\0' a); echo ${#x}`)
	if err == nil {
		t.Fatalf("the memory hog in the restored container was not killed (stderr %q)", stderr)
	}
	waitFor(t, 20*time.Second, "a /tasks/oom event for the restored container", func() bool { return oomOf(clone) })
	// The container's init process was not the one killed: it still counts.
	n := len(numbers(cloneLog))
	waitFor(t, 10*time.Second, "the restored counter to go on after the OOM kill", func() bool { return len(numbers(cloneLog)) > n+2 })
}

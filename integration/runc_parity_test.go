//go:build integration && linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestColdStartLikeRunc: without the snapboot.dev/checkpoint annotation, the
// snapboot runtime must behave exactly like containerd's runc shim. Every
// case runs against both runtimes; runc is the reference that proves the
// harness itself.
func TestColdStartLikeRunc(t *testing.T) {
	for _, rt := range []struct{ name, runtime string }{
		{"runc", runcRuntime},
		{"snapboot", snapbootRuntime},
	} {
		t.Run(rt.name, func(t *testing.T) {
			if rt.runtime == snapbootRuntime {
				requireShim(t)
			}
			t.Run("RunExitCode", func(t *testing.T) { testRunExitCode(t, rt.runtime) })
			t.Run("TaskLifecycle", func(t *testing.T) { testTaskLifecycle(t, rt.runtime) })
			t.Run("Checkpoint", func(t *testing.T) { testCheckpoint(t, rt.runtime) })
			t.Run("SnapshotDiff", func(t *testing.T) { testSnapshotDiff(t, rt.runtime) })
		})
	}
}

// An attached `ctr run --rm` relays stdout and the exit status.
func testRunExitCode(t *testing.T, runtime string) {
	id := uniqueID(t)
	t.Cleanup(func() { _ = removeContainer(id) }) // only if --rm did not
	stdout, stderr, err := ctrErr("run", "--rm", "--runtime", runtime, "--fifo-dir", fifoDir,
		busyboxImage, id, "/bin/sh", "-c", "echo hello; echo oops >&2; exit 3")
	if code := exitCode(err); code != 3 {
		t.Fatalf("ctr run exit code = %d (err %v), want 3\nstdout:\n%s\nstderr:\n%s", code, err, stdout, stderr)
	}
	if !strings.Contains(stdout, "hello") {
		t.Errorf("stdout = %q, want it to contain %q", stdout, "hello")
	}
	if strings.Contains(stdout, "oops") {
		t.Errorf("stdout = %q contains what the task wrote to stderr", stdout)
	}
	if !strings.Contains(stderr, "oops") {
		t.Errorf("stderr = %q, want it to contain %q", stderr, "oops")
	}
	// --rm removed the container.
	if out := ctr(t, "containers", "ls", "-q"); containsLine(out, id) {
		t.Errorf("container %s still listed after ctr run --rm:\n%s", id, out)
	}
}

// A detached task: exec, pause/resume, metrics, ps, kill, delete.
func testTaskLifecycle(t *testing.T, runtime string) {
	id := uniqueID(t)
	logFile := runDetached(t, id, runtime, nil, "", "/bin/sh", "-c", "echo started; exec sleep 300")
	waitFor(t, 10*time.Second, "the task to print 'started' to "+logFile, func() bool {
		return strings.Contains(readFile(logFile), "started")
	})
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Fatalf("status after ctr run -d = %q, want RUNNING", st)
	}
	pid := taskPID(t, id)
	if pid <= 0 {
		t.Fatalf("task pid = %d", pid)
	}
	// The runtime name resolved to the shim binary under test.
	wantShim := map[string]string{runcRuntime: "containerd-shim-runc-v2", snapbootRuntime: shimBinaryName}[runtime]
	if shimPID, exe := shimProcess(t, id); filepath.Base(exe) != wantShim {
		t.Errorf("shim of %s is %s (pid %d), want %s", id, exe, shimPID, wantShim)
	} else if runtime == snapbootRuntime && filepath.Dir(exe) != binDir {
		t.Errorf("snapboot shim runs from %s, want the one under test in %s", exe, binDir)
	}
	// The task's pid is a real process running sleep (exec'ed by sh).
	if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil || strings.TrimSpace(string(comm)) != "sleep" {
		t.Errorf("/proc/%d/comm = %q (%v), want sleep", pid, comm, err)
	}

	out := ctr(t, "task", "exec", "--exec-id", "e1", "--fifo-dir", fifoDir, id, "/bin/echo", "hi")
	if strings.TrimSpace(out) != "hi" {
		t.Errorf("ctr task exec echo hi: stdout = %q, want \"hi\"", out)
	}
	// An exec's exit status comes back too.
	if _, _, err := ctrErr("task", "exec", "--exec-id", "e2", "--fifo-dir", fifoDir, id, "/bin/sh", "-c", "exit 5"); exitCode(err) != 5 {
		t.Errorf("ctr task exec 'exit 5': exit code %d (%v), want 5", exitCode(err), err)
	}

	ctr(t, "task", "pause", id)
	waitTaskStatus(t, id, "PAUSED", 5*time.Second)
	ctr(t, "task", "resume", id)
	waitTaskStatus(t, id, "RUNNING", 5*time.Second)

	metrics := ctr(t, "task", "metrics", id)
	if !strings.Contains(metrics, id) || !(strings.Contains(metrics, "memory") && strings.Contains(metrics, "pids")) {
		t.Errorf("ctr task metrics output lacks the container id or memory/pids metrics:\n%s", metrics)
	}

	ps := ctr(t, "task", "ps", id)
	if !containsField(ps, strconv.Itoa(pid)) {
		t.Errorf("ctr task ps does not list pid %d:\n%s", pid, ps)
	}

	ctr(t, "task", "kill", "--signal", "SIGKILL", id)
	waitTaskStatus(t, id, "STOPPED", 10*time.Second)
	ctr(t, "task", "delete", id)
	if st := taskStatus(t, id); st != "" {
		t.Errorf("task still listed after ctr task delete: %q", st)
	}
	ctr(t, "container", "rm", id)
	if out := ctr(t, "containers", "ls", "-q"); containsLine(out, id) {
		t.Errorf("container %s still listed after ctr container rm", id)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
		if st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(st), ") Z ") {
			t.Errorf("process %d still alive after kill and delete", pid)
		}
	}
}

// `ctr task checkpoint` dumps a running shell loop with CRIU, once leaving it
// running and once with --exit.
func testCheckpoint(t *testing.T, runtime string) {
	id := uniqueID(t)
	logFile := runDetached(t, id, runtime, nil, "",
		"/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.05; done")
	waitFor(t, 10*time.Second, "tick 3 in "+logFile, func() bool { return strings.Contains(readFile(logFile), "tick 3\n") })

	dir := testDir(t)
	checkpointTask(t, id, filepath.Join(dir, "images1"), filepath.Join(dir, "work1"), false)
	for _, f := range []string{"inventory.img", "pstree.img"} {
		if _, err := os.Stat(filepath.Join(dir, "images1", f)); err != nil {
			t.Errorf("checkpoint image dir lacks %s: %v", f, err)
		}
	}
	if !strings.Contains(readFile(filepath.Join(dir, "work1", "dump.log")), "Dumping finished successfully") {
		t.Errorf("dump.log does not say 'Dumping finished successfully':\n%s", criuLogTail(filepath.Join(dir, "work1"), "dump.log"))
	}
	// Left running: still RUNNING, and the loop goes on.
	if st := taskStatus(t, id); st != "RUNNING" {
		t.Fatalf("status after checkpoint without --exit = %q, want RUNNING", st)
	}
	n := countLines(readFile(logFile))
	waitFor(t, 10*time.Second, "the loop to keep printing after the checkpoint", func() bool {
		return countLines(readFile(logFile)) >= n+3
	})

	checkpointTask(t, id, filepath.Join(dir, "images2"), filepath.Join(dir, "work2"), true)
	waitTaskStatus(t, id, "STOPPED", 10*time.Second)
	n = countLines(readFile(logFile))
	time.Sleep(300 * time.Millisecond)
	if m := countLines(readFile(logFile)); m != n {
		t.Errorf("the loop printed %d more lines after checkpoint --exit", m-n)
	}
}

// snapshotDiffTar captures the rw changes of a running container, whiteouts
// included.
func testSnapshotDiff(t *testing.T, runtime string) {
	id := uniqueID(t)
	logFile := runDetached(t, id, runtime, nil, "", "/bin/sh", "-c",
		"echo payload > /root/marker && mkdir -p /var/www/sub && echo x > /var/www/sub/f && rm /etc/hosts && echo ready && exec sleep 300")
	waitFor(t, 10*time.Second, "ready in "+logFile, func() bool { return strings.Contains(readFile(logFile), "ready") })
	entries := tarEntries(t, snapshotDiffTar(t, id))
	if got := entries["root/marker"]; got != "payload\n" {
		t.Errorf("diff: root/marker = %q, want %q (entries %v)", got, "payload\n", keys(entries))
	}
	if got := entries["var/www/sub/f"]; got != "x\n" {
		t.Errorf("diff: var/www/sub/f = %q, want %q", got, "x\n")
	}
	if _, ok := entries["etc/.wh.hosts"]; !ok {
		t.Errorf("diff lacks the whiteout etc/.wh.hosts; entries %v", keys(entries))
	}
	if _, ok := entries["bin/busybox"]; ok {
		t.Errorf("diff contains unchanged bin/busybox")
	}
}

func containsLine(out, want string) bool {
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

func containsField(out, want string) bool {
	for _, f := range strings.Fields(out) {
		if f == want {
			return true
		}
	}
	return false
}

func countLines(s string) int { return strings.Count(s, "\n") }

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

//go:build integration && linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loopbackScript serves on 127.0.0.1 only, and counts.
const loopbackScript = `mkdir -p /www && echo loopback-ok > /www/index.html && httpd -p 127.0.0.1:8080 -h /www && ` + counterScript

// TestRestoreOwnNetnsLoopback restores a donor whose network namespace
// runc made (ctr run with no network flag, as nerdctl's networks do too)
// and that listens on 127.0.0.1. runc's restore leaves that namespace
// empty, lo down; snapboot's createRuntime hook sets it up before CRIU
// restores the listening socket, so the clone is restored (not
// cold-started), has 127.0.0.1, and answers on it, as a cold start would.
func TestRestoreOwnNetnsLoopback(t *testing.T) {
	requireShim(t)
	start := func(ref string) (string, string) {
		id := uniqueID(t)
		ann := map[string]string{}
		if ref != "" {
			ann["snapboot.dev/checkpoint"] = ref
		}
		log := runDetachedOpts(t, id, runOptions{Runtime: snapbootRuntime, Annotations: ann}, "/bin/sh", "-c", loopbackScript)
		return id, log
	}
	get := func(id string) (string, error) {
		out, errOut, err := ctrErr("task", "exec", "--fifo-dir", fifoDir, "--exec-id", "get-"+id[len(id)-6:], id,
			"/bin/sh", "-c", `printf 'GET / HTTP/1.0\r\n\r\n' | nc 127.0.0.1 8080`)
		if err != nil {
			return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(errOut))
		}
		return out, nil
	}
	donor, donorLog := start("")
	waitCount(t, donorLog, 5)
	if out, err := get(donor); err != nil || !strings.Contains(out, "loopback-ok") {
		t.Fatalf("the donor does not answer on 127.0.0.1: %q %v", out, err)
	}

	ck := packAndPush(t, donor, registryAddr+"/it/loopback:v1", packOptions{})
	offset := containerdLogOffset()
	clone, cloneLog := start(ck.Ref)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if ns := waitCount(t, cloneLog, 3); ns[0] == 1 {
		t.Fatal("the clone cold-started")
	}
	out, err := get(clone)
	if err != nil || !strings.Contains(out, "loopback-ok") {
		t.Fatalf("the restored clone does not answer on 127.0.0.1: %q %v", out, err)
	}
	if hooked(t, clone) {
		t.Error("the restore's hook is still in the spec after the restore")
	}

	// A restore CRIU fails (an image it needs is gone) after the hook went
	// into the spec: the cold start runs without it, and serves on lo.
	broken := packAndPush(t, donor, registryAddr+"/it/loopback:broken", packOptions{tamper: func(t *testing.T, dir string) {
		if err := os.Remove(filepath.Join(dir, "fs-1.img")); err != nil {
			t.Fatal(err)
		}
	}})
	offset = containerdLogOffset()
	cold, coldLog := start(broken.Ref)
	line := logLine(t, offset, "snapboot.fallback", cold, 60*time.Second)
	if !strings.Contains(line, "reason_kind=restore") {
		t.Errorf("the broken checkpoint should fail in the restore, after the hook went in:\n%s", line)
	}
	if ns := waitCount(t, coldLog, 3); ns[0] != 1 {
		t.Fatalf("the fallback counted from %d, not 1", ns[0])
	}
	if hooked(t, cold) {
		t.Error("the cold start's spec still has the restore's hook")
	}
	if out, err := get(cold); err != nil || !strings.Contains(out, "loopback-ok") {
		t.Fatalf("the cold start does not answer on 127.0.0.1: %q %v", out, err)
	}
}

// hooked reports whether container id's spec, as containerd's runc shim
// keeps it in the task's bundle, has snapboot's restore hook.
func hooked(t *testing.T, id string) bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(tmpDir, "containerd", "state", "io.containerd.runtime.v2.task", namespace, id, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(data), "snapboot-restore-hook")
}

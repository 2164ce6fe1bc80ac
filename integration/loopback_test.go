//go:build integration && linux

package integration

import (
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
			return "", &execError{err: err, stderr: errOut}
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
}

type execError struct {
	err    error
	stderr string
}

func (e *execError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }

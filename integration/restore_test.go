//go:build integration && linux

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// counterScript counts in a shell variable, one number a line, and keeps a
// file in the rootfs changes open (CRIU needs it back, at the same size).
const counterScript = `echo started > /tmp/app.log; exec 3>>/tmp/app.log; i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done`

// handPacked is a checkpoint made exactly as the README's recipe says:
// ctr task checkpoint, ctr snapshots diff, tar, zstd, and the oras CLI.
type handPacked struct {
	Ref    string
	Digest string
	Dir    string // criu.tar.zst (or .lz4), rootfs.tar.zst, config.json
}

// packOptions vary the hand-made artifact for fault tests.
type packOptions struct {
	exit     bool // ctr task checkpoint --exit
	noRootfs bool // leave out the rootfs-changes layer
	lz4      bool // the CRIU images with lz4 instead of zstd
	// tamper, if set, edits the CRIU images before they are packed.
	tamper func(t *testing.T, criuDir string)
	// dropFromRootfs leaves these paths out of the rootfs changes.
	dropFromRootfs []string
}

func packAndPush(t *testing.T, id, ref string, o packOptions) handPacked {
	t.Helper()
	dir := testDir(t)
	checkpointTask(t, id, filepath.Join(dir, "criu"), filepath.Join(dir, "work"), o.exit)
	if o.tamper != nil {
		o.tamper(t, filepath.Join(dir, "criu"))
	}
	criuLayer := "criu.tar.zst:application/vnd.snapboot.criu.images.v1.tar+zstd"
	if o.lz4 {
		sh(t, dir, "tar -C criu -cf - . | lz4 -q -c > criu.tar.lz4")
		criuLayer = "criu.tar.lz4:application/vnd.snapboot.criu.images.v1.tar+lz4"
	} else {
		sh(t, dir, "tar -C criu -cf - . | zstd -q -T0 -o criu.tar.zst")
	}
	if err := os.WriteFile(filepath.Join(dir, "rootfs.tar"), withoutEntries(t, snapshotDiffTar(t, id), o.dropFromRootfs...), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, dir, "zstd -q -T0 rootfs.tar -o rootfs.tar.zst")
	sh(t, dir, `cat > config.json <<EOF
{"formatVersion": 1,
 "created": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
 "criu": {"version": "$(criu --version | awk '/^Version/{print $2}')"},
 "host": {"architecture": "amd64", "os": "linux", "kernel": "$(uname -r)"}}
EOF`)
	layers := criuLayer
	if !o.noRootfs {
		layers += " rootfs.tar.zst:application/vnd.snapboot.rootfs.diff.v1.tar+zstd"
	}
	// Relative paths, from the pack directory, as the README does it.
	sh(t, dir, "oras push --plain-http "+ref+" --config config.json:application/vnd.snapboot.checkpoint.config.v1+json "+layers)
	digest := strings.TrimSpace(orasCmd(t, "resolve", ref))
	if !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("oras resolve %s: %q", ref, digest)
	}
	return handPacked{Ref: ref, Digest: digest, Dir: dir}
}

// sh runs a shell command line in dir, failing the test on error.
func sh(t *testing.T, dir, script string) string {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-ec", script)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

// numbers are the counter values a container printed so far.
func numbers(logFile string) []int {
	var ns []int
	for _, l := range strings.Split(readFile(logFile), "\n") {
		if n, err := strconv.Atoi(strings.TrimSpace(l)); err == nil {
			ns = append(ns, n)
		}
	}
	return ns
}

func waitCount(t *testing.T, logFile string, atLeast int) []int {
	t.Helper()
	waitFor(t, 30*time.Second, fmt.Sprintf("%s to count to %d", logFile, atLeast), func() bool {
		ns := numbers(logFile)
		return len(ns) > 0 && ns[len(ns)-1] >= atLeast
	})
	return numbers(logFile)
}

// logLine waits for the shim's log line with event and the container ID,
// after offset, and returns it.
func logLine(t *testing.T, offset int64, event, id string, timeout time.Duration) string {
	t.Helper()
	var line string
	waitFor(t, timeout, fmt.Sprintf("log line %s for %s", event, id), func() bool {
		l := containerdLog()
		if int64(len(l)) < offset {
			return false
		}
		for _, s := range strings.Split(l[offset:], "\n") {
			if isEventLine(s, event, id) {
				line = s
				return true
			}
		}
		return false
	})
	return line
}

// isEventLine reports whether log line s has the fields event=event and
// id=id, whole: the line of container X-12 is not that of X-1. An event
// ending in "." ("snapboot.") matches every event it begins.
func isEventLine(s, event, id string) bool {
	if !containsField(s, "id="+id) {
		return false
	}
	for _, f := range strings.Fields(s) {
		if v, ok := strings.CutPrefix(f, "event="); ok && (v == event || strings.HasSuffix(event, ".") && strings.HasPrefix(v, event)) {
			return true
		}
	}
	return false
}

// startCounterClone starts a container from the busybox image with the
// checkpoint annotation (if ref is not empty) and the counter command, in
// its own network namespace.
func startCounterClone(t *testing.T, ref string) (id, logFile string) {
	t.Helper()
	return startScriptClone(t, ref, counterScript)
}

// startScriptClone is startCounterClone with another shell script, and
// extra ctr run flags.
func startScriptClone(t *testing.T, ref, script string, flags ...string) (id, logFile string) {
	t.Helper()
	id = uniqueID(t)
	ann := map[string]string{}
	if ref != "" {
		ann["snapboot.dev/checkpoint"] = ref
	}
	logFile = runDetachedOpts(t, id, runOptions{Runtime: snapbootRuntime, Annotations: ann,
		Flags: append([]string{"--with-ns", "network:" + newNetns(t), "--hostname", "host-" + id[len(id)-6:]}, flags...)}, "/bin/sh", "-c", script)
	return id, logFile
}

// expectSpecFallback waits for clone's cold start after a refusal of kind
// spec whose reason says reason.
func expectSpecFallback(t *testing.T, offset int64, clone, cloneLog, reason string) {
	t.Helper()
	line := logLine(t, offset, "snapboot.fallback", clone, 60*time.Second)
	if !strings.Contains(line, reason) || !strings.Contains(line, "reason_kind=spec") {
		t.Errorf("fallback reason should say %q, kind spec:\n%s", reason, line)
	}
	if ns := waitCount(t, cloneLog, 3); ns[0] != 1 {
		t.Fatalf("cold start should count from 1, counted from %d", ns[0])
	}
}

func startCounterDonor(t *testing.T) (id, logFile string) {
	t.Helper()
	return startCounterClone(t, "")
}

func TestRestoreContinuesCounting(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 20)

	ck := packAndPush(t, donor, registryAddr+"/it/counter:v1", packOptions{})
	atDump := numbers(donorLog)
	lastBeforeDump := atDump[len(atDump)-1]

	restoreAndCheck := func(t *testing.T, wantCached bool) {
		offset := containerdLogOffset()
		clone, cloneLog := startCounterClone(t, ck.Ref)
		line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		if !strings.Contains(line, "cached="+strconv.FormatBool(wantCached)) || !strings.Contains(line, ck.Digest) {
			t.Errorf("restore log line: want cached=%v and digest %s:\n%s", wantCached, ck.Digest, line)
		}
		ns := waitCount(t, cloneLog, lastBeforeDump+5)
		// The clone continues from the checkpointed value, not from 1.
		if ns[0] <= 10 || ns[0] > lastBeforeDump+1 {
			t.Fatalf("clone started counting at %d; donor had reached %d when the dump finished", ns[0], lastBeforeDump)
		}
		if got := ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "cat", clone, "/bin/cat", "/tmp/app.log"); got != "started\n" {
			t.Errorf("rootfs changes: /tmp/app.log in the clone = %q", got)
		}

		// The host name is the clone's spec's, not the donor's.
		if got := strings.TrimSpace(ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "hn", clone, "/bin/hostname")); got != "host-"+clone[len(clone)-6:] {
			t.Errorf("restored container's host name %q, want its spec's %q", got, "host-"+clone[len(clone)-6:])
		}

		// Stats work for a restored container as for a cold one.
		if m := ctr(t, "task", "metrics", clone); !strings.Contains(m, "memory") || !strings.Contains(m, "pids") {
			t.Errorf("ctr task metrics of the restored container:\n%s", m)
		}

		// kill and delete work as for any container.
		ctr(t, "task", "kill", "--signal", "SIGKILL", clone)
		waitTaskStatus(t, clone, "STOPPED", 10*time.Second)
		ctr(t, "task", "delete", clone)
		ctr(t, "container", "rm", clone)
		if m := readFile("/proc/self/mountinfo"); strings.Contains(m, clone) {
			t.Errorf("mounts of %s left after delete", clone)
		}
	}

	before := restoresTotal(t)
	t.Run("from registry", func(t *testing.T) { restoreAndCheck(t, false) })
	t.Run("cached, registry stopped", func(t *testing.T) {
		registryDown(t)
		restoreAndCheck(t, true)
	})
	if after := restoresTotal(t); after != before+2 {
		t.Errorf("snapboot_restores_total went from %d to %d, want +2", before, after)
	}
}

func TestRestoredServerAnswers(t *testing.T) {
	requireShim(t)
	donor := uniqueID(t)
	runDetachedOpts(t, donor, runOptions{Runtime: snapbootRuntime, Flags: []string{"--with-ns", "network:" + newNetns(t)}},
		"/bin/sh", "-c", "echo served-by-the-donor > /var/www/index.html; exec httpd -f -p 8080 -h /var/www")
	time.Sleep(500 * time.Millisecond)
	// Packed by hand with the lz4 CLI: a layer that lists no frames.
	ck := packAndPush(t, donor, registryAddr+"/it/httpd:v1", packOptions{exit: true, lz4: true})

	offset := containerdLogOffset()
	clone := uniqueID(t)
	netns := newNetns(t)
	runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ck.Ref},
		Flags: []string{"--with-ns", "network:" + netns}}, "/bin/sh", "-c", "echo cold > /var/www/index.html; exec httpd -f -p 8080 -h /var/www")
	if line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second); !strings.Contains(line, "streamed=false") {
		t.Errorf("a layer without a list of its frames is pulled whole before the restore:\n%s", line)
	}
	var body string
	waitFor(t, 10*time.Second, "the restored httpd to answer", func() bool {
		out, err := exec.Command("nsenter", "--net="+netns, "/bin/busybox", "wget", "-q", "-O", "-", "http://127.0.0.1:8080/").CombinedOutput()
		body = string(out)
		return err == nil
	})
	if strings.TrimSpace(body) != "served-by-the-donor" {
		t.Fatalf("restored server answered %q", body)
	}
}

func TestBadCheckpointsColdStart(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 10)
	corrupt := packAndPush(t, donor, registryAddr+"/it/faults:corrupt", packOptions{})
	corruptRegistryBlob(t, corrupt.Dir)
	// Without the rootfs changes, the file the donor holds open is missing
	// and runc restore fails: the fallback happens at Start.
	noRootfs := packAndPush(t, donor, registryAddr+"/it/faults:no-rootfs", packOptions{noRootfs: true})

	cases := []struct {
		name, ref string
		reasons   []string
	}{
		{"missing tag", registryAddr + "/it/faults:does-not-exist", []string{"not found"}},
		{"bad reference", "not a reference!", []string{"invalid reference"}},
		{"not allowed", "registry.invalid/it/faults:good", []string{"allow list"}},
		{"corrupted blob", corrupt.Ref, []string{"mismatched digest"}},
		// CRIU's own error lines come with runc's error.
		{"runc restore fails", noRootfs.Ref, []string{"runc restore", "; CRIU: ", "Error ("}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			offset := containerdLogOffset()
			id, logFile := startCounterClone(t, c.ref)
			line := logLine(t, offset, "snapboot.fallback", id, 60*time.Second)
			for _, reason := range c.reasons {
				if !strings.Contains(line, reason) {
					t.Errorf("fallback reason should mention %q:\n%s", reason, line)
				}
			}
			ns := waitCount(t, logFile, 3)
			if ns[0] != 1 {
				t.Fatalf("cold start should count from 1, counted from %d", ns[0])
			}
			if taskStatus(t, id) != "RUNNING" {
				t.Fatalf("task %s is %s", id, taskStatus(t, id))
			}
		})
	}
	entries, _ := os.ReadDir(filepath.Join(snapbootCacheDir, "tmp"))
	if len(entries) != 0 {
		t.Errorf("temporary files left in the cache: %v", entries)
	}
}

// corruptRegistryBlob flips bytes in the registry's stored copy of the CRIU
// layer, so the registry serves content that does not match its digest.
func corruptRegistryBlob(t *testing.T, packDir string) {
	t.Helper()
	out := sh(t, packDir, "sha256sum criu.tar.zst | cut -d' ' -f1")
	hex := strings.TrimSpace(out)
	path := filepath.Join(tmpDir, "registry", "storage", "docker", "registry", "v2", "blobs", "sha256", hex[:2], hex, "data")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("registry blob: %v", err)
	}
	for i := len(data) / 2; i < len(data)/2+16 && i < len(data); i++ {
		data[i] ^= 0xff
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// restoresTotal reads snapboot_restores_total from `snapboot metrics`.
func restoresTotal(t *testing.T) int {
	t.Helper()
	out := mustSnapboot(t, "metrics")
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "snapboot_restores_total "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no snapboot_restores_total in:\n%s", out)
	return 0
}

//go:build integration && linux

package integration

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// userNamespace is a ctr run's user namespace, mapping the container's
// ids 0–65535 to the node's from base.
func userNamespace(base string) []string {
	return []string{"--uidmap", "0:" + base + ":65536", "--gidmap", "0:" + base + ":65536"}
}

// searchableTmpDir lets a user namespace's root reach the containers'
// bundles and rootfs under tmpDir (runc needs it for a cold start as much
// as for a restore), for the test.
func searchableTmpDir(t *testing.T) {
	t.Helper()
	if err := os.Chmod(tmpDir, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(tmpDir, 0o700) })
}

// startInUserNamespace starts script in a container of its own user
// namespace (userNamespace(base), and so a network namespace runc makes
// in it), with more ctr run flags, restored from ref unless it is "".
func startInUserNamespace(t *testing.T, ref, base, script string, flags ...string) (id, logFile string) {
	t.Helper()
	id = uniqueID(t)
	ann := map[string]string{}
	if ref != "" {
		ann["snapboot.dev/checkpoint"] = ref
	}
	f := slices.Concat(userNamespace(base), flags)
	return id, runDetachedOpts(t, id, runOptions{Runtime: snapbootRuntime, Annotations: ann, Flags: f}, "/bin/sh", "-c", script)
}

// A container with a user namespace restores, streamed from the registry
// and then from the cache: CRIU reads the images as the namespace's root.
// The clone's processes are the node's user 100000, as the spec maps them.
// A clone whose spec maps the ids elsewhere cold-starts: CRIU would make
// the namespace with the image's maps.
func TestUserNamespaceRestores(t *testing.T) {
	requireShim(t)
	searchableTmpDir(t)
	donor, donorLog := startInUserNamespace(t, "", "100000", bigCounterScript)
	waitCount(t, donorLog, 10)
	ref := registryAddr + "/it/userns:v1"
	mustSnapboot(t, "checkpoint", donor, ref)
	lastBeforeDump := numbers(donorLog)[len(numbers(donorLog))-1]

	for _, want := range []string{"cached=false streamed=true", "cached=true streamed=false"} {
		offset := containerdLogOffset()
		clone, cloneLog := startInUserNamespace(t, ref, "100000", bigCounterScript)
		line := logLine(t, offset, "snapboot.", clone, 60*time.Second)
		if !strings.Contains(line, "event=snapboot.restore") {
			t.Fatalf("not restored: %s", line)
		}
		for _, w := range strings.Fields(want) {
			if !strings.Contains(line, w) {
				t.Errorf("restore log line should say %s:\n%s", w, line)
			}
		}
		if cs := waitCount(t, cloneLog, lastBeforeDump+3); cs[0] <= 5 || cs[0] > lastBeforeDump+1 {
			t.Fatalf("clone counted from %d; the donor was at %d when the dump ended", cs[0], lastBeforeDump)
		}
		pid := taskPID(t, clone)
		if uids := strings.Fields(statusField(t, pid, "Uid")); len(uids) != 4 || uids[0] != "100000" || uids[3] != "100000" {
			t.Errorf("the clone runs as the node's users %v, want 100000 (its spec's root)", uids)
		}
		if m := strings.Fields(readFile(fmt.Sprintf("/proc/%d/uid_map", pid))); strings.Join(m, " ") != "0 100000 65536" {
			t.Errorf("the clone's uid map is %q, want its spec's", m)
		}
		if got := ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "ls", clone, "/bin/stat", "-c", "%u:%g %n", "/tmp/app.log"); got != "0:0 /tmp/app.log\n" {
			t.Errorf("rootfs changes: the clone sees %q, want its root's /tmp/app.log", got)
		}
		if err := removeContainer(clone); err != nil {
			t.Error(err)
		}
	}

	offset := containerdLogOffset()
	clone, cloneLog := startInUserNamespace(t, ref, "200000", bigCounterScript)
	expectSpecFallback(t, offset, clone, cloneLog, "maps uids [0 100000 65536] and gids [0 100000 65536], the spec's maps uids [0 200000 65536]")
}

// TestUnixSocketNameInUserNamespaceNeedsItsDirectory is
// TestUnixSocketNameNeedsItsDirectory in a user namespace: the volume is
// the namespace's root's (the node's 100000), and so is the socket another
// program listens on there. CRIU binds the clone's socket as the
// namespace's root, whose capabilities cover the volume: without the
// check it replaced that socket for a clone running as the namespace's
// nobody, without capabilities, who may not write there.
func TestUnixSocketNameInUserNamespaceNeedsItsDirectory(t *testing.T) {
	requireShim(t)
	searchableTmpDir(t)
	program, flags := buildProgram(t, "unixsock", unixSocketProgram)
	volume := testDir(t)
	if err := os.Chown(volume, 100000, 100000); err != nil {
		t.Fatal(err)
	}
	flags = append(flags, "--mount", "type=bind,src="+volume+",dst=/vol,options=rbind:rw")
	start := func(ref string, extra ...string) (id, logFile string) {
		return startInUserNamespace(t, ref, "100000", program, slices.Concat(flags, extra)...)
	}
	donor, donorLog := start("")
	waitCount(t, donorLog, 5)
	sock := filepath.Join(volume, "app.sock")
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Sys().(*syscall.Stat_t).Uid != 100000 {
		t.Fatalf("the donor's socket: %v, %v", fi, err)
	}
	asDumped := packAndPush(t, donor, registryAddr+"/it/userns:unixsock", packOptions{})
	nobody := packAndPush(t, donor, registryAddr+"/it/userns:unixsock-nobody", packOptions{tamper: asNobodyWithSocket("/vol/app.sock")})
	t.Run("as dumped", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := start(asDumped.Ref)
		expectRestored(t, offset, clone, cloneLog)
		if err := removeContainer(clone); err != nil {
			t.Error(err)
		}
	})
	t.Run("as nobody", func(t *testing.T) {
		os.Remove(sock)
		node, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer node.Close()
		if err := os.Lchown(sock, 100000, 100000); err != nil {
			t.Fatal(err)
		}
		before, err := os.Lstat(sock)
		if err != nil {
			t.Fatal(err)
		}
		offset := containerdLogOffset()
		clone, cloneLog := start(nobody.Ref, append([]string{"--user", "65534:65534"}, dropAll...)...)
		waitCount(t, cloneLog, 3) // restored or cold-started
		after, err := os.Lstat(sock)
		if err != nil || !os.SameFile(before, after) {
			t.Errorf("the socket at %s was replaced or removed: %v", sock, err)
		}
		expectSpecFallback(t, offset, clone, cloneLog, "the unix socket /vol/app.sock is in /vol, where the spec's user (65534, the node's 165534) may not make or remove files")
	})
}

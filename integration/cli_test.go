//go:build integration && linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// snapbootCLI runs the snapboot CLI against the test containerd, registry
// and node config, and returns stdout, stderr and the exit code.
func snapbootCLI(args ...string) (stdout, stderr string, code int) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"--address", containerdAddr, "--namespace", namespace, "--config", snapbootConfigPath}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, cliBinaryName), full...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return o.String(), e.String(), exitCode(err)
}

func mustSnapboot(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := snapbootCLI(args...)
	if code != 0 {
		t.Fatalf("snapboot %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func TestCLICheckpointInspectRestore(t *testing.T) {
	requireShim(t)
	donor, donorLog := startCounterDonor(t)
	waitCount(t, donorLog, 15)
	ref := registryAddr + "/it/cli-counter:v1"
	out := mustSnapboot(t, "checkpoint", donor, ref)
	for _, want := range []string{"pushed " + ref + "@sha256:", "raw", "compressed", "dump", "pack", "push"} {
		if !strings.Contains(out, want) {
			t.Errorf("checkpoint output lacks %q:\n%s", want, out)
		}
	}
	ns := numbers(donorLog)
	lastBeforeDump := ns[len(ns)-1]
	waitCount(t, donorLog, lastBeforeDump+3) // the donor keeps running by default

	// The metadata is in the manifest too (OCI 1.1 descriptor data), the
	// same bytes as its blob: the registry kept it. So are the small rootfs
	// changes, and the CRIU layer's first frame (every image but the page
	// images) is in its annotations.
	var m struct {
		Config struct {
			Digest string
			Data   []byte
		}
		Layers []struct {
			MediaType   string
			Digest      string
			Size        int
			Data        []byte
			Annotations map[string]string
		}
	}
	if err := json.Unmarshal([]byte(orasCmd(t, "manifest", "fetch", ref)), &m); err != nil {
		t.Fatal(err)
	}
	if blob := orasCmd(t, "blob", "fetch", "--output", "-", ref+"@"+m.Config.Digest); len(m.Config.Data) == 0 || string(m.Config.Data) != blob {
		t.Errorf("the manifest embeds %q, the metadata blob is %q", m.Config.Data, blob)
	}
	var sawHead, sawRootfs bool
	for _, l := range m.Layers {
		blob := orasCmd(t, "blob", "fetch", "--output", "-", ref+"@"+l.Digest)
		switch l.MediaType {
		case "application/vnd.snapboot.rootfs.diff.v1.tar+zstd":
			sawRootfs = true
			if l.Size <= 16<<10 && string(l.Data) != blob {
				t.Errorf("the manifest embeds %d bytes of the rootfs changes, the blob has %d", len(l.Data), len(blob))
			}
		case "application/vnd.snapboot.criu.images.v1.tar+zstd":
			head, err := base64.StdEncoding.DecodeString(l.Annotations["dev.snapboot.stream.head"])
			sawHead = err == nil && len(head) > 0 && strings.HasPrefix(blob, string(head))
		}
	}
	if !sawHead || !sawRootfs {
		t.Errorf("the manifest should carry the CRIU layer's first frame (%v) and the rootfs changes (%v)", sawHead, sawRootfs)
	}

	// inspect reads the metadata and says this node can restore it.
	out = mustSnapboot(t, "inspect", ref)
	for _, want := range []string{"criu", "4.2", "architecture", "amd64", "source container", donor, "application/vnd.snapboot.criu.images.v1.tar+zstd", "application/vnd.snapboot.rootfs.diff.v1.tar+zstd", "tcp-established", "streamed:", "the first in the manifest"} {
		if !strings.Contains(out, want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`rootfs\.diff\S*\s.*in the manifest`).MatchString(out) {
		t.Errorf("inspect should say the rootfs changes come in the manifest:\n%s", out)
	}
	if !regexp.MustCompile(`restorable here\s+yes`).MatchString(out) {
		t.Errorf("inspect should say this node can restore it:\n%s", out)
	}
	jsonOut := mustSnapboot(t, "inspect", "--json", ref)
	var in struct {
		Metadata struct {
			CRIU struct{ Version string }
			Host struct {
				CPU struct{ Flags []string }
			}
		}
		Compatible bool
	}
	if err := json.Unmarshal([]byte(jsonOut), &in); err != nil || !in.Compatible || len(in.Metadata.Host.CPU.Flags) == 0 {
		t.Errorf("inspect --json: %v\n%s", err, jsonOut)
	}

	// pull fills the cache; the restore then downloads nothing.
	out = mustSnapboot(t, "pull", ref)
	if !strings.HasPrefix(out, "pulled ") {
		t.Errorf("pull: %s", out)
	}
	offset := containerdLogOffset()
	clone, cloneLog := startCounterClone(t, ref)
	line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if !strings.Contains(line, "cached=true") {
		t.Errorf("restore after snapboot pull should be cached:\n%s", line)
	}
	cs := waitCount(t, cloneLog, lastBeforeDump+3)
	if cs[0] <= 10 || cs[0] > lastBeforeDump+1 {
		t.Fatalf("clone counted from %d; the donor was at %d when the dump ended", cs[0], lastBeforeDump)
	}
	// DIGEST SIZE LAST-USED IN-USE UNPACKED REFERENCES: the clone holds
	// its checkpoint's entry.
	out = mustSnapboot(t, "cache", "ls")
	inUse := false
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 6 && slices.Contains(strings.Split(f[5], ","), ref) {
			inUse = f[3] == "true"
		}
	}
	if !inUse {
		t.Errorf("cache ls should list %s in use:\n%s", ref, out)
	}
}

// tcpServer accepts connections on host loopback and counts the lines each
// connection sends.
type tcpServer struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []*int
}

func newTCPServer(t *testing.T) *tcpServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n := new(int)
			s.mu.Lock()
			s.conns = append(s.conns, n)
			s.mu.Unlock()
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					s.mu.Lock()
					*n++
					s.mu.Unlock()
				}
			}()
		}
	}()
	return s
}

func (s *tcpServer) counts() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int
	for _, n := range s.conns {
		out = append(out, *n)
	}
	return out
}

func TestCLICheckpointEstablishedTCP(t *testing.T) {
	requireShim(t)
	srv := newTCPServer(t)
	port := srv.ln.Addr().(*net.TCPAddr).Port
	script := fmt.Sprintf("while true; do echo tick; sleep 0.2; done | nc 127.0.0.1 %d", port)

	// Plain CRIU, through the stock runc shim, refuses the connected socket.
	plain := uniqueID(t)
	runDetachedOpts(t, plain, runOptions{Runtime: runcRuntime, Flags: []string{"--net-host"}}, "/bin/sh", "-c", script)
	waitFor(t, 10*time.Second, "the runc donor to connect", func() bool { return len(srv.counts()) == 1 && srv.counts()[0] > 2 })
	dir := testDir(t)
	_, stderr, err := ctrErr("task", "checkpoint", "--image-path", filepath.Join(dir, "images"), "--work-path", filepath.Join(dir, "work"), plain)
	dumpLog := readFile(filepath.Join(dir, "work", "dump.log"))
	if err == nil || !strings.Contains(dumpLog+stderr, "tcp-established") {
		t.Fatalf("checkpoint without tcp-established should fail on the connected socket; err=%v\n%s\n%s", err, stderr, dumpLog)
	}
	if err := removeContainer(plain); err != nil {
		t.Fatal(err)
	}

	// snapboot checkpoint dumps it.
	donor := uniqueID(t)
	runDetachedOpts(t, donor, runOptions{Runtime: snapbootRuntime, Flags: []string{"--net-host"}}, "/bin/sh", "-c", script)
	waitFor(t, 10*time.Second, "the donor to connect", func() bool { c := srv.counts(); return len(c) == 2 && c[1] > 2 })
	ref := registryAddr + "/it/tcp:v1"
	mustSnapboot(t, "checkpoint", donor, ref)

	offset := containerdLogOffset()
	clone := uniqueID(t)
	runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ref},
		Flags: []string{"--net-host"}}, "/bin/sh", "-c", script)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)

	// The donor's connection is untouched: it keeps sending, at its own
	// rate (a clone sharing it would double the rate), and the clone opened
	// no connection of its own (it came back closed).
	before := srv.counts()
	time.Sleep(2 * time.Second)
	after := srv.counts()
	if len(after) != 2 {
		t.Fatalf("server saw %d connections, want the two donors' only: %v", len(after), after)
	}
	got := after[1] - before[1]
	if got < 4 || got > 14 {
		t.Fatalf("donor connection carried %d lines in 2s, want about 10 (donor alone)", got)
	}
	conf := readFile(filepath.Join(tmpDir, "containerd", "state", "io.containerd.runtime.v2.task", namespace, clone, "snapboot-criu.conf"))
	if !strings.Contains(conf, "tcp-established") {
		t.Errorf("after the restore the clone should be armed for a dump (tcp-established):\n%s", conf)
	}
}

func TestCLIAttachAsReferrer(t *testing.T) {
	requireShim(t)
	image := registryAddr + "/it/attach:1"
	ctr(t, "images", "tag", "--force", busyboxImage, image)
	ctr(t, "images", "push", "--plain-http", image)
	donor := uniqueID(t)
	runDetachedOpts(t, donor, runOptions{Runtime: snapbootRuntime, Image: image, Flags: []string{"--with-ns", "network:" + newNetns(t)}},
		"/bin/sh", "-c", "while true; do sleep 1; done")
	time.Sleep(300 * time.Millisecond)
	out := mustSnapboot(t, "checkpoint", "--attach", donor, registryAddr+"/it/attach:checkpoint-1")
	digest := strings.TrimSpace(out[strings.Index(out, "@")+1 : strings.Index(out, "\n")])
	discovered := orasCmd(t, "discover", "--format", "json", image)
	if !strings.Contains(discovered, digest) || !strings.Contains(discovered, "application/vnd.snapboot.checkpoint.v1") {
		t.Fatalf("oras discover %s does not list the checkpoint %s:\n%s", image, digest, discovered)
	}
}

func TestCLIErrors(t *testing.T) {
	requireShim(t)
	// A container that is not running.
	id := uniqueID(t)
	ctr(t, "container", "create", busyboxImage, id, "/bin/true")
	t.Cleanup(func() { removeContainer(id) })
	_, stderr, code := snapbootCLI("checkpoint", id, registryAddr+"/it/errors:v1")
	if code != 3 || !strings.Contains(stderr, id) || !strings.Contains(stderr, "not running") {
		t.Errorf("checkpoint of a container without task: exit %d, want 3 naming it:\n%s", code, stderr)
	}
	_, stderr, code = snapbootCLI("checkpoint", "no-such-container", registryAddr+"/it/errors:v1")
	if code != 3 || !strings.Contains(stderr, "no-such-container") {
		t.Errorf("checkpoint of a missing container: exit %d, want 3:\n%s", code, stderr)
	}
	// An unreachable registry.
	donor := uniqueID(t)
	runDetachedOpts(t, donor, runOptions{Runtime: snapbootRuntime, Flags: []string{"--with-ns", "network:" + newNetns(t)}}, "/bin/sh", "-c", "sleep 300")
	_, stderr, code = snapbootCLI("checkpoint", donor, "127.0.0.1:1/it/errors:v1")
	if code == 0 || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Errorf("checkpoint to an unreachable registry: exit %d, want non-zero naming it:\n%s", code, stderr)
	}
	if st := taskStatus(t, donor); st != "RUNNING" {
		t.Errorf("after a failed push the donor should run on, it is %s", st)
	}
	// With --exit the dump ends the donor: a push that cannot work is
	// found before it.
	_, stderr, code = snapbootCLI("checkpoint", "--exit", donor, "127.0.0.1:1/it/errors:v1")
	if code == 0 || !strings.Contains(stderr, "before the dump") {
		t.Errorf("checkpoint --exit to an unreachable registry: exit %d, want non-zero, found before the dump:\n%s", code, stderr)
	}
	if st := taskStatus(t, donor); st != "RUNNING" {
		t.Errorf("after checkpoint --exit failed to push, the donor should run on, it is %s", st)
	}
	// link-remap without --exit: CRIU would remove its links before the
	// rootfs changes are read, and the checkpoint could never restore.
	remapper := uniqueID(t)
	runDetachedOpts(t, remapper, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/criu-options": "link-remap"},
		Flags: []string{"--with-ns", "network:" + newNetns(t)}}, "/bin/sh", "-c", "sleep 300")
	_, stderr, code = snapbootCLI("checkpoint", remapper, registryAddr+"/it/errors:v1")
	if code == 0 || !strings.Contains(stderr, "link-remap") || !strings.Contains(stderr, "--exit") {
		t.Errorf("checkpoint of a link-remap container without --exit: exit %d, want non-zero naming link-remap and --exit:\n%s", code, stderr)
	}
	if st := taskStatus(t, remapper); st != "RUNNING" {
		t.Errorf("after the refused link-remap checkpoint the donor should run on, it is %s", st)
	}
	// Usage errors.
	if _, _, code = snapbootCLI("checkpoint", donor); code != 2 {
		t.Errorf("checkpoint with one argument: exit %d, want 2", code)
	}
	_, stderr, code = snapbootCLI("checkpoint", "--compression", "max", donor, registryAddr+"/it/errors:v1")
	if code != 2 || !strings.Contains(stderr, `"max"`) || !strings.Contains(stderr, "best") {
		t.Errorf("checkpoint --compression max: exit %d, want 2 naming the level and the levels there are:\n%s", code, stderr)
	}
	if st := taskStatus(t, donor); st != "RUNNING" {
		t.Errorf("after a refused level the donor should run on, it is %s", st)
	}
	_, stderr, code = snapbootCLI("checkpoint", "--warm", "20", donor, registryAddr+"/it/errors:v1")
	if code != 2 || !strings.Contains(stderr, "--wait-http") {
		t.Errorf("checkpoint --warm without --wait-http: exit %d, want 2 naming --wait-http:\n%s", code, stderr)
	}
	// The installer checks a node configuration with the CLI before it
	// writes it.
	dir := testDir(t)
	good, bad := filepath.Join(dir, "good.toml"), filepath.Join(dir, "bad.toml")
	os.WriteFile(good, []byte("allow = [\"reg.test/apps/\"]\n"), 0o600)
	os.WriteFile(bad, []byte("alow = [\"reg.test/apps/\"]\n"), 0o600)
	if out, stderr, code := snapbootCLI("--config", good, "config", "check"); code != 0 || !strings.Contains(out, "valid") {
		t.Errorf("config check of a valid file: exit %d\n%s%s", code, out, stderr)
	}
	for _, path := range []string{bad, filepath.Join(dir, "absent.toml")} {
		if _, stderr, code := snapbootCLI("--config", path, "config", "check"); code == 0 {
			t.Errorf("config check of %s: exit 0\n%s", path, stderr)
		}
	}
	if _, _, code = snapbootCLI("inspect", registryAddr+"/it/errors:missing"); code != 3 {
		t.Errorf("inspect of a missing tag: exit %d, want 3", code)
	}
	if entries, _ := os.ReadDir(filepath.Join(snapbootCacheDir, "tmp")); len(entries) != 0 {
		t.Errorf("checkpoint work files left behind: %v", entries)
	}
}

//go:build integration && linux

package integration

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/snapboot/snapboot/oci"
)

// nodeConfig writes a node configuration for one test, with its own cache,
// for `ctr run --runtime-config-path` (the shim reads it instead of the
// harness's). It returns the file and the cache root.
func nodeConfig(t *testing.T, cacheRoot string, extra string, allow ...string) (path string) {
	t.Helper()
	dir := testDir(t)
	if cacheRoot == "" {
		cacheRoot = filepath.Join(dir, "cache")
	}
	allow = append(allow, registryAddr)
	quoted := make([]string, len(allow))
	for i, a := range allow {
		quoted[i] = strconv.Quote(a)
	}
	list := strings.Join(quoted, ", ")
	body := fmt.Sprintf("allow = [%s]\ninsecure_registries = [%s]\n%s\n[cache]\nroot = %q\n", list, list, extra, cacheRoot)
	path = filepath.Join(dir, "snapboot.toml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func withConfig(path string, flags ...string) []string {
	return append([]string{"--runtime-config-path", path}, flags...)
}

// noLeftovers fails the test if the cache has partial downloads, unpack
// directories or incomplete unpacked checkpoints.
func noLeftovers(t *testing.T, cacheRoot string) {
	t.Helper()
	for _, sub := range []string{"ingest", "tmp"} {
		if entries, _ := os.ReadDir(filepath.Join(cacheRoot, sub)); len(entries) != 0 {
			names := []string{}
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("%s/%s holds leftovers: %v", cacheRoot, sub, names)
		}
	}
	unpacked, _ := os.ReadDir(filepath.Join(cacheRoot, "unpacked"))
	for _, u := range unpacked {
		if _, err := os.Stat(filepath.Join(cacheRoot, "unpacked", u.Name(), ".snapboot-complete")); err != nil {
			t.Errorf("incomplete unpacked checkpoint %s", u.Name())
		}
	}
}

// importOtherImage imports a busybox image whose /bin/busybox differs from
// the donor's (same program, 4 KiB longer): a checkpoint of the donor does
// not fit it.
func importOtherImage(t *testing.T) string {
	t.Helper()
	name := "localhost/snapboot-it/busybox-other:1"
	layer, err := busyboxLayer()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	tr, tw := tar.NewReader(bytes.NewReader(layer)), tar.NewWriter(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if strings.TrimPrefix(h.Name, "./") == "bin/busybox" {
			body = append(body, make([]byte, 4096)...)
			h.Size = int64(len(body))
		}
		tw.WriteHeader(h)
		tw.Write(body)
	}
	tw.Close()
	oci, err := ociImageLayout(name, out.Bytes(), []string{"/bin/sh"})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(testDir(t), "other.tar")
	os.WriteFile(path, oci, 0o644)
	ctr(t, "images", "import", path)
	return name
}

// paddedCounterScript counts like counterScript while the shell holds
// 30 kB of random bytes (as od's text): the CRIU images layer then
// compresses to about 50 kB, where counterScript's is about 18 kB, a
// little over oci.MaxEmbedded. A layer that small would sometimes be
// embedded in the manifest, and then no fault a proxy puts on blobs would
// reach it.
const paddedCounterScript = `pad=$(head -c 30000 /dev/urandom | od -An -tx1); ` + counterScript

// checkpointCounter checkpoints a counting donor into ref with the CLI. Its
// CRIU images layer is downloaded as a blob, never read from the manifest:
// the tests that use it put faults on the blobs a proxy serves.
func checkpointCounter(t *testing.T, ref string) {
	t.Helper()
	donor, donorLog := startScriptClone(t, "", paddedCounterScript)
	waitCount(t, donorLog, 5)
	mustSnapboot(t, "checkpoint", donor, ref)
	var m ocispec.Manifest
	if err := json.Unmarshal([]byte(orasCmd(t, "manifest", "fetch", "--plain-http", ref)), &m); err != nil {
		t.Fatal(err)
	}
	criu := 0
	for _, l := range m.Layers {
		if l.MediaType == oci.MediaTypeCRIUImages || l.MediaType == oci.MediaTypeCRIUImagesLZ4 {
			criu++
			if l.Data != nil || l.Size <= oci.MaxEmbedded {
				t.Fatalf("%s: the CRIU images layer (%d bytes) is embedded in the manifest: no fault on blobs would reach it", ref, l.Size)
			}
		}
	}
	if criu != 1 {
		t.Fatalf("%s: %d CRIU images layers, want 1", ref, criu)
	}
}

func TestFaultsColdStart(t *testing.T) {
	requireShim(t)
	base := registryAddr + "/it/faults5:v1"
	checkpointCounter(t, base)
	proxy := newFaultProxy(t)
	for _, repo := range []string{"slow", "truncated", "badjson"} {
		orasCmd(t, "cp", base, registryAddr+"/it/"+repo+":v1")
	}
	proxy.set(func(p *faultProxy) {
		p.slowBlobs["it/slow"] = 30 * time.Second
		p.truncate["it/truncated"] = true
		p.badJSON["it/badjson"] = true
	})

	// Artifacts made by hand with the oras CLI: a wrong artifactType, and
	// metadata that is not JSON.
	dir := testDir(t)
	sh(t, dir, "printf 'not a checkpoint' > criu.tar.zst; printf '{not json' > config.json")
	sh(t, dir, "oras push --plain-http "+registryAddr+"/it/wrongtype:v1 --artifact-type application/vnd.example.other criu.tar.zst:application/vnd.snapboot.criu.images.v1.tar+zstd")
	sh(t, dir, "oras push --plain-http "+registryAddr+"/it/badconfig:v1 --config config.json:application/vnd.snapboot.checkpoint.config.v1+json criu.tar.zst:application/vnd.snapboot.criu.images.v1.tar+zstd")

	// A cache on a full disk: a 64 KiB tmpfs.
	fullDisk := filepath.Join(testDir(t), "full")
	os.MkdirAll(fullDisk, 0o755)
	if err := syscall.Mount("tmpfs", fullDisk, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(fullDisk, syscall.MNT_DETACH) })

	other := importOtherImage(t)
	cases := []struct {
		name, ref, image, cacheRoot, reason string
		within                              time.Duration
	}{
		{"registry unreachable", "127.0.0.1:1/it/faults5:v1", "", "", "connection refused", 20 * time.Second},
		{"registry very slow", proxy.addr + "/it/slow:v1", "", "", "deadline exceeded", 15 * time.Second},
		{"truncated blob", proxy.addr + "/it/truncated:v1", "", "", "unexpected EOF", 20 * time.Second},
		{"manifest not JSON", proxy.addr + "/it/badjson:v1", "", "", "manifest is not valid JSON", 20 * time.Second},
		{"wrong artifactType", registryAddr + "/it/wrongtype:v1", "", "", "artifactType", 20 * time.Second},
		{"metadata not JSON", registryAddr + "/it/badconfig:v1", "", "", "config is not valid JSON", 20 * time.Second},
		{"cache disk full", base, "", fullDisk, "no space left on device", 20 * time.Second},
		{"checkpoint of another image", base, other, "", "runc restore", 20 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := nodeConfig(t, c.cacheRoot, "[pull]\ntimeout = \"3s\"", proxy.addr, "127.0.0.1:1")
			cacheRoot := c.cacheRoot
			if cacheRoot == "" {
				cacheRoot = filepath.Join(filepath.Dir(cfg), "cache")
			}
			offset := containerdLogOffset()
			id := uniqueID(t)
			began := time.Now()
			logFile := runDetachedOpts(t, id, runOptions{Runtime: snapbootRuntime, Image: c.image,
				Annotations: map[string]string{"snapboot.dev/checkpoint": c.ref},
				Flags:       withConfig(cfg, "--with-ns", "network:"+newNetns(t))}, "/bin/sh", "-c", counterScript)
			if took := time.Since(began); took > c.within {
				t.Errorf("the container took %v to start, want at most %v", took, c.within)
			}
			line := logLine(t, offset, "snapboot.fallback", id, 30*time.Second)
			if !strings.Contains(line, c.reason) {
				t.Errorf("fallback reason should mention %q:\n%s", c.reason, line)
			}
			if ns := waitCount(t, logFile, 3); ns[0] != 1 {
				t.Fatalf("cold start should count from 1, counted from %d", ns[0])
			}
			noLeftovers(t, cacheRoot)
		})
	}
}

// shimPID finds the shim process serving container id, or 0.
func shimPID(id string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		args := strings.Split(string(cmdline), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != shimBinaryName {
			continue
		}
		for i, a := range args {
			if a == "-id" && i+1 < len(args) && args[i+1] == id {
				return pid
			}
		}
	}
	return 0
}

func TestShimKilledMidPull(t *testing.T) {
	requireShim(t)
	ref := registryAddr + "/it/killed:v1"
	checkpointCounter(t, ref)
	proxy := newFaultProxy(t)
	proxy.set(func(p *faultProxy) { p.slowBlobs["it/killed"] = 60 * time.Second })
	cfg := nodeConfig(t, "", "[pull]\ntimeout = \"2m\"", proxy.addr)
	cacheRoot := filepath.Join(filepath.Dir(cfg), "cache")

	id := uniqueID(t)
	t.Cleanup(func() { removeContainer(id) })
	done := make(chan error, 1)
	netns := newNetns(t)
	go func() {
		_, stderr, err := ctrErr("run", "-d", "--runtime", snapbootRuntime, "--runtime-config-path", cfg,
			"--annotation", "snapboot.dev/checkpoint="+proxy.addr+"/it/killed:v1", "--with-ns", "network:"+netns,
			"--log-uri", "file://"+filepath.Join(logsDir, id+".log"), busyboxImage, id, "/bin/sh", "-c", counterScript)
		if err != nil {
			err = fmt.Errorf("%v: %s", err, stderr)
		}
		done <- err
	}()
	// Wait for a partial download, then kill the shim. The metadata comes
	// in the manifest, so what downloads first is a layer, streamed into a
	// directory under tmp/ (a blob fetched whole goes to ingest/).
	waitFor(t, 30*time.Second, "a partial download in the cache", func() bool {
		for _, d := range []string{"ingest", "tmp"} {
			if entries, _ := os.ReadDir(filepath.Join(cacheRoot, d)); len(entries) > 0 {
				return true
			}
		}
		return false
	})

	// Create returns before the download answers: the shim is killed while
	// runc restores, CRIU waiting for the page images.
	waitFor(t, 30*time.Second, "runc's restore under way", func() bool {
		return strings.Contains(readFile("/proc/self/mountinfo"), id+"/criu-root")
	})

	pid := shimPID(id)
	if pid == 0 {
		t.Fatal("no shim process for the container")
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil {
		t.Fatal("ctr run succeeded although its shim was killed")
	}
	removeContainer(id)
	// runc died with its shim, its rootfs mount for CRIU still up; the
	// shim's delete command (run by containerd) takes it down, and runc's
	// state directory goes with it.
	waitFor(t, 10*time.Second, "no mount or runc state left by the killed restore", func() bool {
		_, err := os.Stat(filepath.Join("/run/containerd/runc", namespace, id))
		return !strings.Contains(readFile("/proc/self/mountinfo"), id+"/criu-root") && errors.Is(err, os.ErrNotExist)
	})
	for _, root := range cgroupRoots() {
		if _, err := os.Stat(filepath.Join(root, namespace, id)); err == nil {
			t.Errorf("the killed restore's cgroup is left: %s", filepath.Join(root, namespace, id))
		}
	}

	// The next create works, and leaves nothing behind.
	offset := containerdLogOffset()
	clone := uniqueID(t)
	logFile := runDetachedOpts(t, clone, runOptions{Runtime: snapbootRuntime, Annotations: map[string]string{"snapboot.dev/checkpoint": ref},
		Flags: withConfig(cfg, "--with-ns", "network:"+newNetns(t))}, "/bin/sh", "-c", counterScript)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if ns := waitCount(t, logFile, 8); ns[0] == 1 {
		t.Fatal("the next create cold-started")
	}
	noLeftovers(t, cacheRoot)
}

func TestLoadSameCheckpoint(t *testing.T) {
	requireShim(t)
	ref := registryAddr + "/it/load-same:v1"
	checkpointCounter(t, ref)
	proxy := newFaultProxy(t)
	cfg := nodeConfig(t, "", "[pull]\ntimeout = \"2m\"", proxy.addr)

	const n = 10
	ids := make([]string, n)
	logs := make([]string, n)
	for i := range ids {
		ids[i] = uniqueID(t)
		logs[i] = filepath.Join(logsDir, ids[i]+".log")
		id := ids[i]
		t.Cleanup(func() { removeContainer(id) })
	}
	offset := containerdLogOffset()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range ids {
		netns := newNetns(t)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, stderr, err := ctrErr("run", "-d", "--runtime", snapbootRuntime, "--runtime-config-path", cfg,
				"--annotation", "snapboot.dev/checkpoint="+proxy.addr+"/it/load-same:v1", "--with-ns", "network:"+netns,
				"--log-uri", "file://"+logs[i], busyboxImage, ids[i], "/bin/sh", "-c", counterScript)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %v: %s", ids[i], err, stderr)
			}
		}(i)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, id := range ids {
		logLine(t, offset, "snapboot.restore", id, 60*time.Second)
		if ns := waitCount(t, logs[i], 8); ns[0] == 1 {
			t.Errorf("%s cold-started", id)
		}
	}
	proxy.mu.Lock()
	defer proxy.mu.Unlock()
	if len(proxy.blobGets) == 0 {
		t.Fatal("no blob went through the proxy")
	}
	for d, gets := range proxy.blobGets {
		if gets != 1 {
			t.Errorf("blob %s downloaded %d times by %d containers, want once", d, gets, n)
		}
	}
}

func TestLoadManyCheckpointsWithinCacheLimit(t *testing.T) {
	requireShim(t)
	// A donor that writes no file: its checkpoints have no rootfs changes,
	// so the cache is free to evict them once they are restored.
	donor := uniqueID(t)
	donorLog := runDetachedOpts(t, donor, runOptions{Runtime: snapbootRuntime, Flags: []string{"--with-ns", "network:" + newNetns(t)}},
		"/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done")
	waitCount(t, donorLog, 5)
	const n = 10
	const limit = 1 << 20
	refs := make([]string, n)
	for i := range refs {
		refs[i] = fmt.Sprintf("%s/it/load-many:v%d", registryAddr, i)
		mustSnapboot(t, "checkpoint", donor, refs[i])
	}
	cfg := nodeConfig(t, "", fmt.Sprintf("[pull]\ntimeout = \"2m\"\n"))
	// max_size goes in the [cache] table, which nodeConfig writes last.
	data, _ := os.ReadFile(cfg)
	os.WriteFile(cfg, append(data, []byte(fmt.Sprintf("max_size = %d\n", limit))...), 0o644)
	cacheRoot := filepath.Join(filepath.Dir(cfg), "cache")

	offset := containerdLogOffset()
	var wg sync.WaitGroup
	errs := make([]error, n)
	ids := make([]string, n)
	for i := range refs {
		ids[i] = uniqueID(t)
		id := ids[i]
		t.Cleanup(func() { removeContainer(id) })
		netns := newNetns(t)
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, stderr, err := ctrErr("run", "-d", "--runtime", snapbootRuntime, "--runtime-config-path", cfg,
				"--annotation", "snapboot.dev/checkpoint="+refs[i], "--with-ns", "network:"+netns,
				"--log-uri", "file://"+filepath.Join(logsDir, ids[i]+".log"), busyboxImage, ids[i],
				"/bin/sh", "-c", "i=0; while true; do i=$((i+1)); echo $i; sleep 0.1; done")
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, stderr)
			}
		}(i)
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
		logLine(t, offset, "snapboot.restore", ids[i], 60*time.Second)
	}
	var size int64
	// Streamed restores fill the cache after their restore: the cache
	// settles once no fill is left in tmp/.
	waitFor(t, 90*time.Second, fmt.Sprintf("the cache to settle under %d bytes", limit), func() bool {
		if tmp, _ := os.ReadDir(filepath.Join(cacheRoot, "tmp")); len(tmp) != 0 {
			return false
		}
		size = 0
		for _, sub := range []string{"blobs", "unpacked"} {
			filepath.WalkDir(filepath.Join(cacheRoot, sub), func(_ string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if fi, err := d.Info(); err == nil {
						size += fi.Size()
					}
				}
				return nil
			})
		}
		return size <= limit
	})
	// A shim logs its evictions after making them, through containerd's
	// log: the line may come a moment after the cache has shrunk.
	waitForLogSince(t, offset, "event=snapboot.evict", 10*time.Second)
	noLeftovers(t, cacheRoot)
}

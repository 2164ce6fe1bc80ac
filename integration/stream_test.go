//go:build integration && linux

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/snapboot/snapboot/oci"
)

// bigCounterScript counts like counterScript while the shell holds 24 MB,
// so that its page image spans several zstd frames of the checkpoint.
const bigCounterScript = `big=$(head -c 24000000 /dev/zero | tr '\0' x); ` + counterScript

// A checkpoint made by `snapboot checkpoint` restores while its page images
// download (streamed=true), ends up in the cache, and leaves no mount. One
// whose last frame does not match the digest its manifest lists fails that
// restore mid-way, and the container starts cold.
func TestStreamedRestore(t *testing.T) {
	requireShim(t)
	donor, donorLog := startScriptClone(t, "", bigCounterScript)
	waitCount(t, donorLog, 10)
	ref := registryAddr + "/it/stream:v1"
	mustSnapboot(t, "checkpoint", donor, ref)
	lastBeforeDump := numbers(donorLog)[len(numbers(donorLog))-1]
	m, ck := fetchCheckpoint(t, ref)
	if ck.Stream == nil || len(ck.Stream.Frames) < 4 || len(ck.Stream.Tail) == 0 {
		t.Fatalf("the CRIU layer's stream index: %+v", ck.Stream)
	}

	t.Run("streamed", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ref, bigCounterScript)
		defer func() {
			// Its shim goes with it, after filling the cache (see below).
			if err := removeContainer(clone); err != nil {
				t.Error(err)
			}
		}()
		line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		t.Log(line)
		if !strings.Contains(line, "cached=false") || !strings.Contains(line, "streamed=true") {
			t.Errorf("restore from the registry should stream:\n%s", line)
		}
		cs := waitCount(t, cloneLog, lastBeforeDump+3)
		if cs[0] <= 5 || cs[0] > lastBeforeDump+1 {
			t.Fatalf("clone counted from %d; the donor was at %d when the dump ended", cs[0], lastBeforeDump)
		}
		if got := ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "cat", clone, "/bin/cat", "/tmp/app.log"); got != "started\n" {
			t.Errorf("rootfs changes: /tmp/app.log in the clone = %q", got)
		}
		if mi := readFile("/proc/self/mountinfo"); strings.Contains(mi, "snapboot-stream") {
			t.Errorf("a streamfs mount is left after the restore:\n%s", mi)
		}
	})

	// The streamed restore's shim fills the cache after the restore, and
	// waits for that before it exits with its container.
	t.Run("cached after streaming", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ref, bigCounterScript)
		line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		t.Log(line)
		if !strings.Contains(line, "cached=true") || !strings.Contains(line, "streamed=false") {
			t.Errorf("second restore should come from the cache the streamed one filled:\n%s", line)
		}
		waitCount(t, cloneLog, lastBeforeDump+3)
	})

	t.Run("frame not matching its digest", func(t *testing.T) {
		// The registry serves another last frame than the manifest lists:
		// the layer's own digest is made to match, the frame's does not.
		dir := testDir(t)
		layer := filepath.Join(dir, "criu.tar.zst")
		orasCmd(t, "blob", "fetch", "--output", layer, strings.Split(ref, ":v1")[0]+"@"+ck.CRIU.Digest.String())
		data, err := os.ReadFile(layer)
		if err != nil {
			t.Fatal(err)
		}
		last := ck.Stream.Frames[len(ck.Stream.Frames)-1]
		data[int64(len(data))-last.Size/2] ^= 0xff
		if err := os.WriteFile(layer, data, 0o644); err != nil {
			t.Fatal(err)
		}
		bad := m
		bad.Layers = append([]ocispec.Descriptor{}, m.Layers...)
		for i, l := range bad.Layers {
			if l.MediaType == oci.MediaTypeCRIUImages {
				bad.Layers[i].Digest = digest.FromBytes(data)
			}
		}
		badRef := registryAddr + "/it/stream:tampered"
		repo := strings.Split(ref, ":v1")[0]
		orasIn(t, dir, "blob", "push", repo, "criu.tar.zst")
		if err := os.WriteFile(filepath.Join(dir, "manifest.json"), mustJSON(t, bad), 0o644); err != nil {
			t.Fatal(err)
		}
		orasIn(t, dir, "manifest", "push", badRef, "manifest.json")

		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, badRef, bigCounterScript)
		line := logLine(t, offset, "snapboot.fallback", clone, 60*time.Second)
		t.Log(line)
		for _, want := range []string{"does not match its digest", "reason_kind=invalid"} {
			if !strings.Contains(line, want) {
				t.Errorf("fallback line should say %q:\n%s", want, line)
			}
		}
		// The frame fails after the restore began: the restore fails, and
		// the container runs cold.
		if !strings.Contains(line, "runc restore failed") {
			t.Errorf("the bad frame should be found after the restore began (it is in the page images):\n%s", line)
		}
		if cs := waitCount(t, cloneLog, 3); cs[0] != 1 {
			t.Errorf("the container should start cold and count from 1, counted from %d", cs[0])
		}
		if mi := readFile("/proc/self/mountinfo"); strings.Contains(mi, "snapboot-stream") {
			t.Errorf("a streamfs mount is left after the failed restore")
		}
		if out := mustSnapboot(t, "inspect", badRef); !regexp.MustCompile(`cached on this node\s+false`).MatchString(out) {
			t.Errorf("the tampered checkpoint should not be in the cache:\n%s", out)
		}
	})

	// runc killed while CRIU waits for the page images (the registry holds
	// back the last frame) leaves its rootfs mount for CRIU behind; the
	// shim clears it, and the container starts cold.
	t.Run("runc killed mid-restore", func(t *testing.T) {
		proxy := newFaultProxy(t)
		for _, l := range m.Layers {
			if l.MediaType == oci.MediaTypeCRIUImages {
				last := ck.Stream.Frames[len(ck.Stream.Frames)-1]
				proxy.set(func(p *faultProxy) {
					p.pauses[l.Digest.String()] = pausePoint{at: l.Size - last.Size, delay: time.Minute}
				})
			}
		}
		cfg := nodeConfig(t, "", "", proxy.addr)
		cacheRoot := filepath.Join(filepath.Dir(cfg), "cache")
		id := uniqueID(t)
		killed := make(chan string, 1)
		go func() { killed <- killRuncRestore(id, 30*time.Second) }()
		offset := containerdLogOffset()
		logFile := runDetachedOpts(t, id, runOptions{Runtime: snapbootRuntime,
			Annotations: map[string]string{"snapboot.dev/checkpoint": proxy.addr + strings.TrimPrefix(ref, registryAddr)},
			Flags:       withConfig(cfg, "--with-ns", "network:"+newNetns(t))}, "/bin/sh", "-c", bigCounterScript)
		if what := <-killed; what != "" {
			t.Fatal(what)
		}
		line := logLine(t, offset, "snapboot.fallback", id, 30*time.Second)
		t.Log(line)
		for _, want := range []string{"runc restore failed", "exit status 137"} { // SIGKILL
			if !strings.Contains(line, want) {
				t.Errorf("the fallback should name the killed runc restore (%q):\n%s", want, line)
			}
		}
		if cs := waitCount(t, logFile, 3); cs[0] != 1 {
			t.Errorf("the container should start cold and count from 1, counted from %d", cs[0])
		}
		if mi := readFile("/proc/self/mountinfo"); strings.Contains(mi, id+"/criu-root") || strings.Contains(mi, "snapboot-stream") {
			t.Errorf("a mount of the killed restore is left:\n%s", mi)
		}
		noLeftovers(t, cacheRoot)
	})
}

// A checkpoint packed with --compression lz4 restores as the default one
// does: streamed from the registry, then from the cache the stream filled.
func TestLZ4CheckpointRestores(t *testing.T) {
	requireShim(t)
	donor, donorLog := startScriptClone(t, "", bigCounterScript)
	waitCount(t, donorLog, 10)
	ref := registryAddr + "/it/stream-lz4:v1"
	mustSnapboot(t, "checkpoint", "--compression", "lz4", donor, ref)
	lastBeforeDump := numbers(donorLog)[len(numbers(donorLog))-1]
	_, ck := fetchCheckpoint(t, ref)
	if ck.CRIU.MediaType != oci.MediaTypeCRIUImagesLZ4 || ck.Stream == nil || len(ck.Stream.Frames) < 4 {
		t.Fatalf("the CRIU layer: %s, stream index %+v", ck.CRIU.MediaType, ck.Stream)
	}
	if ck.Rootfs == nil || ck.Rootfs.MediaType != oci.MediaTypeRootfsDiff {
		t.Fatalf("the rootfs changes layer: %+v", ck.Rootfs)
	}
	for _, want := range [][2]string{{"cached=false", "streamed=true"}, {"cached=true", "streamed=false"}} {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ref, bigCounterScript)
		line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
		t.Log(line)
		if !strings.Contains(line, want[0]) || !strings.Contains(line, want[1]) {
			t.Errorf("restore should say %s %s:\n%s", want[0], want[1], line)
		}
		cs := waitCount(t, cloneLog, lastBeforeDump+3)
		if cs[0] <= 5 || cs[0] > lastBeforeDump+1 {
			t.Fatalf("clone counted from %d; the donor was at %d when the dump ended", cs[0], lastBeforeDump)
		}
		if got := ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", "cat", clone, "/bin/cat", "/tmp/app.log"); got != "started\n" {
			t.Errorf("rootfs changes: /tmp/app.log in the clone = %q", got)
		}
		// Its shim fills the cache before it exits with its container.
		if err := removeContainer(clone); err != nil {
			t.Fatal(err)
		}
	}
}

// killRuncRestore SIGKILLs the runc restore of container id once it has
// mounted the rootfs for CRIU. It returns what went wrong, or "".
func killRuncRestore(id string, timeout time.Duration) string {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(readFile("/proc/self/mountinfo"), id+"/criu-root") {
			ents, _ := os.ReadDir("/proc")
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				args := strings.Split(strings.TrimRight(readFile(fmt.Sprintf("/proc/%d/cmdline", pid)), "\x00"), "\x00")
				if len(args) > 2 && filepath.Base(args[0]) == "runc" && slices.Contains(args, "restore") && args[len(args)-1] == id {
					if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
						return fmt.Sprintf("kill runc restore (pid %d): %v", pid, err)
					}
					return ""
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	return fmt.Sprintf("no runc restore of %s with its rootfs mounted for CRIU within %v", id, timeout)
}

// fetchCheckpoint fetches ref's manifest with the oras CLI and decodes it
// as a checkpoint.
func fetchCheckpoint(t *testing.T, ref string) (ocispec.Manifest, *oci.Checkpoint) {
	t.Helper()
	var m ocispec.Manifest
	if err := json.Unmarshal([]byte(orasCmd(t, "manifest", "fetch", ref)), &m); err != nil {
		t.Fatal(err)
	}
	ck, err := oci.DecodeManifest(mustJSON(t, m))
	if err != nil {
		t.Fatal(err)
	}
	return m, ck
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// treeScript builds a string of 16 MB, which its children inherit, then
// forks eleven children, three of them holding 40 MB more each (more than
// streamfs's window of a page image), and counts. Every child writes its
// string's length and a tick to /tmp/child-N twice a second.
const treeScript = `shared=$(head -c 16000000 /dev/zero | tr '\0' y); ` +
	`for i in 1 2 3 4 5 6 7 8 9 10 11; do size=1; [ $i -le 3 ] && size=40000000; ` +
	`(big=$(head -c $size /dev/zero | tr '\0' x); n=0; while true; do n=$((n+1)); echo "${#big} $n" > /tmp/child-$i; sleep 0.5; done) & done; ` +
	counterScript

// A streamed restore of a process tree: a page image per process, more
// than ten, packed in the order of their numbers (CRIU's, parents first)
// and read by CRIU while they download (CRIU reads a page image in two
// passes, the restorer's behind the first, and compares the pages a child
// shares with its parent one at a time). Every child comes back with its
// memory and goes on; and again from the cache the streamed restore filled.
func TestStreamedRestoreOfAProcessTree(t *testing.T) {
	requireShim(t)
	donor, donorLog := startScriptClone(t, "", treeScript)
	waitCount(t, donorLog, 20) // the children have built their strings
	ref := registryAddr + "/it/stream-tree:v1"
	mustSnapboot(t, "checkpoint", donor, ref)
	lastBeforeDump := numbers(donorLog)[len(numbers(donorLog))-1]
	_, ck := fetchCheckpoint(t, ref)
	if ck.Stream == nil || len(ck.Stream.Tail) < 12 {
		t.Fatalf("want a page image for each of the 12 processes or more in the stream index: %+v", ck.Stream)
	}
	var nums []int
	for _, f := range ck.Stream.Tail {
		n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(f.Name, "pages-"), ".img"))
		if err != nil {
			t.Fatalf("page image %q", f.Name)
		}
		nums = append(nums, n)
	}
	if !slices.IsSorted(nums) {
		t.Errorf("page images packed in the order %v, not of their numbers", nums)
	}

	for _, want := range [][2]string{{"cached=false", "streamed=true"}, {"cached=true", "streamed=false"}} {
		t.Run(want[0], func(t *testing.T) { checkTreeRestore(t, ref, lastBeforeDump, want) })
	}
}

// checkTreeRestore starts a clone of treeScript's donor from ref, checks
// that the restore says want, and that every child goes on with its memory.
// It removes the clone, after its shim has filled the cache.
func checkTreeRestore(t *testing.T, ref string, lastBeforeDump int, want [2]string) {
	offset := containerdLogOffset()
	clone, cloneLog := startScriptClone(t, ref, treeScript)
	defer func() {
		if err := removeContainer(clone); err != nil {
			t.Error(err)
		}
	}()
	line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	t.Log(line)
	if !strings.Contains(line, want[0]) || !strings.Contains(line, want[1]) {
		t.Errorf("restore should say %s %s:\n%s", want[0], want[1], line)
	}
	// The children's page images are mostly the string they share with
	// the shell, which CRIU compares page by page: read through the page
	// cache, or from the cached files.
	if m := regexp.MustCompile(`page_by_page=(\d+)`).FindStringSubmatch(line); m == nil || atoi(m[1]) < 8 {
		t.Errorf("restore should read the children's page images page by page (page_by_page=8 or more):\n%s", line)
	}
	if cs := waitCount(t, cloneLog, lastBeforeDump+3); cs[0] <= 5 || cs[0] > lastBeforeDump+1 {
		t.Fatalf("clone counted from %d; the donor was at %d when the dump ended", cs[0], lastBeforeDump)
	}
	ticks := func(exec string) map[int][2]int {
		out := ctr(t, "task", "exec", "--fifo-dir", fifoDir, "--exec-id", exec, clone, "/bin/sh", "-c",
			// A child truncates its file before it writes: read again then.
			`for i in 1 2 3 4 5 6 7 8 9 10 11; do l=; while [ -z "$l" ]; do l=$(cat /tmp/child-$i); done; echo "$i $l"; done`)
		m := map[int][2]int{}
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var i, size, n int
			if _, err := fmt.Sscan(l, &i, &size, &n); err != nil {
				t.Fatalf("child line %q: %v", l, err)
			}
			m[i] = [2]int{size, n}
		}
		return m
	}
	before := ticks("ticks1")
	time.Sleep(2 * time.Second)
	after := ticks("ticks2")
	for i := 1; i <= 11; i++ {
		size := 1
		if i <= 3 {
			size = 40000000
		}
		if after[i][0] != size || after[i][1] <= before[i][1] {
			t.Errorf("child %d: string of %d bytes, ticks %d then %d; want %d bytes, ticking", i, after[i][0], before[i][1], after[i][1], size)
		}
	}
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

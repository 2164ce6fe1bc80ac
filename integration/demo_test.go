//go:build integration && linux

package integration

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDemoReduced runs the main job on a small generated Rails app: a real
// PostgreSQL, the app booted cold, checkpointed with snapboot checkpoint,
// restored from the registry with an empty and a warm cache, and the runc
// restore floor. It checks correctness, not speed: every restore must
// answer a query, none may fall back.
func TestDemoReduced(t *testing.T) {
	requireShim(t)
	if os.Getenv("SNAPBOOT_IT_SKIP_DEMO") == "1" {
		t.Skip("SNAPBOOT_IT_SKIP_DEMO=1")
	}
	gomod, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	out := testDir(t)
	runBefore := runMounts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", "./demo", "-models", "150", "-runs", "1", "-warm", "3",
		"-bin", binDir, "-bench", out)
	cmd.Dir = root
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, tail(string(output), 60))
	}
	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		Cold              []float64 `json:"coldStartSeconds"`
		RestoredColdCache []float64 `json:"restoredColdCacheSeconds"`
		RestoredWarmCache []float64 `json:"restoredWarmCacheSeconds"`
		Floor             []float64 `json:"floorSeconds"`
		RawBytes          int64     `json:"checkpointRawBytes"`
		FirstBody         string    `json:"firstRestoredResponse"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Cold) != 1 || len(r.RestoredColdCache) != 1 || len(r.RestoredWarmCache) != 1 || len(r.Floor) != 1 || r.RawBytes == 0 {
		t.Fatalf("incomplete results: %s", data)
	}
	if r.FirstBody == "" {
		t.Fatalf("the restored app's first answer is empty: %s", data)
	}
	// Where /run is not a tmpfs, the demo's containerd gets one in a mount
	// namespace of its own; this machine's /run is left as it was.
	if after := runMounts(t); after != runBefore {
		t.Errorf("the mounts on /run were %q before the demo and are %q after it", runBefore, after)
	}
	if !strings.Contains(string(output), "tmpfs on /run") {
		var st unix.Statfs_t
		if err := unix.Statfs("/run", &st); err == nil && st.Type != unix.TMPFS_MAGIC {
			t.Errorf("/run is not a tmpfs here, and the demo did not say that its containerd got one:\n%s", tail(string(output), 60))
		}
	}
	t.Logf("cold %.1fs, restored (empty cache) %.2fs, (warm cache) %.2fs, floor %.2fs; first answer %q",
		r.Cold[0], r.RestoredColdCache[0], r.RestoredWarmCache[0], r.Floor[0], r.FirstBody)
}

// runMounts lists this mount namespace's mounts on /run or beneath it, as
// /proc/self/mountinfo gives them (mount point and file system type).
func runMounts(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		if f[4] == "/run" || strings.HasPrefix(f[4], "/run/") {
			out = append(out, f[4]+" "+g[0])
		}
	}
	return strings.Join(out, ", ")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

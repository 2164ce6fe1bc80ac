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
	t.Logf("cold %.1fs, restored (empty cache) %.2fs, (warm cache) %.2fs, floor %.2fs; first answer %q",
		r.Cold[0], r.RestoredColdCache[0], r.RestoredWarmCache[0], r.Floor[0], r.FirstBody)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

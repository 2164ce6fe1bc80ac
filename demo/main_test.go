package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// restoreLogLine is a shim's restore log line as containerd's log holds it
// (logrus's text format, fields sorted).
func restoreLogLine(id, cached string) string {
	return `time="2025-01-01T00:00:00.000000000Z" level=info msg="snapboot: container restored from checkpoint" ` +
		`cached=` + cached + ` digest=sha256:0123 event=snapboot.restore id=` + id + ` narrowed=0 pull_s=0.5 pulled_bytes=1000 ` +
		`ref=127.0.0.1:5000/demo/rails:checkpoint resolve_s=0.01 restore_s=0.7 streamed=true streamed_s=0.3 total_s=1.25 unpack_s=0.04`
}

// The demo finds each restore's own line, and its timings.
func TestFindRestoreLine(t *testing.T) {
	log := strings.Join([]string{
		restoreLogLine("restored-cold-cache-12", "false"),
		restoreLogLine("restored-cold-cache-1", "true"),
		`time="2025-01-01T00:00:01Z" level=warning msg="snapboot: restore not possible, cold-starting the container" event=snapboot.fallback id=restored-cold-cache-2 reason="no"`,
	}, "\n")
	line, err := findRestoreLine(log, "restored-cold-cache-1")
	if err != nil || !strings.Contains(line, "id=restored-cold-cache-1 ") || !strings.Contains(line, "cached=true") {
		t.Fatalf("line for restored-cold-cache-1: %q, %v", line, err)
	}
	if tm := restoreLineTimings(line); tm["pull_s"] != 0.5 || tm["restore_s"] != 0.7 || tm["total_s"] != 1.25 || len(tm) != 6 {
		t.Errorf("timings %v", tm)
	}
	if _, err := findRestoreLine(log, "restored-cold-cache-2"); err == nil || !strings.Contains(err.Error(), "not restored") {
		t.Errorf("a fallen back container: %v, want it said not restored", err)
	}
	if _, err := findRestoreLine(log, "restored-cold-cache-3"); err == nil {
		t.Error("found a line for a container that has none")
	}
}

// A restore that was to start with an empty cache must say cached=false,
// one with a warm cache cached=true: else the demo reports the wrong case.
func TestCheckCached(t *testing.T) {
	for _, c := range []struct {
		cached string
		want   bool
		ok     bool
	}{
		{"false", false, true},
		{"true", true, true},
		{"true", false, false},
		{"false", true, false},
		{"", false, false},
	} {
		err := checkCached(restoreLogLine("r-1", c.cached), c.want)
		if (err == nil) != c.ok {
			t.Errorf("cached=%q, want %v: error %v", c.cached, c.want, err)
		}
	}
	noField := strings.Replace(restoreLogLine("r-1", "false"), "cached=false ", "", 1)
	if err := checkCached(noField, false); err == nil {
		t.Errorf("a line without a cached= field passed: %s", noField)
	}
	if err := checkCached(strings.Replace(noField, "ref=", "precached=false ref=", 1), false); err == nil {
		t.Error("another field's value taken for the cached= field")
	}
}

// shimPeakRSS finds a shim by its name and the container id among its
// arguments, and no other process.
func TestShimPeakRSS(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	bin := filepath.Join(t.TempDir(), "containerd-shim-snapboot-v1")
	data, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	// The "id" is one more duration to sleep (sleep adds them up).
	cmd := exec.Command(bin, "30", "4242")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	var peak int64
	for deadline := time.Now().Add(5 * time.Second); peak == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		peak = shimPeakRSS("4242")
	}
	if peak <= 0 {
		t.Fatal("the shim's peak RSS was not found")
	}
	if other := shimPeakRSS("4243"); other != 0 {
		t.Fatalf("another container's shim: %d bytes", other)
	}
}

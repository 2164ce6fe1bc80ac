//go:build linux

package restore

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// fakeProc makes a proc tree: 10 with children 11 and 12 (12 from a second
// thread), 11 with child 13.
func fakeProc(t *testing.T) string {
	t.Helper()
	proc := t.TempDir()
	tree := map[int]map[int]string{10: {10: "11 ", 15: "12"}, 11: {11: "13"}, 12: {12: ""}, 13: {13: ""}, 20: {20: ""}}
	for pid, tasks := range tree {
		dir := filepath.Join(proc, strconv.Itoa(pid))
		for tid, children := range tasks {
			td := filepath.Join(dir, "task", strconv.Itoa(tid))
			os.MkdirAll(td, 0o755)
			os.WriteFile(filepath.Join(td, "children"), []byte(children), 0o644)
		}
		os.WriteFile(filepath.Join(dir, "oom_score_adj"), []byte("-998"), 0o644)
	}
	return proc
}

func TestSetOOMScoreTree(t *testing.T) {
	proc := fakeProc(t)
	if err := setOOMScoreTree(proc, 10, "0"); err != nil {
		t.Fatal(err)
	}
	for pid, want := range map[int]string{10: "0", 11: "0", 12: "0", 13: "0", 20: "-998"} {
		got, _ := os.ReadFile(filepath.Join(proc, strconv.Itoa(pid), "oom_score_adj"))
		if string(got) != want {
			t.Errorf("pid %d: oom_score_adj %q, want %q", pid, got, want)
		}
	}
}

func TestSetZeroOOMScoreOnlyForZero(t *testing.T) {
	five := 5
	for _, s := range []*specs.Spec{nil, {}, {Process: &specs.Process{}}, {Process: &specs.Process{OOMScoreAdj: &five}}} {
		// pid 0 has no proc directory: any write would fail.
		if err := SetZeroOOMScore(s, 0); err != nil {
			t.Errorf("%+v: %v", s, err)
		}
	}
	zero := 0
	if err := SetZeroOOMScore(&specs.Spec{Process: &specs.Process{OOMScoreAdj: &zero}}, 0); err == nil {
		t.Error("a spec with 0: want an attempt to write (and an error for pid 0)")
	}
}

//go:build linux

package seccompfilter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hierarchies returns where probe container id's cgroups are (one
// directory per hierarchy), or skips the test on a node without cgroups.
func hierarchies(t *testing.T, id string) []string {
	t.Helper()
	dirs, err := probeCgroupDirs(id)
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) == 0 {
		t.Skip("no cgroup hierarchies mounted")
	}
	return dirs
}

// existing returns those of dirs that exist.
func existing(dirs []string) []string {
	var out []string
	for _, d := range dirs {
		if _, err := os.Stat(d); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// A bundle whose runc state has a probe container that runc was killed
// making (no state.json) loses that container's cgroups with it, and the
// process in one of them; a cgroup that is not a probe's stays.
func TestKilledCreateCgroupsRemoved(t *testing.T) {
	p := newProber(t)
	id, other := probeIDPrefix+"0123456789ab", "snapboot-test-not-a-probe"
	dirs := hierarchies(t, id)
	otherDirs := make([]string, len(dirs))
	for i, d := range dirs {
		otherDirs[i] = filepath.Join(filepath.Dir(d), other)
	}
	b, err := p.newBundle()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{id, other} {
		if err := os.MkdirAll(filepath.Join(b.state(), name), 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(b.state(), name, "exec.fifo"), nil, 0o600)
	}
	for _, d := range append(slices.Clone(dirs), otherDirs...) {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(d) })
	}
	// A process in the probe's cgroup of a hierarchy that takes one
	// without more set-up (a new cpuset cgroup has no CPUs).
	procsDir := ""
	for _, d := range dirs {
		if !strings.Contains(filepath.Base(filepath.Dir(d)), "cpuset") {
			procsDir = d
			break
		}
	}
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	if err := os.WriteFile(filepath.Join(procsDir, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := b.remove(context.Background(), p, "runc"); err != nil {
		t.Fatal(err)
	}
	if left := existing(dirs); len(left) > 0 {
		t.Errorf("the probe's cgroup is still there: %v", left)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("the process in the probe's cgroup still runs")
	}
	if _, err := os.Stat(b.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bundle is still there: %v", err)
	}
	if left := existing(otherDirs); len(left) != len(otherDirs) {
		t.Errorf("a cgroup that is not a probe's was removed: left only %v", left)
	}
}

// A probe whose runc create is killed as soon as runc has made the
// container's cgroups leaves none behind once its bundle is removed, as
// Filter removes it when the probe's context ends.
func TestKilledRuncCreateLeavesNoCgroup(t *testing.T) {
	p, runc := proberAndRunc(t)
	profile := defaultProfile()
	const rounds = 10
	killedEarly := 0
	for i := 0; i < rounds; i++ {
		id := fmt.Sprintf("%s%012x", probeIDPrefix, i)
		dirs := hierarchies(t, id)
		b, err := p.newBundle()
		if err != nil {
			t.Fatal(err)
		}
		if err := writeBundle(b.dir, id, profile); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		polled := make(chan struct{})
		go func() {
			defer close(polled)
			defer cancel()
			for ctx.Err() == nil && len(existing(dirs)) == 0 {
				time.Sleep(200 * time.Microsecond)
			}
		}()
		_ = p.runc(ctx, runc, b.dir, "--root", b.state(), "create", "--bundle", b.dir, id)
		cancel()
		<-polled
		if _, err := os.Stat(filepath.Join(b.state(), id, "state.json")); err != nil {
			killedEarly++
		}
		if err := b.remove(context.Background(), p, runc); err != nil {
			t.Fatal(err)
		}
		if left := existing(dirs); len(left) > 0 {
			t.Fatalf("round %d: the probe's cgroup is left in %v", i, left)
		}
	}
	if killedEarly == 0 {
		t.Fatalf("no create of %d was killed before runc recorded its container: the case is not tested", rounds)
	}
	t.Logf("%d of %d creates killed before runc recorded the container", killedEarly, rounds)
}

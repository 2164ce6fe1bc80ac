//go:build linux

package seccompfilter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// cgroupMounts returns the mount point of every cgroup hierarchy, or skips
// the test on a node without any.
func cgroupMounts(t *testing.T) []string {
	t.Helper()
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup" && m.FSType != "cgroup2", false
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mounts {
		out = append(out, m.Mountpoint)
	}
	if len(out) == 0 {
		t.Skip("no cgroup hierarchies mounted")
	}
	return out
}

// leftCgroups returns the hierarchies that still have cgroup /name.
func leftCgroups(mounts []string, name string) []string {
	var left []string
	for _, m := range mounts {
		if _, err := os.Stat(filepath.Join(m, name)); err == nil {
			left = append(left, m)
		}
	}
	return left
}

// A bundle whose runc state has a probe container that runc was killed
// making (no state.json) loses that container's cgroups with it, and the
// process in one of them; a cgroup that is not a probe's stays.
func TestKilledCreateCgroupsRemoved(t *testing.T) {
	p := newProber(t)
	mounts := cgroupMounts(t)
	b, err := p.newBundle()
	if err != nil {
		t.Fatal(err)
	}
	id, other := probeIDPrefix+"0123456789ab", "snapboot-test-not-a-probe"
	for _, name := range []string{id, other} {
		if err := os.MkdirAll(filepath.Join(b.state(), name), 0o700); err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(b.state(), name, "exec.fifo"), nil, 0o600)
		for _, m := range mounts {
			if err := os.Mkdir(filepath.Join(m, name), 0o755); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Remove(filepath.Join(m, name)) })
		}
	}
	// A process in the probe's cgroup of the first hierarchy.
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	exited := make(chan error, 1)
	go func() { exited <- sleeper.Wait() }()
	if err := os.WriteFile(filepath.Join(mounts[0], id, "cgroup.procs"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := b.remove(context.Background(), p, "runc"); err != nil {
		t.Fatal(err)
	}
	if left := leftCgroups(mounts, id); len(left) > 0 {
		t.Errorf("the probe's cgroup is still in %v", left)
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Errorf("the process in the probe's cgroup still runs")
	}
	if _, err := os.Stat(b.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the bundle is still there: %v", err)
	}
	if left := leftCgroups(mounts, other); len(left) != len(mounts) {
		t.Errorf("a cgroup that is not a probe's was removed: left only in %v", left)
	}
}

// A probe whose runc create is killed as soon as runc has made the
// container's cgroups leaves none behind once its bundle is removed, as
// Filter removes it when the probe's context ends.
func TestKilledRuncCreateLeavesNoCgroup(t *testing.T) {
	p := newProber(t)
	mounts := cgroupMounts(t)
	runc, _ := exec.LookPath("runc")
	profile := seccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}})
	killedEarly := 0
	for i := 0; i < 5; i++ {
		b, err := p.newBundle()
		if err != nil {
			t.Fatal(err)
		}
		id := fmt.Sprintf("%s%012x", probeIDPrefix, i)
		if err := writeBundle(b.dir, id, profile); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			defer cancel()
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Microsecond) {
				if len(leftCgroups(mounts, id)) > 0 {
					return
				}
			}
		}()
		_ = p.runc(ctx, runc, b.dir, "--root", b.state(), "create", "--bundle", b.dir, id)
		cancel()
		if _, err := os.Stat(filepath.Join(b.state(), id, "state.json")); err != nil {
			killedEarly++
		}
		if err := b.remove(context.Background(), p, runc); err != nil {
			t.Fatal(err)
		}
		if left := leftCgroups(mounts, id); len(left) > 0 {
			t.Fatalf("round %d: the probe's cgroup is left in %v", i, left)
		}
	}
	t.Logf("%d of 5 creates killed before runc recorded the container", killedEarly)
}

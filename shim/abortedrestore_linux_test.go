//go:build linux

package shim

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func isMountPoint(t *testing.T, path string) bool {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}

// The rootfs bind mount a killed runc restore leaves at criu-root is
// detached; a plain directory and a missing path are left alone.
func TestUnmountLeftover(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	rootfs, criuRoot := filepath.Join(dir, "rootfs"), filepath.Join(dir, "criu-root")
	for _, d := range []string{rootfs, criuRoot} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(rootfs, criuRoot, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(criuRoot, unix.MNT_DETACH) })
	if !isMountPoint(t, criuRoot) {
		t.Fatal("the bind mount is not in mountinfo")
	}
	if err := unmountLeftover(criuRoot); err != nil {
		t.Fatal(err)
	}
	if isMountPoint(t, criuRoot) {
		t.Fatal("criu-root is still mounted")
	}
	if err := os.RemoveAll(filepath.Join(dir, "criu-root")); err != nil {
		t.Fatalf("the state directory cannot be removed after: %v", err)
	}
	if err := unmountLeftover(rootfs); err != nil {
		t.Errorf("a directory that is not a mount point: %v", err)
	}
	if err := unmountLeftover(filepath.Join(dir, "missing")); err != nil {
		t.Errorf("a missing path: %v", err)
	}
}

// The cgroup yard a killed CRIU leaves in its work directory (a tmpfs with
// the hierarchies mounted below it) is unmounted, the hierarchies with it,
// and removed; the work directory's other entries stay.
func TestClearCgroupYards(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := t.TempDir()
	task := filepath.Join(dir, "task")
	yard := filepath.Join(task, ".criu.cgyard.AbC123")
	for _, d := range []string{yard, filepath.Join(task, "keep")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	bundle := filepath.Join(dir, "bundle")
	if err := os.Mkdir(bundle, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(task, filepath.Join(bundle, "work")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", yard, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount the yard: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(yard, unix.MNT_DETACH) })
	memory := filepath.Join(yard, "memory")
	if err := os.Mkdir(memory, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("none", memory, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatalf("mount below the yard: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(memory, unix.MNT_DETACH) })

	if err := clearCgroupYards(filepath.Join(bundle, "work")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{yard, memory} {
		if isMountPoint(t, p) {
			t.Errorf("%s is still mounted", p)
		}
	}
	if _, err := os.Stat(yard); !os.IsNotExist(err) {
		t.Errorf("the yard directory is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(task, "keep")); err != nil {
		t.Errorf("the work directory's other entry went: %v", err)
	}
	if err := clearCgroupYards(filepath.Join(dir, "no-bundle", "work")); err != nil {
		t.Errorf("a bundle without a work directory: %v", err)
	}
}

// The cgroup an aborted restore made goes from every hierarchy, with the
// cgroups below it, and nothing above it; a cgroup that cannot go (here a
// directory with a file) is reported; a relative path (below runc's own
// cgroup) is left alone.
func TestRemoveCgroup(t *testing.T) {
	dir := t.TempDir()
	roots := []string{filepath.Join(dir, "cpu"), filepath.Join(dir, "memory")}
	for _, r := range roots {
		if err := os.MkdirAll(filepath.Join(r, "ns", "c1", "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Join(r, "ns", "c2"), 0o755)
	}
	if err := removeCgroup(roots, "/ns/c1", true); err != nil {
		t.Fatal(err)
	}
	for _, r := range roots {
		if _, err := os.Stat(filepath.Join(r, "ns", "c1")); !os.IsNotExist(err) {
			t.Errorf("%s: the cgroup stayed: %v", r, err)
		}
		if _, err := os.Stat(filepath.Join(r, "ns", "c2")); err != nil {
			t.Errorf("%s: a sibling went: %v", r, err)
		}
	}
	if err := removeCgroup(roots, "ns/c2", true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(roots[0], "ns", "c2")); err != nil {
		t.Errorf("a relative path was removed: %v", err)
	}
	os.WriteFile(filepath.Join(roots[1], "ns", "c2", "tasks"), []byte("1"), 0o644)
	if err := removeCgroup(roots, "/ns/c2", true); err == nil || !strings.Contains(err.Error(), filepath.Join(roots[1], "ns", "c2")) {
		t.Errorf("a cgroup that stays should be reported: %v", err)
	}
	if _, err := os.Stat(filepath.Join(roots[0], "ns", "c2")); !os.IsNotExist(err) {
		t.Errorf("the cgroup that could go stayed: %v", err)
	}
}

// On the systemd driver the processes an aborted restore left in the
// container's scope, and below it, are killed (systemd then removes the
// scope); another scope's are not.
func TestKillScope(t *testing.T) {
	dir := t.TempDir()
	roots := []string{filepath.Join(dir, "pids"), filepath.Join(dir, "memory")}
	scope := "/system.slice/cri-containerd-c1.scope"
	start := func(cgroup string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		if err := os.MkdirAll(cgroup, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(cgroup, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	inScope := start(filepath.Join(roots[0], scope))
	below := start(filepath.Join(roots[1], scope, "sub"))
	other := start(filepath.Join(roots[0], "/system.slice/cri-containerd-c2.scope"))
	if err := killScope(roots, scope); err != nil {
		t.Fatal(err)
	}
	for name, cmd := range map[string]*exec.Cmd{"in the scope": inScope, "below it": below} {
		if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Errorf("the process %s: %v, want killed", name, err)
		}
	}
	if err := unix.Kill(other.Process.Pid, 0); err != nil {
		t.Errorf("another scope's process: %v", err)
	}
	for _, r := range roots {
		if _, err := os.Stat(filepath.Join(r, scope)); err != nil {
			t.Errorf("the scope's cgroup is systemd's to remove: %v", err)
		}
	}
}

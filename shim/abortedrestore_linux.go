//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containerd/cgroups/v3"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/confine"
)

// clearAbortedRestore undoes what a runc restore that never returned leaves
// behind. For CRIU, runc bind-mounts the rootfs at criu-root in the
// container's runc state directory and unmounts it when the restore
// returns. A runc killed mid-restore (OOM, a signal) leaves the mount: the
// runc delete of the failed restore then cannot remove the state directory,
// and the cold create that follows fails with "container with given ID
// already exists". Nothing happens when there is no such mount. When runc
// never recorded the container, the cgroup its restore made is removed too,
// and then the cgroup yard of a CRIU killed mid-restore (clearCgroupYards).
func clearAbortedRestore(ctx context.Context, bundle, id string) (retErr error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return err
	}
	opts, err := runc.ReadOptions(bundle)
	if err != nil {
		return fmt.Errorf("runc options of %s: %w", id, err)
	}
	root := process.RuncRoot
	if opts != nil && opts.Root != "" {
		root = opts.Root
	}
	state := filepath.Join(root, ns, id)
	if err := unmountLeftover(filepath.Join(state, "criu-root")); err != nil {
		return err
	}
	// Last, once what the cgroup removal below kills (CRIU among them)
	// is gone: a killed CRIU leaves its cgroup yard mounted.
	defer func() { retErr = errors.Join(retErr, clearCgroupYards(filepath.Join(bundle, "work"))) }()
	// runc records a restored container (state.json) only once CRIU is
	// done, but makes its cgroup when CRIU starts. Without the record,
	// runc's delete removes the state directory and leaves the cgroup.
	if _, err := os.Stat(filepath.Join(state, "state.json")); !errors.Is(err, os.ErrNotExist) {
		return nil
	}
	spec, err := oci.ReadSpec(filepath.Join(bundle, oci.ConfigFilename))
	if err != nil || spec.Linux == nil {
		return nil // no spec, no cgroup of its own
	}
	if opts != nil && opts.SystemdCgroup {
		// The scope goes by itself once empty: what is left in it is
		// killed, in a scope of the container's own (slice:prefix:ID).
		parts := strings.Split(spec.Linux.CgroupsPath, ":")
		scope, ok := confine.RuncCgroupPath(spec.Linux.CgroupsPath)
		if !ok || len(parts) != 3 || parts[2] != id {
			return nil
		}
		return killScope(cgroupRoots(), scope)
	}
	// Its processes are killed only in a cgroup of the container's own
	// (named after it, as containerd and CRI name them).
	return removeCgroup(cgroupRoots(), spec.Linux.CgroupsPath, path.Base(spec.Linux.CgroupsPath) == id)
}

// killScope kills the processes left in the systemd scope at cgPath (a
// path in the cgroup hierarchy) and the cgroups below it, in every
// hierarchy, and waits for them to go, for up to cgroupGrace: systemd
// removes the scope once it is empty, and runc's cold create makes one of
// the same name. A process that stays is reported.
func killScope(roots []string, cgPath string) error {
	if !filepath.IsAbs(cgPath) || filepath.Clean(cgPath) == "/" {
		return nil
	}
	deadline := time.Now().Add(cgroupGrace)
	for {
		// Walked again each time: a CRIU still running may make cgroups.
		dirs := cgroupDirs(roots, cgPath)
		var left []string
		for i := len(dirs) - 1; i >= 0; i-- {
			if livePIDs(dirs[i]) {
				killCgroup(dirs[i])
				left = append(left, dirs[i])
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of the aborted restore stay in %s", strings.Join(left, ", "))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// livePIDs reports whether the cgroup dir lists a process that is still
// there and not a zombie.
func livePIDs(dir string) bool {
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(string(procs)) {
		pid, err := strconv.Atoi(f)
		if err != nil || pid <= 1 {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone
		}
		// The state follows the command's closing parenthesis.
		if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) && stat[i+2] != 'Z' {
			return true
		}
	}
	return false
}

// cgroupRoots lists the cgroup hierarchies: the unified one, or each v1
// hierarchy's mount.
func cgroupRoots() []string {
	const base = "/sys/fs/cgroup"
	if cgroups.Mode() == cgroups.Unified {
		return []string{base}
	}
	var roots []string
	ents, _ := os.ReadDir(base)
	for _, e := range ents {
		if e.IsDir() {
			roots = append(roots, filepath.Join(base, e.Name()))
		}
	}
	return roots
}

// removeCgroup removes the cgroup at cgPath (a cgroupfs path, absolute) in
// every hierarchy, with any cgroups below it, deepest first. With kill, the
// processes still in it, the aborted restore's (CRIU, half-restored tasks,
// on their way out once runc or the page images' server has gone), are
// killed, and each cgroup is retried until they are gone, for up to
// cgroupGrace. A cgroup that stays is reported.
func removeCgroup(roots []string, cgPath string, kill bool) error {
	if !filepath.IsAbs(cgPath) || filepath.Clean(cgPath) == "/" {
		return nil // relative to runc's own cgroup, or none
	}
	dirs := cgroupDirs(roots, cgPath)
	var errs []error
	deadline := time.Now().Add(cgroupGrace)
	for i := len(dirs) - 1; i >= 0; i-- {
		for {
			err := unix.Rmdir(dirs[i])
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !kill || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				errs = append(errs, fmt.Errorf("remove cgroup %s left by the aborted restore: %w", dirs[i], err))
				break
			}
			killCgroup(dirs[i])
			time.Sleep(10 * time.Millisecond)
		}
	}
	return errors.Join(errs...)
}

// cgroupDirs lists the cgroup at cgPath and those below it, in every
// hierarchy of roots, parents before children.
func cgroupDirs(roots []string, cgPath string) []string {
	var dirs []string
	for _, root := range roots {
		filepath.WalkDir(filepath.Join(root, filepath.Clean(cgPath)), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs
}

// cgroupGrace is how long removeCgroup waits for killed processes to go.
var cgroupGrace = 2 * time.Second

// killCgroup thaws the cgroup dir (a v1 freezer's or a v2 cgroup's) and
// SIGKILLs the processes in it: a frozen process does not die until thawed.
func killCgroup(dir string) {
	if _, err := os.Stat(filepath.Join(dir, "freezer.state")); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0)
	}
	if _, err := os.Stat(filepath.Join(dir, "cgroup.freeze")); err == nil {
		_ = os.WriteFile(filepath.Join(dir, "cgroup.freeze"), []byte("0"), 0)
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(procs)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}

// unmountLeftover detaches the mount at path, if path is a mount point.
// clearCgroupYards unmounts and removes the cgroup yards a CRIU killed
// mid-restore left in its work directory (runc's --work-path, the bundle's
// work/, a link to containerd's task directory): CRIU mounts a tmpfs at
// .criu.cgyard.XXXXXX there, with each cgroup hierarchy below it, and
// unmounts it only when it ends. Left, the mounts stay on the node and
// containerd cannot remove the task directory. A detached unmount of the
// yard takes the hierarchies below it along.
func clearCgroupYards(work string) error {
	dir, err := filepath.EvalSymlinks(work)
	if err != nil {
		return nil // no work directory: no CRIU ran there
	}
	yards, err := filepath.Glob(filepath.Join(dir, ".criu.cgyard.*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, yard := range yards {
		if err := unmountLeftover(yard); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := os.Remove(yard); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove the cgroup yard %s left by the aborted restore: %w", yard, err))
		}
	}
	return errors.Join(errs...)
}

func unmountLeftover(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s left by the aborted restore: %w", path, err)
}

//go:build linux

package seccompfilter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// probeCgroupDirs returns the directory of probe container id's cgroup
// (see writeBundle) in each cgroup hierarchy of this node: one mount of
// each hierarchy's root, a writable one where there is one.
func probeCgroupDirs(id string) ([]string, error) {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return (m.FSType != "cgroup" && m.FSType != "cgroup2") || m.Root != "/", false
	})
	if err != nil {
		return nil, fmt.Errorf("find the cgroup hierarchies: %w", err)
	}
	type dev struct{ major, minor int }
	byHierarchy := map[dev]*mountinfo.Info{}
	var order []dev
	for _, m := range mounts {
		d := dev{m.Major, m.Minor}
		prev, ok := byHierarchy[d]
		if !ok {
			order = append(order, d)
		}
		if !ok || (readOnly(prev) && !readOnly(m)) {
			byHierarchy[d] = m
		}
	}
	var dirs []string
	for _, d := range order {
		dirs = append(dirs, filepath.Join(byHierarchy[d].Mountpoint, id))
	}
	return dirs, nil
}

func readOnly(m *mountinfo.Info) bool {
	return slices.Contains(strings.Split(m.Options, ","), "ro")
}

// removeCgroups removes the cgroups of probe container id from every
// cgroup hierarchy of this node, for a container whose runc create was
// killed before runc could record it: runc delete does not know it then.
// Such a create leaves them empty (runc's init dies with it), but any
// process still in one can only be that probe's init, waiting to be
// started: it is killed first. Names that are not a probe's are left
// alone. It gives up after two seconds.
func removeCgroups(id string) error {
	if !isProbeID(id) {
		return nil
	}
	dirs, err := probeCgroupDirs(id)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		var left []string
		var errs []error
		for _, dir := range dirs {
			if err := removeCgroup(dir); err != nil {
				left, errs = append(left, dir), append(errs, err)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errs...)
		}
		dirs = left
		time.Sleep(20 * time.Millisecond)
	}
}

// isProbeID reports whether id is a name probe gives its containers: the
// prefix and 12 hexadecimal digits, nothing that leaves a directory.
func isProbeID(id string) bool {
	rest, ok := strings.CutPrefix(id, probeIDPrefix)
	if !ok || len(rest) != 12 {
		return false
	}
	for _, c := range rest {
		if !strings.ContainsRune("0123456789abcdef", c) {
			return false
		}
	}
	return true
}

// removeCgroup kills the processes in cgroup dir (cgroup.kill where the
// kernel has it) and removes it; one that does not exist is gone already.
func removeCgroup(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove the probe's cgroup %s: %w", dir, err)
	}
	return nil
}

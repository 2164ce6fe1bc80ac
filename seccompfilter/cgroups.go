//go:build linux

package seccompfilter

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// removeCgroups removes the cgroups of probe container id (see
// writeBundle) from every cgroup hierarchy of this node, for a container
// whose runc create was killed before runc could record it: runc delete
// does not know it then. Such a create leaves them empty (runc's init
// dies with it), but any process still in one can only be that probe's
// init, waiting to be started: it is killed first. Names that are not a
// probe's are left alone.
func removeCgroups(id string) error {
	if !isProbeID(id) {
		return nil
	}
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.FSType != "cgroup" && m.FSType != "cgroup2", false
	})
	if err != nil {
		return fmt.Errorf("find the cgroup hierarchies: %w", err)
	}
	seen := map[string]bool{}
	var errs []error
	for _, m := range mounts {
		if seen[m.Mountpoint] {
			continue
		}
		seen[m.Mountpoint] = true
		if err := removeCgroup(filepath.Join(m.Mountpoint, id)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
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

// removeCgroup kills the processes in cgroup dir and removes it; one that
// does not exist is gone already.
func removeCgroup(dir string) error {
	deadline := time.Now().Add(2 * time.Second)
	for {
		procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		for _, f := range strings.Fields(string(procs)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		err = unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove the probe's cgroup %s: %w", dir, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// stopLeftovers stops, once containerd is gone, what a run that failed
// half-way can leave behind: shims of this stack's containerd (their
// command line names its socket), processes of the demo's containers
// (their cgroup path is under the demo's namespace), their rootfs mounts,
// and runc's state of those containers, which would make the next run's container of the same
// name fail with "container with given ID already exists". A run that ends
// well leaves none of them. It says what it stopped. It also removes the
// namespace's empty cgroups and runc state root, which every run leaves.
func (s *stack) stopLeftovers() {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || pid == 1 {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		args := strings.Split(string(cmdline), "\x00")
		shim := strings.HasPrefix(filepath.Base(args[0]), "containerd-shim-") && strings.Contains(string(cmdline), s.dir)
		cgroup, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		if shim || strings.Contains(string(cgroup), ":/"+s.namespace+"/") {
			pids = append(pids, pid)
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, pid := range pids {
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if len(pids) > 0 {
		say("stopped %d process(es) left behind by a failed run", len(pids))
	}
	// Then the containers' rootfs mounts in the work directory, deepest
	// first, so that it can be removed.
	var mounts []string
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], s.dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, m := range mounts {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
	root := filepath.Join("/run/containerd/runc", s.namespace)
	states, _ := os.ReadDir(root)
	for _, st := range states {
		// A runc killed mid-restore leaves its rootfs mount for CRIU.
		syscall.Unmount(filepath.Join(root, st.Name(), "criu-root"), syscall.MNT_DETACH)
		exec.Command("runc", "--root", root, "delete", "--force", st.Name()).Run()
	}
	// Last, the namespace's own directories that containerd and runc make
	// for its containers and leave when the last one goes: its parent
	// cgroup in every hierarchy and runc's state root. rmdir removes them
	// only when they are empty.
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", s.namespace))
	dirs = append(dirs, filepath.Join("/sys/fs/cgroup", s.namespace), root)
	for _, d := range dirs {
		syscall.Rmdir(d)
	}
}

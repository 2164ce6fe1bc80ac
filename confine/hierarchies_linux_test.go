//go:build linux

package confine

import (
	"os"
	"testing"
)

// This node's hierarchies, read as runc's cgroupfs manager finds them.
func TestCgroupHierarchiesOfThisNode(t *testing.T) {
	if _, err := os.Stat("/sys/fs/cgroup/memory/memory.limit_in_bytes"); err != nil {
		t.Skip("no cgroup v1 memory hierarchy at /sys/fs/cgroup/memory")
	}
	h, names := cgroupV1Mounts()
	if !names["memory"] {
		t.Errorf("controller names %v, without memory", names)
	}
	if got := h["memory"]; got != (cgroupHierarchy{"/sys/fs/cgroup/memory", true}) {
		t.Errorf("memory: %+v", got)
	}
	if got, ok := h["systemd"]; ok && !got.Managed {
		t.Errorf("name=systemd, which runc manages: %+v", got)
	}
	if _, ok := h["unified"]; ok {
		t.Error("the cgroup v2 mount is not a v1 hierarchy")
	}
}

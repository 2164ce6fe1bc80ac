//go:build linux

package confine

import (
	"testing"

	"github.com/opencontainers/cgroups/systemd"
)

// Where runc makes a container's cgroup below each v1 hierarchy, for the
// cgroups paths containerd gives: ctr's, and the CRI plugin's with either
// cgroup driver.
func TestRuncCgroupPath(t *testing.T) {
	for in, want := range map[string]string{
		"/default/web":   "/default/web",
		"/k8s.io/abc123": "/k8s.io/abc123",
		"kubepods-besteffort-pod1234_5678.slice:cri-containerd:abc123": "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice/cri-containerd-abc123.scope",
		"system.slice:docker:1234":                                     "/system.slice/docker-1234.scope",
		":runc:web":                                                    "/system.slice/runc-web.scope",
		"-.slice:runc:web":                                             "/runc-web.scope",
		"machine.slice:x:kubepods-a.slice":                             "/machine.slice/kubepods-a.slice",
		"user-1000.slice:app:web":                                      "/user.slice/user-1000.slice/app-web.scope",
	} {
		if got, ok := RuncCgroupPath(in); !ok || got != want {
			t.Errorf("%q: got %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{
		"", "default/web", "/a/../b", "/a/", "/a:b",
		"system.slice:docker", "a:b:c:d", "system:docker:1", // not a slice
		"a--b.slice:p:n", "-a.slice:p:n", ".slice:p:n", "a/b.slice:p:n",
		"system.slice:p/q:n", "system.slice:p:a/b", "system.slice:p:",
	} {
		if got, ok := RuncCgroupPath(in); ok {
			t.Errorf("%q: got %q, want refused", in, got)
		}
	}
}

// expandSlice nests slices as runc's systemd cgroup manager does, and
// refuses the names it refuses.
func TestExpandSliceAgreesWithRunc(t *testing.T) {
	for _, in := range []string{
		"system.slice", "-.slice", "kubepods.slice", "kubepods-burstable.slice",
		"kubepods-burstable-pod1234_5678.slice", "a-b-c-d.slice", "..slice", "a..slice",
		"", ".slice", "-", "a", "a.scope", "a--b.slice", "-a.slice", "a-.slice", "a/b.slice", "--.slice",
	} {
		want, err := systemd.ExpandSlice(in)
		got, ok := expandSlice(in)
		if ok != (err == nil) || got != want {
			t.Errorf("%q: got %q, %v; runc says %q, %v", in, got, ok, want, err)
		}
	}
}

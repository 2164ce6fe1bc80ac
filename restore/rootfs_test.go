package restore

import (
	"slices"
	"testing"

	"github.com/containerd/containerd/api/types"
)

func TestRootfsLayers(t *testing.T) {
	overlay := []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "workdir=/s/2/work", "upperdir=/s/2/fs", "lowerdir=/c/rootfs:/s/1/fs"}}}
	if got := rootfsLayers(overlay); !slices.Equal(got, []string{"/s/2/fs", "/c/rootfs", "/s/1/fs"}) {
		t.Errorf("overlay: %q", got)
	}
	readOnly := []*types.Mount{{Type: "overlay", Options: []string{"lowerdir=/s/2/fs:/s/1/fs"}}}
	if got := rootfsLayers(readOnly); !slices.Equal(got, []string{"/s/2/fs", "/s/1/fs"}) {
		t.Errorf("overlay without an upper directory: %q", got)
	}
	bind := []*types.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"rbind", "rw"}}}
	if got := rootfsLayers(bind); !slices.Equal(got, []string{"/s/1/fs"}) {
		t.Errorf("bind: %q", got)
	}
	idmapped := []*types.Mount{{Type: "overlay", Options: []string{"upperdir=/s/2/fs", "lowerdir=/s/1/fs", "uidmap=0:100000:65536", "gidmap=0:100000:65536"}}}
	for _, m := range [][]*types.Mount{nil, {{Type: "ext4", Source: "/dev/vdb"}}, append(bind, bind...), idmapped} {
		if got := rootfsLayers(m); got != nil {
			t.Errorf("%v: %q, want none", m, got)
		}
	}
}

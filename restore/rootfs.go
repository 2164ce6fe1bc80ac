package restore

import (
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
)

// stackRootfsChanges returns the container's rootfs mounts with dir (the
// checkpoint's unpacked rootfs changes, whiteouts as overlay whiteouts) as
// the topmost lower layer. The container's own writable layer stays on top
// and stays empty, so a fallback to a cold start just uses the original
// mounts: the checkpoint never writes into the container's snapshot.
func stackRootfsChanges(mounts []*types.Mount, dir string) ([]*types.Mount, error) {
	if len(mounts) != 1 || mounts[0].Type != "overlay" {
		kinds := make([]string, len(mounts))
		for i, m := range mounts {
			kinds[i] = m.Type
		}
		return nil, fmt.Errorf("the checkpoint has rootfs changes, which need an overlay rootfs; this container's rootfs mounts are [%s] (use the overlayfs snapshotter)", strings.Join(kinds, " "))
	}
	if strings.ContainsAny(dir, ":,") {
		return nil, fmt.Errorf("cache path %q can't be used in overlay options", dir)
	}
	m := proto.Clone(mounts[0]).(*types.Mount)
	found := false
	for i, o := range m.Options {
		if rest, ok := strings.CutPrefix(o, "lowerdir="); ok {
			m.Options[i] = "lowerdir=" + dir + ":" + rest
			found = true
		}
	}
	if !found {
		return nil, fmt.Errorf("overlay rootfs without lowerdir option")
	}
	return []*types.Mount{m}, nil
}

// isEmptyDir reports whether dir has no entries (or does not exist).
func isEmptyDir(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err != nil || len(entries) == 0
}

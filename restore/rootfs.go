package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/api/types"
	"google.golang.org/protobuf/proto"
)

// stackRootfsChanges returns the container's rootfs mounts with dir (the
// checkpoint's unpacked rootfs changes, whiteouts as overlay whiteouts) as
// the topmost lower layer. The container's own writable layer stays on top:
// the checkpoint's files are not in the container's snapshot, and a
// fallback to a cold start uses the original mounts. What the failed
// restore wrote (files CRIU opened for writing are copied up) is removed
// from the writable layer before it (see ClearDir).
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

// rootfsLayers returns the directories of a rootfs, topmost first: an
// overlay's upper and lower directories, or a bind mount's source. It
// returns nil for mounts it does not know, and for an ID-mapped one
// (containerd's uidmap and gidmap options, for a user namespace): the
// owners its directories hold are not the ones the container sees.
func rootfsLayers(mounts []*types.Mount) []string {
	if len(mounts) != 1 {
		return nil
	}
	m := mounts[0]
	for _, o := range m.Options {
		if strings.HasPrefix(o, "uidmap=") || strings.HasPrefix(o, "gidmap=") {
			return nil
		}
	}
	switch m.Type {
	case "overlay":
		var upper string
		var lower []string
		for _, o := range m.Options {
			if dir, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = dir
			} else if dirs, ok := strings.CutPrefix(o, "lowerdir="); ok {
				lower = strings.Split(dirs, ":")
			}
		}
		if len(lower) == 0 {
			return nil
		}
		if upper != "" {
			return append([]string{upper}, lower...)
		}
		return lower
	case "bind", "rbind":
		return []string{m.Source}
	}
	return nil
}

// isEmptyDir reports whether dir has no entries (or does not exist).
func isEmptyDir(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err != nil || len(entries) == 0
}

// FreshUpperDir is the upper directory of an overlay rootfs that nothing
// has written to yet, or "" for another rootfs or an upper directory that
// is not empty (a container started before: its writes are its own).
func FreshUpperDir(mounts []*types.Mount) string {
	if len(mounts) != 1 || mounts[0].Type != "overlay" {
		return ""
	}
	for _, o := range mounts[0].Options {
		if dir, ok := strings.CutPrefix(o, "upperdir="); ok {
			if entries, err := os.ReadDir(dir); err == nil && len(entries) == 0 {
				return dir
			}
			return ""
		}
	}
	return ""
}

// ClearDir removes everything in dir, and reports how many entries it
// held. A failed restore leaves in the container's upper directory the
// files CRIU opened for writing (copied up from the checkpoint's rootfs
// changes): the cold start after it must not see them.
func ClearDir(dir string) (int, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return 0, err
		}
	}
	return len(entries), nil
}

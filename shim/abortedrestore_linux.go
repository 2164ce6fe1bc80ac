//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/process"
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/runc"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"golang.org/x/sys/unix"
)

// clearAbortedRestore undoes what a runc restore that never returned leaves
// behind. For CRIU, runc bind-mounts the rootfs at criu-root in the
// container's runc state directory and unmounts it when the restore
// returns. A runc killed mid-restore (OOM, a signal) leaves the mount: the
// runc delete of the failed restore then cannot remove the state directory,
// and the cold create that follows fails with "container with given ID
// already exists". Nothing happens when there is no such mount.
func clearAbortedRestore(ctx context.Context, bundle, id string) error {
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
	return unmountLeftover(filepath.Join(root, ns, id, "criu-root"))
}

// unmountLeftover detaches the mount at path, if path is a mount point.
func unmountLeftover(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s left by the aborted restore: %w", path, err)
}

//go:build linux

package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	runcmanager "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
)

// NewManager returns the snapboot runtime's shim manager: containerd's runc
// shim manager, whose Stop first clears a restore that a dead shim left
// half done.
//
// containerd runs the shim binary's delete command (Stop) when a shim has
// died. A shim killed while runc restores takes runc with it (runc runs
// with a parent-death signal), and runc's mount of the rootfs at criu-root
// in its state directory stays: runc's forced delete then cannot remove
// that directory, and the mount, which holds the container's rootfs and
// the checkpoint's rootfs changes, is left on the node.
func NewManager() shim.Shim {
	return manager{Shim: runcmanager.NewShimManager(RuntimeName), clearAborted: clearAbortedRestore}
}

type manager struct {
	shim.Shim
	clearAborted func(ctx context.Context, bundle, id string) error
}

func (m manager) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	// containerd runs the delete command in the bundle (the runc manager
	// takes the bundle's path the same way).
	cwd, err := os.Getwd()
	if err == nil {
		err = m.clearAborted(ctx, filepath.Join(filepath.Dir(cwd), id), id)
	} else {
		err = fmt.Errorf("bundle of %s: %w", id, err)
	}
	if err != nil {
		log.G(ctx).WithError(err).Warn("snapboot: could not clear what an aborted restore left")
	}
	return m.Shim.Stop(ctx, id)
}

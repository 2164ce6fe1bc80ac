//go:build linux

package shim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	runcmanager "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/manager"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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

// Info answers containerd's runtime introspection (the shim binary's -info
// command, with the runtime's options on stdin) as the runc shim does, after
// translating CRI's options for a runtime type containerd does not know
// (runtimeoptions.Options, see translateOptions) into runc options: the runc
// shim's Info refuses them, and CRI then knows none of the runtime's
// features (user namespaces, recursive read-only mounts), so the kubelet
// refuses pods that need them.
func (m manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	data, err := io.ReadAll(optionsR)
	if err != nil {
		return nil, fmt.Errorf("runtime options: %w", err)
	}
	if len(data) > 0 {
		var opts anypb.Any
		if err := proto.Unmarshal(data, &opts); err != nil {
			return nil, fmt.Errorf("runtime options: %w", err)
		}
		runc, _, err := runcOptions(&opts)
		if err != nil {
			return nil, err
		}
		if runc != &opts {
			if data, err = proto.Marshal(runc); err != nil {
				return nil, fmt.Errorf("runtime options: %w", err)
			}
		}
	}
	return m.Shim.Info(ctx, bytes.NewReader(data))
}

// Start starts the shim as the runc shim manager does, with CRI's options
// for a runtime type containerd does not know (runtimeoptions.Options, an
// extension of the bootstrap parameters) translated into runc options:
// the runc manager looks only for runc options there (ShimCgroup, which
// puts the shim in a cgroup of the operator's).
func (m manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	var exts []*bootapi.Extension
	translated := false
	for _, ext := range params.GetExtensions() {
		runc, _, err := runcOptions(ext.GetValue())
		if err != nil {
			return nil, err
		}
		if runc != ext.GetValue() {
			ext = &bootapi.Extension{Value: runc}
			translated = true
		}
		exts = append(exts, ext)
	}
	if translated {
		params = proto.Clone(params).(*bootapi.BootstrapParams)
		params.Extensions = exts
	}
	return m.Shim.Start(ctx, params)
}

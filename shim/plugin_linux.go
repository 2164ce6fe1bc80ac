//go:build linux

package shim

import (
	"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2/task"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/log"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"

	"github.com/snapboot/snapboot/compat"
	"github.com/snapboot/snapboot/nodeconfig"
	"github.com/snapboot/snapboot/restore"
)

// RuntimeName is the containerd runtime type that resolves to this shim.
const RuntimeName = restore.RuntimeName

func init() {
	registry.Register(&plugin.Registration{
		Type: plugins.TTRPCPlugin,
		ID:   "task",
		Requires: []plugin.Type{
			plugins.EventPlugin,
			plugins.InternalPlugin,
		},
		InitFn: func(ic *plugin.InitContext) (any, error) {
			pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
			if err != nil {
				return nil, err
			}
			ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
			if err != nil {
				return nil, err
			}
			publisher := newFilteringPublisher(pp.(shim.Publisher))
			inner, err := task.NewTaskService(ic.Context, publisher, ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			cfg, err := nodeconfig.Load(nodeconfig.Path())
			if err != nil {
				// A broken node configuration must not stop containers from
				// running: restores are refused (deny by default), cold starts work.
				log.G(ic.Context).WithError(err).Warn("snapboot: node configuration unusable; every restore will cold-start")
			}
			restorer := restore.New(cfg, err)
			restorer.DetectNode = func() (*compat.Node, error) { return compat.Detect(criuVersion) }
			return newService(inner, publisher, restorer), nil
		},
	})
}

//go:build linux

package shim

import (
	"context"
	"os"
	"sync"

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
	"github.com/snapboot/snapboot/restorehook"
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
			// What this node is (kernel, CPU, CRIU version) is needed by
			// every restore's pre-flight; asking CRIU takes milliseconds that
			// a restore should not wait for, so it is asked now.
			go func() { _, _ = describeNode() }()
			publisher := newFilteringPublisher(pp.(shim.Publisher))
			inner, err := task.NewTaskService(ic.Context, publisher, ss.(shutdown.Service))
			if err != nil {
				return nil, err
			}
			svc := newService(inner, publisher, restorers(ic.Context))
			if svc.oom, err = newOOMWatcher(ic.Context, publisher); err != nil {
				log.G(ic.Context).WithError(err).Warn("snapboot: OOM kills of restored containers will not be reported")
			}
			return svc, nil
		},
	})
}

// describeNode describes this node once per shim. CRIU's version is
// remembered in criuMemoDir (tmpfs: a reboot asks again) while its binary
// is unchanged, so that shims, restoring or not, do not each run CRIU.
var describeNode = sync.OnceValues(func() (*compat.Node, error) {
	return compat.Detect(compat.MemoizedCRIUVersion(criuMemoDir, "criu", criuVersion))
})

const criuMemoDir = "/run/snapboot"

// restorers returns a function that gives the Restorer of a node
// configuration file, loading each file once per shim.
func restorers(ctx context.Context) func(string) preparer {
	var mu sync.Mutex
	loaded := map[string]*restore.Restorer{}
	return func(path string) preparer {
		if path == "" {
			path = nodeconfig.Path()
		}
		mu.Lock()
		defer mu.Unlock()
		if r, ok := loaded[path]; ok {
			return r
		}
		cfg, err := nodeconfig.Load(path)
		if err != nil {
			// A broken node configuration must not stop containers from
			// running: restores are refused with the reason, cold starts work.
			log.G(ctx).WithError(err).WithField("config", path).Warn("snapboot: node configuration unusable; restores will cold-start")
		}
		r := restore.New(cfg, err)
		r.ConfigPath = path
		r.DetectNode = describeNode
		r.RunCommand = runThroughReaper
		if exe, err := os.Executable(); err == nil {
			hook := restorehook.Hook(exe)
			r.NamespaceHook = &hook
		}
		loaded[path] = r
		return r
	}
}

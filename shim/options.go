package shim

import (
	"fmt"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// translateOptions handles the options CRI sends a runtime type it does not
// know (runtimeoptions.Options: ConfigPath, or the runtime's whole TOML
// options table as ConfigBody). The runc task service only understands runc
// options, so ConfigBody's runc keys (SystemdCgroup, BinaryName, Root, ...)
// become runc options, and ConfigPath, or the table's SnapbootConfigPath,
// names snapboot's node configuration. Requests with runc options or none
// are returned unchanged.
func translateOptions(r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskRequest, string, error) {
	runc, configPath, err := runcOptions(r.Options)
	if err != nil || runc == r.Options {
		return r, configPath, err
	}
	rr := proto.Clone(r).(*taskAPI.CreateTaskRequest)
	rr.Options = runc
	return rr, configPath, nil
}

// snapbootOptions are the keys of a runtime's options table that are
// snapboot's own, not runc's.
type snapbootOptions struct {
	// SnapbootConfigPath names the node configuration, as ConfigPath does;
	// containerd sends the table (ConfigBody) only without ConfigPath, so
	// this key is the one that keeps runc's settings beside it.
	SnapbootConfigPath string
}

// runcOptions returns what the runc shim understands for the options
// containerd gave: runc options from a runtimeoptions.Options' table, the
// options themselves otherwise; and the node configuration they name.
func runcOptions(opts *anypb.Any) (*anypb.Any, string, error) {
	// MessageIs takes the type URL with or without a host part
	// (typeurl's "runtimeoptions.v1.Options", anypb's
	// "type.googleapis.com/runtimeoptions.v1.Options").
	if opts == nil || !opts.MessageIs(&runtimeoptions.Options{}) {
		return opts, "", nil
	}
	ro := &runtimeoptions.Options{}
	if err := opts.UnmarshalTo(ro); err != nil {
		return nil, "", fmt.Errorf("runtime options: %w", err)
	}
	var runc options.Options
	configPath := ro.ConfigPath
	if len(ro.ConfigBody) > 0 {
		if err := toml.Unmarshal(ro.ConfigBody, &runc); err != nil {
			return nil, "", fmt.Errorf("runtime options: runc settings: %w", err)
		}
		var own snapbootOptions
		if err := toml.Unmarshal(ro.ConfigBody, &own); err != nil {
			return nil, "", fmt.Errorf("runtime options: %w", err)
		}
		if own.SnapbootConfigPath != "" {
			if configPath != "" && configPath != own.SnapbootConfigPath {
				return nil, "", fmt.Errorf("runtime options: ConfigPath %q and SnapbootConfigPath %q differ", configPath, own.SnapbootConfigPath)
			}
			configPath = own.SnapbootConfigPath
		}
	}
	out, err := typeurl.MarshalAnyToProto(&runc)
	if err != nil {
		return nil, "", err
	}
	return out, configPath, nil
}

package shim

import (
	"fmt"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
)

// translateOptions handles the options CRI sends a runtime type it does not
// know (runtimeoptions.Options: ConfigPath, or the runtime's whole TOML
// options table as ConfigBody). The runc task service only understands runc
// options, so ConfigBody's runc keys (SystemdCgroup, BinaryName, Root, ...)
// become runc options, and ConfigPath names snapboot's node configuration.
// Requests with runc options or none are returned unchanged.
func translateOptions(r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskRequest, string, error) {
	if r.Options == nil || !typeurl.Is(r.Options, &runtimeoptions.Options{}) {
		return r, "", nil
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		return nil, "", fmt.Errorf("runtime options: %w", err)
	}
	ro, ok := v.(*runtimeoptions.Options)
	if !ok {
		return nil, "", fmt.Errorf("runtime options: unexpected %T", v)
	}
	var runc options.Options
	if len(ro.ConfigBody) > 0 {
		if err := toml.Unmarshal(ro.ConfigBody, &runc); err != nil {
			return nil, "", fmt.Errorf("runtime options: runc settings: %w", err)
		}
	}
	any, err := typeurl.MarshalAnyToProto(&runc)
	if err != nil {
		return nil, "", err
	}
	rr := proto.Clone(r).(*taskAPI.CreateTaskRequest)
	rr.Options = any
	return rr, ro.ConfigPath, nil
}

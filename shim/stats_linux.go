//go:build linux

package shim

import (
	"context"
	"fmt"

	"github.com/containerd/cgroups/v3/cgroup1"
	cgroupsv2 "github.com/containerd/cgroups/v3/cgroup2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/typeurl/v2"
)

// Stats answers for restored containers too. The runc task service loads a
// container's cgroup when it creates the init process, which a restore does
// only at Start; it then has none and answers "cgroup does not exist". For
// a restored container, the cgroup is found from its init process.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	resp, err := s.TTRPCTaskService.Stats(ctx, r)
	if err == nil {
		return resp, nil
	}
	s.mu.Lock()
	restored := s.restored[r.ID]
	s.mu.Unlock()
	if !restored {
		return resp, err
	}
	st, serr := s.TTRPCTaskService.State(ctx, &taskAPI.StateRequest{ID: r.ID})
	if serr != nil || st.Pid == 0 {
		return resp, err
	}
	stats, serr := cgroupStats(int(st.Pid))
	if serr != nil {
		return nil, fmt.Errorf("stats of restored container %s: %w", r.ID, serr)
	}
	data, serr := typeurl.MarshalAny(stats)
	if serr != nil {
		return nil, serr
	}
	return &taskAPI.StatsResponse{Stats: typeurl.MarshalProto(data)}, nil
}

// cgroupStats reads the statistics of the cgroup of process pid.
func cgroupStats(pid int) (any, error) {
	cg, err := loadCgroup(pid)
	if err != nil {
		return nil, err
	}
	switch cg := cg.(type) {
	case *cgroupsv2.Manager:
		return cg.Stat()
	case cgroup1.Cgroup:
		return cg.Stat(cgroup1.IgnoreNotExist)
	}
	return nil, fmt.Errorf("unknown cgroup type %T", cg)
}

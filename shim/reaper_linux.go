//go:build linux

package shim

import (
	"fmt"
	"os/exec"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	"github.com/containerd/containerd/v2/pkg/sys/reaper"
	"github.com/containerd/typeurl/v2"
)

// runThroughReaper runs cmd to its end through containerd's reaper, which
// collects every child's exit status in a shim (see criuVersion).
func runThroughReaper(cmd *exec.Cmd) error {
	ec, err := reaper.Default.Start(cmd)
	if err != nil {
		return err
	}
	status, err := reaper.Default.Wait(cmd, ec)
	if err != nil {
		return err
	}
	if status != 0 {
		return fmt.Errorf("exit status %d", status)
	}
	return nil
}

// runcBinary is the runc binary the runc task service runs for r: its
// runc options' BinaryName, or "" for runc in PATH.
func runcBinary(r *taskAPI.CreateTaskRequest) string {
	if r.Options == nil || !typeurl.Is(r.Options, &options.Options{}) {
		return ""
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		return ""
	}
	if o, ok := v.(*options.Options); ok {
		return o.BinaryName
	}
	return ""
}

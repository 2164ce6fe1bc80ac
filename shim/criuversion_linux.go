//go:build linux

package shim

import (
	"bytes"
	"fmt"
	"os/exec"

	"github.com/containerd/containerd/v2/pkg/sys/reaper"

	"github.com/snapboot/snapboot/compat"
)

// criuVersion runs `criu --version` through containerd's reaper. Inside a
// shim, the reaper collects every child's exit status (it is the
// subreaper), so go-criu's RPC call, which waits for its own child, fails
// with "waitid: no child processes"; children must be started and awaited
// through the reaper.
func criuVersion() (int, error) {
	cmd := exec.Command("criu", "--version")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	ec, err := reaper.Default.Start(cmd)
	if err != nil {
		return 0, fmt.Errorf("start criu --version: %w", err)
	}
	status, err := reaper.Default.Wait(cmd, ec)
	if err != nil {
		return 0, fmt.Errorf("criu --version: %w", err)
	}
	if status != 0 {
		return 0, fmt.Errorf("criu --version exited %d: %s", status, out.String())
	}
	return compat.ParseCRIUVersionOutput(out.String())
}

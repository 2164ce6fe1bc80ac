//go:build linux

package shim

import (
	"bytes"
	"fmt"
	"os/exec"

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
	if err := runThroughReaper(cmd); err != nil {
		return 0, fmt.Errorf("criu --version: %w: %s", err, out.String())
	}
	return compat.ParseCRIUVersionOutput(out.String())
}

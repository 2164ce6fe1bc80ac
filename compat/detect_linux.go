//go:build linux

package compat

import (
	"fmt"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"golang.org/x/sys/unix"
)

// CRIUVersionFunc returns the node's CRIU version as major*10000+minor*100+patch.
type CRIUVersionFunc func() (int, error)

// CRIUVersionRPC asks CRIU for its version over its RPC interface (go-criu),
// the way tools outside a shim do. criuPath "" finds criu on PATH.
func CRIUVersionRPC(criuPath string) CRIUVersionFunc {
	return func() (int, error) {
		c := criu.MakeCriu()
		if criuPath != "" {
			c.SetCriuPath(criuPath)
		}
		return c.GetCriuVersion()
	}
}

// Detect describes this node, asking criuVersion for CRIU's version.
func Detect(criuVersion CRIUVersionFunc) (*Node, error) {
	n := &Node{Architecture: goarch}
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		n.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	cpu, err := ReadCPU("/proc/cpuinfo")
	if err != nil {
		return nil, err
	}
	n.CPU = cpu
	v, err := criuVersion()
	if err != nil {
		return nil, fmt.Errorf("CRIU version: %w", err)
	}
	n.CRIUVersion = v
	return n, nil
}

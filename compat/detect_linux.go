//go:build linux

package compat

import (
	"fmt"

	criu "github.com/checkpoint-restore/go-criu/v7"
	"golang.org/x/sys/unix"
)

// Detect describes this node. criuPath is the CRIU binary ("" finds criu on PATH).
func Detect(criuPath string) (*Node, error) {
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
	c := criu.MakeCriu()
	if criuPath != "" {
		c.SetCriuPath(criuPath)
	}
	v, err := c.GetCriuVersion()
	if err != nil {
		return nil, fmt.Errorf("CRIU version: %w", err)
	}
	n.CRIUVersion = v
	return n, nil
}

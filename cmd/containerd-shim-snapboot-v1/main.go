//go:build linux

// Command containerd-shim-snapboot-v1 is the containerd shim for the
// io.containerd.snapboot.v1 runtime: containerd's runc shim, with containers
// restored from a CRIU checkpoint when their spec asks for it.
package main

import (
	"context"

	"github.com/containerd/containerd/v2/pkg/shim"

	snapshim "github.com/snapboot/snapboot/shim"
)

func main() {
	shim.RunShim(context.Background(), snapshim.NewManager())
}

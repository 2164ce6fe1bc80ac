//go:build linux

// Command containerd-shim-snapboot-v1 is the containerd shim for the
// io.containerd.snapboot.v1 runtime: containerd's runc shim, with containers
// restored from a CRIU checkpoint when their spec asks for it.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/pkg/shim"

	"github.com/snapboot/snapboot/restorehook"
	snapshim "github.com/snapboot/snapboot/shim"
)

func main() {
	if len(os.Args) == 2 && os.Args[1] == restorehook.HookArg {
		// runc runs the shim's binary as a restore's createRuntime hook.
		if err := restorehook.RunHook(os.Stdin); err != nil {
			fmt.Fprintln(os.Stderr, "snapboot restore hook:", err)
			os.Exit(1)
		}
		return
	}
	shim.RunShim(context.Background(), snapshim.NewManager())
}

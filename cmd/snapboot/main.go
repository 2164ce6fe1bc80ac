//go:build linux

// Command snapboot makes, inspects and pre-pulls snapboot checkpoints:
//
//	snapboot checkpoint CONTAINER REF   dump a running container and push it
//	snapboot inspect REF                show a checkpoint and whether this node can restore it
//	snapboot pull REF                   fill the node cache, as the shim would
//	snapboot cache ls|rm|prune          see and trim the node cache
//
// Exit codes: 0 success; 1 failure; 2 bad usage; 3 container or reference
// not found; 4 this node can't restore the checkpoint (inspect, pull).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/containerd/errdefs"
	"github.com/urfave/cli/v3"
	"oras.land/oras-go/v2/errdef"

	"github.com/snapboot/snapboot/checkpoint"
	"github.com/snapboot/snapboot/compat"
	"github.com/snapboot/snapboot/nodeconfig"
	"github.com/snapboot/snapboot/restore"
)

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitNotHere     = 4
	defaultAddress  = "/run/containerd/containerd.sock"
	defaultNamespce = "default"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	// A second signal does not end the CLI either: the first one's work
	// (resuming a paused donor, removing its images) must not be cut.
	app := &cli.Command{
		Name:    "snapboot",
		Usage:   "make, inspect and pre-pull snapboot checkpoints",
		Version: version,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "address", Aliases: []string{"a"}, Usage: "containerd's gRPC socket", Value: defaultAddress, Sources: cli.EnvVars("CONTAINERD_ADDRESS")},
			&cli.StringFlag{Name: "namespace", Aliases: []string{"n"}, Usage: "containerd namespace", Value: defaultNamespce, Sources: cli.EnvVars("CONTAINERD_NAMESPACE")},
			&cli.StringFlag{Name: "config", Usage: "snapboot node configuration", Value: nodeconfig.DefaultPath, Sources: cli.EnvVars(nodeconfig.EnvPath)},
		},
		Commands:       []*cli.Command{checkpointCommand, inspectCommand, pullCommand, cacheCommand, metricsCommand, configCommand},
		OnUsageError:   func(_ context.Context, _ *cli.Command, err error, _ bool) error { return usageError{err} },
		ExitErrHandler: func(context.Context, *cli.Command, error) {},
	}
	err := app.Run(ctx, os.Args)
	if err != nil {
		// An error may quote a checkpoint's strings (its metadata, in a
		// refusal): no control character of theirs reaches the terminal.
		fmt.Fprintf(os.Stderr, "snapboot: %s\n", escapeControls(err.Error()))
	}
	os.Exit(exitCode(err))
}

type usageError struct{ error }

func (u usageError) Unwrap() error { return u.error }

// exitCode maps an error to the documented exit codes.
func exitCode(err error) int {
	var u usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errdefs.IsNotFound(err), errors.Is(err, errdef.ErrNotFound), errors.Is(err, checkpoint.ErrNotRunning):
		return exitNotFound
	case errors.Is(err, compat.ErrIncompatible), errors.Is(err, restore.ErrDenied):
		return exitNotHere
	}
	return exitFailure
}

// loadConfig reads the node configuration named by --config.
func loadConfig(cmd *cli.Command) (*nodeconfig.Config, error) {
	path := cmd.Root().String("config")
	os.Setenv(nodeconfig.EnvPath, path) // so that messages name the file
	return nodeconfig.Load(path)
}

func args(cmd *cli.Command, names ...string) ([]string, error) {
	if cmd.NArg() != len(names) {
		return nil, usageError{fmt.Errorf("%s: want %d argument(s): %v, got %d", cmd.Name, len(names), names, cmd.NArg())}
	}
	return cmd.Args().Slice(), nil
}

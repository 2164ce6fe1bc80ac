//go:build linux

package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v3"

	"github.com/snapboot/snapboot/restore"
)

var pullCommand = &cli.Command{
	Name:      "pull",
	Usage:     "download and unpack a checkpoint into the node cache ahead of time, as the shim would",
	ArgsUsage: "REF",
	Action: func(ctx context.Context, cmd *cli.Command) error {
		a, err := args(cmd, "REF")
		if err != nil {
			return err
		}
		cfg, cfgErr := loadConfig(cmd)
		r := restore.New(cfg, cfgErr)
		f, err := r.Fetch(ctx, a[0])
		if err != nil {
			return err
		}
		f.Release()
		if _, _, err := r.EnforceCacheLimits(ctx); err != nil {
			return fmt.Errorf("trim the cache: %w", err)
		}
		state := "pulled"
		if f.Cached {
			state = "already cached"
		}
		fmt.Printf("%s %s@%s: %s downloaded; resolve %.2fs, pull %.2fs, unpack %.2fs\n", state, a[0], f.Digest,
			human(f.PulledBytes), f.Timings.Resolve.Seconds(), f.Timings.Pull.Seconds(), f.Timings.Unpack.Seconds())
		return nil
	},
}

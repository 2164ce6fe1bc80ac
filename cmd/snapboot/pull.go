//go:build linux

package main

import (
	"context"
	"fmt"
	"os"

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
		evicted, _, err := r.EnforceCacheLimits(ctx)
		if err != nil {
			return fmt.Errorf("trim the cache: %w", err)
		}
		if m := r.Metrics(); m != nil {
			if err := m.RecordEvictions(len(evicted)); err != nil {
				fmt.Fprintf(os.Stderr, "snapboot: metrics not recorded: %v\n", err)
			}
		}
		for _, e := range evicted {
			fmt.Printf("evicted %s (%s) from the node cache\n", e.Digest, human(e.Size))
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

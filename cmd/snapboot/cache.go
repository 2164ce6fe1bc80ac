//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/urfave/cli/v3"

	"github.com/snapboot/snapboot/cache"
)

var cacheCommand = &cli.Command{
	Name:  "cache",
	Usage: "see and trim the node cache",
	Commands: []*cli.Command{
		{
			Name:  "ls",
			Usage: "list cached checkpoints, most recently used first",
			Action: func(ctx context.Context, cmd *cli.Command) error {
				c, err := openCache(cmd)
				if err != nil {
					return err
				}
				entries, err := c.Entries(ctx)
				if err != nil {
					return err
				}
				w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "DIGEST\tSIZE\tLAST USED\tIN USE\tUNPACKED\tREFERENCES")
				var total int64
				for _, e := range entries {
					total += e.Size
					fmt.Fprintf(w, "%s\t%s\t%s\t%v\t%v\t%s\n", e.Digest, human(e.Size), e.LastUsed.UTC().Format(time.RFC3339), e.InUse, e.Unpacked, strings.Join(e.Refs, ","))
				}
				w.Flush()
				fmt.Printf("%d checkpoint(s), %s in %s\n", len(entries), human(total), c.Root())
				return nil
			},
		},
		{
			Name:      "rm",
			Usage:     "remove checkpoints from the cache (not those in use)",
			ArgsUsage: "DIGEST...",
			Action: func(ctx context.Context, cmd *cli.Command) error {
				if cmd.NArg() == 0 {
					return usageError{fmt.Errorf("rm: want one or more manifest digests (see snapboot cache ls)")}
				}
				c, err := openCache(cmd)
				if err != nil {
					return err
				}
				for _, a := range cmd.Args().Slice() {
					d, err := digest.Parse(a)
					if err != nil {
						return usageError{fmt.Errorf("rm %s: %w", a, err)}
					}
					if err := c.Remove(ctx, d); err != nil {
						return err
					}
					fmt.Printf("removed %s\n", d)
				}
				return nil
			},
		},
		{
			Name:  "prune",
			Usage: "remove checkpoints not in use: beyond [cache] max_age and max_size, or all with --all",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "all", Usage: "remove every checkpoint not in use"}},
			Action: func(ctx context.Context, cmd *cli.Command) error {
				cfg, err := loadConfig(cmd)
				if err != nil {
					return err
				}
				c, err := cache.Open(cfg.Cache.Root)
				if err != nil {
					return err
				}
				removed, err := c.Prune(ctx, cache.PruneLimits{MaxSize: int64(cfg.Cache.MaxSize), MaxAge: time.Duration(cfg.Cache.MaxAge), All: cmd.Bool("all")})
				var freed int64
				for _, e := range removed {
					freed += e.Size
					fmt.Printf("removed %s (%s)\n", e.Digest, human(e.Size))
				}
				fmt.Printf("freed %s\n", human(freed))
				return err
			},
		},
	},
}

func openCache(cmd *cli.Command) (*cache.Cache, error) {
	cfg, err := loadConfig(cmd)
	if err != nil {
		return nil, err
	}
	return cache.Open(cfg.Cache.Root)
}

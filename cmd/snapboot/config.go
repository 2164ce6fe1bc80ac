//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v3"
)

var configCommand = &cli.Command{
	Name:  "config",
	Usage: "check the node configuration",
	Commands: []*cli.Command{{
		Name:  "check",
		Usage: "parse the node configuration (--config) as a shim would, and say whether it is valid; a missing file is an error here, where a shim takes it for the defaults, which deny every restore",
		Action: func(ctx context.Context, cmd *cli.Command) error {
			path := cmd.Root().String("config")
			if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("%s: no such file", path)
			}
			cfg, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			namespaces := "any Kubernetes namespace"
			if n := len(cfg.Namespaces); cfg.Namespaces != nil {
				namespaces = fmt.Sprintf("%d Kubernetes namespaces", n)
			}
			fmt.Printf("%s: valid (%d entries in allow, for %s; cache at %s)\n", path, len(cfg.Allow), namespaces, cfg.Cache.Root)
			return nil
		},
	}},
}

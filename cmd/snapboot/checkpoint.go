//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/docker/go-units"
	"github.com/urfave/cli/v3"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/checkpoint"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/pack"
)

var checkpointCommand = &cli.Command{
	Name:      "checkpoint",
	Usage:     "dump a running container with CRIU and push it as a snapboot checkpoint",
	ArgsUsage: "CONTAINER REF",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "leave-running", Usage: "keep the donor running after the dump (the default)", Value: true},
		&cli.BoolFlag{Name: "exit", Usage: "stop the donor after the dump"},
		&cli.BoolFlag{Name: "attach", Usage: "record the checkpoint as an OCI 1.1 referrer of the container's image (same repository)"},
		&cli.StringFlag{Name: "wait-http", Usage: "first wait until this URL, as seen from inside the container, answers 200"},
		&cli.IntFlag{Name: "warm", Usage: "with --wait-http: send N warm-up requests before the dump"},
		&cli.DurationFlag{Name: "wait-timeout", Usage: "with --wait-http: how long to wait for the app", Value: 10 * time.Minute},
		&cli.StringFlag{Name: "compression", Usage: fmt.Sprintf("how to pack the layers: one of %v (zstd levels: harder packs slower, restores faster; lz4: larger, decodes fastest, for a registry on a fast link)", pack.Levels), Value: string(pack.DefaultLevel)},
		&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
	},
	Action: func(ctx context.Context, cmd *cli.Command) error {
		a, err := args(cmd, "CONTAINER", "REF")
		if err != nil {
			return err
		}
		id, ref := a[0], a[1]
		if cmd.Bool("exit") && cmd.IsSet("leave-running") && cmd.Bool("leave-running") {
			return usageError{fmt.Errorf("--exit and --leave-running exclude each other")}
		}
		for _, f := range []string{"warm", "wait-timeout"} {
			if cmd.IsSet(f) && cmd.String("wait-http") == "" {
				return usageError{fmt.Errorf("--%s works with --wait-http, which is not given", f)}
			}
		}
		level, err := pack.ParseLevel(cmd.String("compression"))
		if err != nil {
			return usageError{err}
		}
		cfg, err := loadConfig(cmd)
		if err != nil {
			return err
		}
		parsed, err := oci.ParseReference(ref)
		if err != nil {
			return usageError{err}
		}
		client, err := containerd.New(cmd.Root().String("address"))
		if err != nil {
			return fmt.Errorf("connect to containerd at %s: %w", cmd.Root().String("address"), err)
		}
		defer client.Close()
		ctx = namespaces.WithNamespace(ctx, cmd.Root().String("namespace"))
		progress := newProgress(os.Stderr)

		if url := cmd.String("wait-http"); url != "" {
			c, err := client.LoadContainer(ctx, id)
			if err != nil {
				return fmt.Errorf("container %s: %w", id, err)
			}
			task, err := c.Task(ctx, nil)
			if err != nil {
				return fmt.Errorf("container %s has no task: %w", id, checkpoint.ErrNotRunning)
			}
			progress.Stage("waiting for %s to answer 200 in %s", url, id)
			waited, err := checkpoint.WaitHTTP(ctx, task.Pid(), url, int(cmd.Int("warm")), cmd.Duration("wait-timeout"))
			if err != nil {
				return fmt.Errorf("container %s: %w", id, err)
			}
			progress.Stage("%s answered after %.1fs; %d warm-up requests sent", url, waited.Seconds(), cmd.Int("warm"))
		}

		// The images go in a directory of the cache's, held while this
		// process lives (no prune removes it under a long push), removed
		// by the next shim or prune if it dies.
		c, err := cache.Open(cfg.Cache.Root)
		if err != nil {
			return err
		}
		work, release, err := c.ScratchDir("checkpoint")
		if err != nil {
			return err
		}
		defer release()
		res, err := checkpoint.Run(ctx, client, id, ref, checkpoint.Options{
			Exit:        cmd.Bool("exit"),
			Attach:      cmd.Bool("attach"),
			Compression: level,
			WorkDir:     work,
			KeepDir:     filepath.Join(cfg.Cache.Root, "kept"),
			Remote:      oci.RemoteOptions{PlainHTTP: cfg.Insecure(parsed.Registry), DockerConfig: cfg.DockerConfig, UserAgent: "snapboot/" + version},
			Progress:    progress,
		})
		progress.Done()
		if err != nil {
			return err
		}
		if cmd.Bool("json") {
			return json.NewEncoder(os.Stdout).Encode(map[string]any{
				"reference": ref, "digest": res.Descriptor.Digest,
				"rawBytes": res.Raw(), "compressedBytes": res.Compressed(),
				"criu": res.CRIU, "rootfs": res.Rootfs,
				"dumpSeconds": res.Dump.Seconds(), "packSeconds": res.Pack.Seconds(), "pushSeconds": res.Push.Seconds(),
			})
		}
		fmt.Printf("pushed %s@%s\n", ref, res.Descriptor.Digest)
		fmt.Printf("size: %s raw, %s compressed (CRIU images %s -> %s, rootfs changes %s -> %s)\n",
			human(res.Raw()), human(res.Compressed()), human(res.CRIU.Raw), human(res.CRIU.Compressed), human(res.Rootfs.Raw), human(res.Rootfs.Compressed))
		fmt.Printf("time: dump %.2fs, pack %.2fs, push %.2fs\n", res.Dump.Seconds(), res.Pack.Seconds(), res.Push.Seconds())
		return nil
	},
}

// human spells a size in binary units ("53.5MiB").
func human(n int64) string { return units.BytesSize(float64(n)) }

//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/urfave/cli/v3"

	"github.com/snapboot/snapboot/metrics"
)

var metricsCommand = &cli.Command{
	Name:  "metrics",
	Usage: "print the node's restore metrics in Prometheus format, or serve them (--listen)",
	Flags: []cli.Flag{&cli.StringFlag{Name: "listen", Usage: "serve /metrics on this address (for example 127.0.0.1:9464)"}},
	Action: func(ctx context.Context, cmd *cli.Command) error {
		cfg, err := loadConfig(cmd)
		if err != nil {
			return err
		}
		if cfg.Metrics.Dir == "" {
			return usageError{errors.New("metrics are off: set [metrics] dir in the node configuration")}
		}
		store, err := metrics.Open(cfg.Metrics.Dir)
		if err != nil {
			return err
		}
		addr := cmd.String("listen")
		if addr == "" {
			st, err := store.Read()
			if err != nil {
				return err
			}
			return metrics.WritePrometheus(os.Stdout, st)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
			st, err := store.Read()
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "text/plain; version=0.0.4")
			metrics.WritePrometheus(w, st)
		})
		srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			<-ctx.Done()
			srv.Close()
		}()
		fmt.Fprintf(os.Stderr, "serving metrics on http://%s/metrics\n", addr)
		if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	},
}

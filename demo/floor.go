package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/criuconf"
	"github.com/snapboot/snapboot/criulog"
)

var pulledDigest = regexp.MustCompile(`@(sha256:[0-9a-f]{64})`)

// floor restores the same CRIU images with containerd's stock runc shim
// from local disk: no registry, no verification, no unpacking. The
// checkpoint's rootfs changes are copied into the container's writable
// layer before its task is created (not timed).
func (d *demo) floor(ctx context.Context, ref string) (time.Duration, error) {
	out, err := d.s.snapboot(ctx, "pull", ref)
	if err != nil {
		return 0, err
	}
	m := pulledDigest.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("snapboot pull printed no digest: %s", out)
	}
	unpacked := filepath.Join(d.s.cacheDir, "unpacked", strings.TrimPrefix(m[1], "sha256:"))

	client, err := containerd.New(d.s.containerd)
	if err != nil {
		return 0, err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, d.s.namespace)
	img, err := client.GetImage(ctx, d.image)
	if err != nil {
		return 0, err
	}
	id := d.newID("floor")
	conf, err := criuconf.WriteFile(d.s.dir, "restore", criuconf.RestoreOptions(nil))
	if err != nil {
		return 0, err
	}
	// The same spec as `ctr run --net-host --env ...` gave the donor. The
	// timer counts creating the container and restoring its task, not the
	// copy of the rootfs changes in between.
	syscall.Sync() // as before every measured start (see runContainer)
	began := time.Now()
	c, err := client.NewContainer(ctx, id,
		containerd.WithRuntime("io.containerd.runc.v2", nil),
		containerd.WithNewSnapshot(id, img),
		containerd.WithNewSpec(oci.WithImageConfig(img),
			oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf,
			oci.WithEnv([]string{"DATABASE_URL=" + d.s.databaseURL(), fmt.Sprintf("PORT=%d", d.o.port)}),
			oci.WithAnnotations(map[string]string{criuconf.RuncAnnotation: conf})))
	if err != nil {
		return 0, err
	}
	defer d.s.removeContainer(context.WithoutCancel(ctx), id)
	created := time.Since(began)
	if rootfs := filepath.Join(unpacked, "rootfs"); dirExists(rootfs) {
		mounts, err := client.SnapshotService("overlayfs").Mounts(ctx, id)
		if err != nil {
			return 0, err
		}
		upper := ""
		for _, o := range mounts[0].Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			}
		}
		if upper == "" {
			return 0, fmt.Errorf("floor: no upperdir in %v", mounts)
		}
		// The unpacked layer already has overlay whiteouts: copied into the
		// upper directory they mean the same as in snapboot's lower layer.
		// Entry by entry: the upper directory keeps its own root's mode.
		entries, err := os.ReadDir(rootfs)
		if err != nil {
			return 0, err
		}
		for _, e := range entries {
			if out, err := exec.Command("cp", "-a", filepath.Join(rootfs, e.Name()), upper+"/").CombinedOutput(); err != nil {
				return 0, fmt.Errorf("floor: copy rootfs changes: %v: %s", err, out)
			}
		}
	}
	logPath := filepath.Join(d.s.dir, "logs", id+".log")
	work := filepath.Join(d.s.dir, "logs", id+"-criu")
	if err := os.MkdirAll(work, 0o700); err != nil {
		return 0, err
	}
	began = time.Now()
	task, err := c.NewTask(ctx, cio.LogFile(logPath), containerd.WithRestoreImagePath(filepath.Join(unpacked, "criu")), containerd.WithRestoreWorkPath(work))
	if err != nil {
		return 0, fmt.Errorf("floor: create: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		return 0, fmt.Errorf("floor: runc restore: %w; CRIU: %s", err, criulog.Errors(filepath.Join(work, "restore.log")))
	}
	if _, err := waitHTTP(ctx, d.url, 5*time.Minute); err != nil {
		return 0, err
	}
	return created + time.Since(began), nil
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

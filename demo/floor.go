package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
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
// from local files (the node cache, whose images the warm start just
// before read into the page cache, as it reads them): no registry, no
// verification, no unpacking. The
// checkpoint's rootfs changes are copied into the container's writable
// layer before its task is created (not timed).
func (d *demo) floor(ctx context.Context, ref string) (time.Duration, float64, error) {
	out, err := d.s.snapboot(ctx, "pull", ref)
	if err != nil {
		return 0, 0, err
	}
	m := pulledDigest.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("snapboot pull printed no digest: %s", out)
	}
	unpacked := filepath.Join(d.s.cacheDir, "unpacked", strings.TrimPrefix(m[1], "sha256:"))
	conf, err := criuconf.WriteFile(d.s.dir, "restore", criuconf.RestoreOptions(nil))
	if err != nil {
		return 0, 0, err
	}
	id := d.newID("floor")
	work := filepath.Join(d.s.dir, "logs", id+"-criu")
	if err := os.MkdirAll(work, 0o700); err != nil {
		return 0, 0, err
	}
	copyRootfs := func(ctx context.Context, client *containerd.Client) error {
		rootfs := filepath.Join(unpacked, "rootfs")
		if !dirExists(rootfs) {
			return nil
		}
		mounts, err := client.SnapshotService("overlayfs").Mounts(ctx, id)
		if err != nil {
			return err
		}
		upper := ""
		for _, o := range mounts[0].Options {
			if v, ok := strings.CutPrefix(o, "upperdir="); ok {
				upper = v
			}
		}
		if upper == "" {
			return fmt.Errorf("floor: no upperdir in %v", mounts)
		}
		// The unpacked layer already has overlay whiteouts: copied into the
		// upper directory they mean the same as in snapboot's lower layer.
		// Entry by entry: the upper directory keeps its own root's mode.
		entries, err := os.ReadDir(rootfs)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if out, err := exec.Command("cp", "-a", filepath.Join(rootfs, e.Name()), upper+"/").CombinedOutput(); err != nil {
				return fmt.Errorf("floor: copy rootfs changes: %v: %s", err, out)
			}
		}
		return nil
	}
	t, cpu, err := d.clientStart(ctx, id, "io.containerd.runc.v2", nil, map[string]string{criuconf.RuncAnnotation: conf}, copyRootfs, nil,
		containerd.WithRestoreImagePath(filepath.Join(unpacked, "criu")), containerd.WithRestoreWorkPath(work))
	if err != nil {
		return 0, 0, fmt.Errorf("floor: %w; CRIU: %s", err, criulog.Errors(filepath.Join(work, "restore.log")))
	}
	return t, cpu, nil
}

// snapbootByClient restores the checkpoint with snapboot's shim, started
// exactly as the floor is (same client, same spec, same wait for the first
// 200), so that the two differ only in the runtime. A nodeConfig other
// than "" is the node configuration the shim uses; cached is what the
// shim's restore line must say of the cache (cached=true or false), so
// that a start is never counted under the wrong cache.
func (d *demo) snapbootByClient(ctx context.Context, kind, ref, nodeConfig string, cached bool) (time.Duration, float64, error) {
	id := d.newID(kind)
	var opts any
	if nodeConfig != "" {
		opts = &runtimeoptions.Options{ConfigPath: nodeConfig}
	}
	// The container stays until its restore has filled the cache: the
	// shim of a container removed at once has containerd's shutdown
	// timeout (3 s) to end the fill, and a slow disk can take longer.
	filled := func(ctx context.Context) error { return d.waitCached(ctx, ref) }
	t, cpu, err := d.clientStart(ctx, id, "io.containerd.snapboot.v1", opts, map[string]string{"snapboot.dev/checkpoint": ref}, nil, filled)
	if err != nil {
		return 0, 0, err
	}
	if _, err := d.cacheRestoreTimings(id, cached); err != nil {
		return 0, 0, err
	}
	time.Sleep(time.Second) // the removed container's shim exits before what comes next
	return t, cpu, nil
}

// clientStart creates and starts the app's container through the containerd
// client with the spec `ctr run --net-host --env ...` gives the donor, and
// returns the time to its first 200. The time spent in between (a function
// run after the container is created and before its task is) is not
// counted, nor is after's (run after the first 200, if not nil). The
// container is removed before it returns.
func (d *demo) clientStart(ctx context.Context, id, runtime string, runtimeOpts any, annotations map[string]string,
	between func(context.Context, *containerd.Client) error, after func(context.Context) error, taskOpts ...containerd.NewTaskOpts) (_ time.Duration, cpu float64, _ error) {
	client, err := containerd.New(d.s.containerd)
	if err != nil {
		return 0, 0, err
	}
	defer client.Close()
	ctx = namespaces.WithNamespace(ctx, d.s.namespace)
	img, err := client.GetImage(ctx, d.image)
	if err != nil {
		return 0, 0, err
	}
	syscall.Sync() // as before every measured start (see runContainer)
	cpu0 := cpuBusy()
	began := time.Now()
	c, err := client.NewContainer(ctx, id,
		containerd.WithRuntime(runtime, runtimeOpts),
		containerd.WithNewSnapshot(id, img),
		containerd.WithNewSpec(oci.WithImageConfig(img),
			oci.WithHostNamespace(specs.NetworkNamespace), oci.WithHostHostsFile, oci.WithHostResolvconf,
			oci.WithEnv([]string{"DATABASE_URL=" + d.s.databaseURL(), fmt.Sprintf("PORT=%d", d.o.port)}),
			oci.WithAnnotations(annotations)))
	if err != nil {
		return 0, 0, err
	}
	defer d.s.removeContainer(context.WithoutCancel(ctx), id)
	created := time.Since(began)
	cpu = cpuBusy() - cpu0
	if between != nil {
		if err := between(ctx, client); err != nil {
			return 0, 0, err
		}
	}
	logPath := filepath.Join(d.s.dir, "logs", id+".log")
	if between != nil {
		syscall.Sync() // what between wrote is not flushed in the timed start
	}
	cpu0 = cpuBusy()
	began = time.Now()
	task, err := c.NewTask(ctx, cio.LogFile(logPath), taskOpts...)
	if err != nil {
		return 0, 0, fmt.Errorf("create: %w", err)
	}
	tasked := time.Since(began)
	if err := task.Start(ctx); err != nil {
		return 0, 0, fmt.Errorf("start: %w", err)
	}
	started := time.Since(began)
	if _, err := waitHTTP(ctx, d.url, 5*time.Minute); err != nil {
		return 0, 0, err
	}
	total := created + time.Since(began)
	cpu += cpuBusy() - cpu0
	say("%s (%s): container %.3fs, task create %.3fs, task start %.3fs, first 200 after %.3fs; total %.3fs, %.2f CPU-seconds busy on this machine",
		id, runtime, created.Seconds(), tasked.Seconds(), (started - tasked).Seconds(), (total - created - started).Seconds(), total.Seconds(), cpu)
	if after != nil {
		if err := after(ctx); err != nil {
			return 0, 0, err
		}
	}
	return total, cpu, nil
}

// cpuBusy is the CPU time all processes on this machine have used so far,
// in seconds (/proc/stat; 0 if it can't be read).
func cpuBusy() float64 {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy float64
	for i, v := range f[1:9] {
		// idle, iowait, and steal: time the VM's host gave to others.
		if i == 3 || i == 4 || i == 7 {
			continue
		}
		n, _ := strconv.ParseFloat(v, 64)
		busy += n
	}
	return busy / 100 // USER_HZ
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// Package checkpoint turns a running containerd task into a snapboot
// checkpoint artifact: it dumps the task with CRIU through containerd
// (tcp-established and file locks on), takes the container's rootfs changes
// while the task is frozen, records the metadata, packs the layers and
// pushes them to a registry.
package checkpoint

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/containerd/containerd/api/services/tasks/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/pkg/rootfs"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	gorunc "github.com/containerd/go-runc"
	"github.com/containerd/typeurl/v2"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/snapboot/snapboot/compat"
	"github.com/snapboot/snapboot/criuconf"
	"github.com/snapboot/snapboot/criulog"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/pack"
	"github.com/snapboot/snapboot/restore"
)

// Options of one checkpoint.
type Options struct {
	// Exit stops the donor after the dump; by default it keeps running.
	Exit bool
	// Attach makes the artifact an OCI 1.1 referrer of the container's image.
	Attach bool
	// WorkDir is a private scratch directory for the images (they hold the
	// donor's memory); it is removed afterwards.
	WorkDir string
	// KeepDir is where the work directory goes when the dump ended the
	// donor (Exit) and a later step failed: it is all that is left of
	// the donor. "" leaves it in WorkDir.
	KeepDir string
	// Remote says how to reach the registry.
	Remote oci.RemoteOptions
	// Compression is how hard the layers are packed; "" is
	// pack.DefaultLevel.
	Compression pack.Level
	// Progress, when set, receives human-readable progress lines and
	// wraps uploads for a progress display.
	Progress Progress
}

// Progress reports what a checkpoint is doing.
type Progress interface {
	Stage(format string, args ...any)
	Upload(name string, size int64, r io.Reader) io.Reader
}

// Result is what a checkpoint produced.
type Result struct {
	Ref        string
	Descriptor ocispec.Descriptor
	CRIU       pack.Sizes
	Rootfs     pack.Sizes
	Dump       time.Duration
	Pack       time.Duration
	Push       time.Duration
}

// Raw is the sum of the layers before compression.
func (r *Result) Raw() int64 { return r.CRIU.Raw + r.Rootfs.Raw }

// Compressed is the sum of the layers as pushed.
func (r *Result) Compressed() int64 { return r.CRIU.Compressed + r.Rootfs.Compressed }

// ErrNotRunning is returned for a container whose task is not running.
var ErrNotRunning = errors.New("container is not running")

// Run checkpoints container id into ref.
func Run(ctx context.Context, client *containerd.Client, id, refStr string, opts Options) (_ *Result, retErr error) {
	ref, err := oci.ParseReference(refStr)
	if err != nil {
		return nil, err
	}
	if oci.Pinned(ref) {
		return nil, fmt.Errorf("checkpoint reference %s: push to a tag, not a digest", refStr)
	}
	level, err := pack.ParseLevel(string(opts.Compression))
	if err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", id, errdefs.ErrInvalidArgument.WithMessage(err.Error()))
	}
	opts.Compression = level
	progress := opts.Progress
	if progress == nil {
		progress = quiet{}
	}
	container, err := client.LoadContainer(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	task, err := container.Task(ctx, nil)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return nil, fmt.Errorf("container %s has no task: %w", id, ErrNotRunning)
		}
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	status, err := task.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", id, err)
	}
	if status.Status != containerd.Running && status.Status != containerd.Paused {
		return nil, fmt.Errorf("container %s is %s: %w", id, status.Status, ErrNotRunning)
	}
	info, err := container.Info(ctx)
	if err != nil {
		return nil, err
	}
	node, err := compat.Detect(compat.CRIUVersionRPC(""))
	if err != nil {
		return nil, fmt.Errorf("describe this node: %w", err)
	}

	// The container's image, for the record and for --attach: known
	// before the dump, which --exit makes the donor's end.
	var image *ocispec.Descriptor
	if info.Image != "" {
		if img, err := client.GetImage(ctx, info.Image); err == nil {
			t := img.Target()
			image = &ocispec.Descriptor{MediaType: t.MediaType, Digest: t.Digest, Size: t.Size}
		}
	}
	if opts.Attach && image == nil {
		return nil, fmt.Errorf("--attach: container %s has no image to attach the checkpoint to", id)
	}
	dumpOpts := dumpOptions(ctx, container, info.Runtime.Name)
	if !opts.Exit && slices.Contains(dumpOpts, "link-remap") {
		// CRIU removes the links it made for deleted open files when the
		// donor runs on, before the rootfs changes are read: no restore
		// would find them.
		return nil, fmt.Errorf("checkpoint %s: %w", id, errdefs.ErrInvalidArgument.WithMessage(
			"the container's CRIU options include link-remap, which works only with --exit (CRIU removes its links when the donor runs on, and the checkpoint could never restore)"))
	}
	repo, err := oci.NewRepository(ref, opts.Remote)
	if err != nil {
		return nil, err
	}
	if opts.Exit {
		// The dump ends the donor: a push that would fail must fail
		// before it (no credentials, no access, no registry).
		if err := oci.CheckPush(ctx, repo); err != nil {
			return nil, fmt.Errorf("push %s: %w (checked before the dump, which --exit makes the donor's end)", refStr, err)
		}
	}

	work, err := os.MkdirTemp(opts.WorkDir, "checkpoint-"+id+"-")
	if err != nil {
		return nil, err
	}
	// The images hold the donor's memory: removed, unless the dump ended
	// the donor (--exit) and a later step failed. They are then all that
	// is left of it.
	donorExited := false
	defer func() {
		if donorExited && retErr != nil {
			kept, err := keep(work, opts.KeepDir)
			if err != nil {
				retErr = fmt.Errorf("%w; the donor exited with the dump, and its images could not be kept: %w", retErr, err)
				return
			}
			retErr = fmt.Errorf("%w; the donor exited with the dump: what it left (its CRIU images, and what was written of its rootfs changes) is kept in %s (it holds its memory: remove the directory when done)", retErr, kept)
			return
		}
		os.RemoveAll(work)
	}()
	if err := os.Chmod(work, 0o700); err != nil {
		return nil, err
	}
	imagesDir, criuWork := filepath.Join(work, "images"), filepath.Join(work, "criu-work")
	for _, d := range []string{imagesDir, criuWork} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	res := &Result{Ref: refStr}

	// Freeze the task for the dump and the rootfs diff, so that both
	// describe the same moment (CRIU checks open files' sizes on restore).
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		return nil, err
	}
	defer done(context.WithoutCancel(ctx))
	began := time.Now()
	progress.Stage("dumping %s (CRIU through containerd)", id)
	resumed := status.Status != containerd.Running // not ours to resume
	if !resumed {
		// On every failure while the donor lives (a failed dump too,
		// after which CRIU leaves it frozen, and a pause cut short by
		// Ctrl-C, which the shim completes all the same), it runs on.
		defer func() {
			if resumed || donorExited {
				return
			}
			if err := resumeDonor(context.WithoutCancel(ctx), task); err != nil {
				retErr = fmt.Errorf("%w; the donor stays PAUSED, resuming it failed (ctr task resume %s): %w", retErr, id, err)
			}
		}()
		if err := task.Pause(ctx); err != nil {
			return nil, fmt.Errorf("pause %s: %w", id, err)
		}
	}
	// The task service directly, not the client's Task.Checkpoint: for a
	// runtime other than runc.v2, the client also builds a checkpoint image
	// of the rw layer in the content store, which snapboot does not use.
	copts, err := typeurl.MarshalAnyToProto(&options.CheckpointOptions{
		Exit:      opts.Exit,
		OpenTcp:   true,
		FileLocks: true,
		ImagePath: imagesDir,
		WorkPath:  criuWork,
	})
	if err != nil {
		return nil, err
	}
	_, err = client.TaskService().Checkpoint(ctx, &tasks.CheckpointTaskRequest{ContainerID: id, Options: copts})
	err = errgrpc.ToNative(err)
	if err != nil && opts.Exit && !donorAlive(task) {
		// The request failed (Ctrl-C, say) but the shim's dump went on and
		// ended the donor: its images are all that is left of it.
		donorExited = true
	}
	if err != nil {
		if detail := criulog.Errors(filepath.Join(criuWork, "dump.log")); detail != "" {
			return nil, fmt.Errorf("dump %s: %w; CRIU: %s", id, err, detail)
		}
		return nil, fmt.Errorf("dump %s: %w", id, err)
	}
	donorExited = opts.Exit
	rootfsTar := filepath.Join(work, "rootfs.tar.zst")
	if res.Rootfs, err = rootfsChanges(ctx, client, info.Snapshotter, info.SnapshotKey, rootfsTar, opts.Compression); err != nil {
		return nil, err
	}
	if !resumed && !donorExited {
		if err := resumeDonor(context.WithoutCancel(ctx), task); err != nil {
			return nil, fmt.Errorf("resume %s after the dump: %w", id, err)
		}
		resumed = true
	}
	res.Dump = time.Since(began)

	began = time.Now()
	if level == pack.LZ4 {
		progress.Stage("packing CRIU images (LZ4)")
	} else {
		progress.Stage("packing CRIU images (zstd, %s)", level)
	}
	criuTar := filepath.Join(work, "criu.tar")
	f, err := os.OpenFile(criuTar, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	res.CRIU, err = pack.TarDir(ctx, imagesDir, f, opts.Compression)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	res.Pack = time.Since(began)

	meta := &oci.Metadata{
		FormatVersion: oci.FormatVersion,
		Created:       time.Now().UTC(),
		CRIU:          oci.Version{Version: node.CRIUVersionString()},
		Runc:          oci.Version{Version: runcVersion(ctx)},
		Host:          node.Host(),
		Source:        oci.Source{Image: info.Image, Container: id},
		DumpOptions:   dumpOpts,
	}
	if image != nil {
		meta.Source.ImageDigest = image.Digest.String()
	}
	var subject *ocispec.Descriptor
	if opts.Attach {
		subject = image
	}

	began = time.Now()
	progress.Stage("pushing to %s", refStr)
	layers := []oci.LayerFile{{MediaType: level.CRIUImagesMediaType(), Path: criuTar}}
	if res.CRIU.Stream != nil {
		layers[0].Annotations = res.CRIU.Stream.Annotations()
	}
	if res.Rootfs.Raw > 0 {
		layers = append(layers, oci.LayerFile{MediaType: oci.MediaTypeRootfsDiff, Path: rootfsTar})
	}
	res.Descriptor, err = oci.Push(ctx, repo, ref.Reference, meta, layers, oci.PushOptions{Subject: subject, Progress: progress.Upload})
	if err != nil {
		return nil, fmt.Errorf("push %s: %w", refStr, err)
	}
	res.Push = time.Since(began)
	return res, nil
}

// rootfsChanges writes the container's rootfs changes (containerd's diff of
// its active snapshot, whiteouts included) zstd-compressed to path.
func rootfsChanges(ctx context.Context, client *containerd.Client, snapshotter, key, path string, level pack.Level) (pack.Sizes, error) {
	if key == "" {
		return pack.Sizes{}, nil
	}
	sn := client.SnapshotService(snapshotter)
	desc, err := rootfs.CreateDiff(ctx, key, sn, client.DiffService(), diff.WithMediaType(ocispec.MediaTypeImageLayer))
	if err != nil {
		return pack.Sizes{}, fmt.Errorf("rootfs changes of snapshot %s: %w", key, err)
	}
	ra, err := client.ContentStore().ReaderAt(ctx, desc)
	if err != nil {
		return pack.Sizes{}, err
	}
	defer ra.Close()
	defer client.ContentStore().Delete(context.WithoutCancel(ctx), desc.Digest)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return pack.Sizes{}, err
	}
	sz, err := pack.Zstd(ctx, content.NewReader(ra), f, level)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return sz, err
}

// resumeDonor resumes the donor task, trying again for a few seconds (a
// containerd restarting, say), unless it is running or gone.
func resumeDonor(ctx context.Context, task containerd.Task) error {
	var err error
	for i := 0; i < 5; i++ {
		if err = task.Resume(ctx); err == nil {
			return nil
		}
		if st, serr := task.Status(ctx); serr == nil && st.Status != containerd.Paused && st.Status != containerd.Pausing {
			if st.Status == containerd.Running {
				return nil
			}
			return fmt.Errorf("%w (the task is %s)", err, st.Status)
		}
		time.Sleep(time.Duration(i+1) * 200 * time.Millisecond)
	}
	return err
}

// donorAlive reports whether the donor's task still runs or is paused.
func donorAlive(task containerd.Task) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := task.Status(ctx)
	return err != nil || st.Status == containerd.Running || st.Status == containerd.Paused || st.Status == containerd.Pausing
}

// keep moves the work directory into keepDir (if set), where no cache
// cleaning removes it, and returns where it is.
func keep(work, keepDir string) (string, error) {
	if keepDir == "" {
		return work, nil
	}
	if err := os.MkdirAll(keepDir, 0o700); err != nil {
		return "", err
	}
	dst := filepath.Join(keepDir, filepath.Base(work))
	if err := os.Rename(work, dst); err != nil {
		return "", err
	}
	return dst, nil
}

// dumpOptions are the CRIU options of the dump, for the record: the
// snapboot shim armed its containers with criuconf's dump config (plus the
// allowlisted options of the container's annotation); through any other
// runc-based runtime, only the options passed through containerd apply.
func dumpOptions(ctx context.Context, c containerd.Container, runtime string) []string {
	if runtime != restore.RuntimeName {
		return []string{"tcp-established", "file-locks"}
	}
	var user []criuconf.Option
	if spec, err := c.Spec(ctx); err == nil {
		user, _ = criuconf.ParseUserOptions(spec.Annotations[restore.AnnotationCRIUOptions])
	}
	return criuconf.Lines(criuconf.DumpOptions(user))
}

func runcVersion(ctx context.Context) string {
	v, err := (&gorunc.Runc{}).Version(ctx)
	if err != nil {
		return ""
	}
	return v.Runc
}

type quiet struct{}

func (quiet) Stage(string, ...any)                            {}
func (quiet) Upload(_ string, _ int64, r io.Reader) io.Reader { return r }

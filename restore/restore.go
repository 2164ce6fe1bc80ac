package restore

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/containerd/api/types"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/compat"
	"github.com/snapboot/snapboot/confine"
	"github.com/snapboot/snapboot/cowpages"
	"github.com/snapboot/snapboot/criuconf"
	"github.com/snapboot/snapboot/metrics"
	"github.com/snapboot/snapboot/nodeconfig"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/restorehook"
	"github.com/snapboot/snapboot/unpack"
)

// ErrNotRequested means the spec names no checkpoint: a plain cold start.
var ErrNotRequested = errors.New("no checkpoint requested")

// ErrDenied is wrapped when the node's policy refuses a restore.
var ErrDenied = errors.New("denied by node policy")

// Error is why a requested restore can't happen. The container cold-starts.
type Error struct {
	Ref string // the annotation's value
	Err error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// RefOf is the checkpoint reference an error is about, or "".
func RefOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Ref
	}
	return ""
}

// Request is a container about to be created.
type Request struct {
	ContainerID string
	Bundle      string
	Rootfs      []*types.Mount
	// Runc is the runc binary the runc task service runs ("" for runc in
	// PATH).
	Runc string
}

// Plan is a prepared restore: what to hand to runc's restore path.
type Plan struct {
	Ref    string
	Digest digest.Digest // manifest digest
	// ImagesDir is the directory of CRIU images (CreateTaskRequest.Checkpoint).
	ImagesDir string
	// Rootfs are the container's rootfs mounts with the checkpoint's rootfs
	// changes stacked on them.
	Rootfs      []*types.Mount
	Cached      bool  // nothing was downloaded or unpacked
	PulledBytes int64 // bytes downloaded from the registry
	// Spec is the container's spec, as the bundle had it at Create.
	Spec *specs.Spec
	// NarrowedTasks counts tasks whose capabilities were cut to the spec's.
	NarrowedTasks int
	Timings       Timings
	// PageByPage counts the page images CRIU reads a page at a time,
	// which it reads through the page cache (streamed) or from their
	// files (from the cache), not with direct I/O through FUSE.
	PageByPage int
	// StreamStalls and SpilledBytes are a streamed restore's: how many
	// times the download went on past CRIU because it had read nothing for
	// a second, and how much of the page images went to disk then.
	StreamStalls int
	SpilledBytes int64

	unpacked    *cache.Unpacked
	scratch     func()    // removes the per-container files, needed until runc has restored
	mountsCache bool      // the rootfs mounts a directory of the cache
	stream      *stream   // the download still going on, for a streamed restore
	served      *served   // the cached page images' mount, for a restore from the cache
	detached    *detached // a failed download's directory the rootfs still stacks on
	fill        *cached   // a streamed restore's cache fill, once the restore is done
}

// FinishStream ends a streamed restore's download once runc's restore has
// returned. If restored is true, the checkpoint then goes into the cache in
// the background; otherwise the download is stopped and nothing is kept. It
// returns why the download failed, if it did (a failed download fails the
// restore: CRIU gets EIO for what did not arrive). For a restore from the
// cache it unmounts the page images servePages served.
func (p *Plan) FinishStream(ctx context.Context, restored bool) error {
	if p == nil {
		return nil
	}
	p.served.close()
	p.served = nil
	if p.stream == nil {
		return nil
	}
	s := p.stream
	p.stream = nil
	p.StreamStalls, p.SpilledBytes = s.flowStats()
	p.fill = newCached()
	det, err := s.finish(ctx, !restored, p.mountsCache, p.fill.set)
	p.detached = det
	if err == nil {
		p.PulledBytes = s.stats.PulledBytes
		p.Timings.Streamed = s.ended.Sub(s.began) - p.Timings.Pull
	}
	return err
}

// CacheFilled is closed when a streamed restore's background cache fill
// has ended; it is nil when there is none.
func (p *Plan) CacheFilled() <-chan struct{} {
	if p == nil || p.fill == nil {
		return nil
	}
	return p.fill.done
}

// NeedsCache reports whether the restored container keeps using the cache
// after the restore (its rootfs stacks the checkpoint's rootfs changes), so
// the plan must be held until the container is deleted. Otherwise it can be
// released as soon as runc has restored, and the cache may evict it.
func (p *Plan) NeedsCache() bool { return p.mountsCache }

// RestoreDone removes what only runc's restore needed. Call it once Start
// has returned.
func (p *Plan) RestoreDone() {
	if p != nil && p.scratch != nil {
		p.scratch()
		p.scratch = nil
	}
}

// Release ends the plan's hold on the unpacked checkpoint in the cache.
// Call it when the container is deleted, or when the plan is abandoned (a
// download still going on is stopped).
func (p *Plan) Release() {
	if p != nil {
		p.FinishStream(context.Background(), false)
		p.RestoreDone()
		p.unpacked.Release()
		p.fill.release()
		p.detached.remove()
		p.detached = nil
	}
}

// Timings of one restore's stages.
type Timings struct {
	Resolve time.Duration // reference, manifest and metadata, pre-flight
	Pull    time.Duration // layer downloads, unpacked while they stream in
	Unpack  time.Duration // unpacking of layers that were in the cache already
	Restore time.Duration // runc restore (filled in by the shim)
	// Streamed is how long the download went on after Pull, while runc
	// restored (a streamed restore); Total leaves it out.
	Streamed time.Duration
}

// Total is the sum of the stages.
func (t Timings) Total() time.Duration { return t.Resolve + t.Pull + t.Unpack + t.Restore }

// Source is where checkpoints come from: a registry repository
// (*remote.Repository), or in tests an OCI layout or memory store.
type Source interface {
	Resolve(ctx context.Context, reference string) (ocispec.Descriptor, error)
	Fetch(ctx context.Context, target ocispec.Descriptor) (io.ReadCloser, error)
}

// Restorer prepares restores according to the node configuration.
type Restorer struct {
	cfg    *nodeconfig.Config
	cfgErr error
	// ConfigPath is the file cfg came from, for messages.
	ConfigPath string

	// NewSource opens the repository of a reference.
	NewSource func(ref registry.Reference) (Source, error)
	// DetectNode describes this node; it is called once.
	DetectNode func() (*compat.Node, error)
	// SeccompFilter returns the filter runc (the binary runc) installs on
	// this node for a seccomp profile.
	SeccompFilter func(ctx context.Context, profile *specs.LinuxSeccomp, runc string) ([]byte, error)
	// RunCommand runs a command to its end; in a shim, through containerd's
	// reaper. nil: exec.Cmd.Run.
	RunCommand func(*exec.Cmd) error
	// NamespaceHook, if set, is added to the createRuntime hooks of a
	// restore that needs it (restorehook.Needed): runc's restore leaves a
	// new network namespace's lo down and writes none of the spec's
	// sysctls (see package restorehook).
	NamespaceHook *specs.Hook

	nodeOnce sync.Once
	node     *compat.Node
	nodeErr  error
}

// New returns a Restorer for the node configuration cfg. cfgErr is the error
// loading it, if any: then every restore is refused with that reason.
func New(cfg *nodeconfig.Config, cfgErr error) *Restorer {
	if cfg == nil {
		cfg = nodeconfig.Default()
	}
	r := &Restorer{cfg: cfg, cfgErr: cfgErr, ConfigPath: nodeconfig.Path()}
	r.NewSource = func(ref registry.Reference) (Source, error) {
		return oci.NewRepository(ref, oci.RemoteOptions{
			PlainHTTP:    cfg.Insecure(ref.Registry),
			DockerConfig: cfg.DockerConfig,
			UserAgent:    "snapboot-shim",
		})
	}
	r.DetectNode = func() (*compat.Node, error) { return compat.Detect(compat.CRIUVersionRPC("")) }
	r.SeccompFilter = r.seccompFilter
	return r
}

func (r *Restorer) nodeInfo() (*compat.Node, error) {
	r.nodeOnce.Do(func() { r.node, r.nodeErr = r.DetectNode() })
	return r.node, r.nodeErr
}

// Prepare reads the request from the bundle's spec and prepares the restore.
// It returns ErrNotRequested when the spec names no checkpoint, and an
// *Error for every reason the restore can't happen.
func (r *Restorer) Prepare(ctx context.Context, req Request) (*Plan, error) {
	// The spec is read once: its annotations say what to do, the rest is
	// what the checkpoint must fit (credentials, UTS namespace, host name).
	spec, err := readSpec(req.Bundle)
	if err != nil {
		return nil, &Error{Err: err}
	}
	ann := spec.Annotations
	refStr, ok := ann[AnnotationCheckpoint]
	if !ok || isPodSandbox(ann) {
		// A pod's sandbox (pause) container carries the pod's annotations
		// too (containerd's pod_annotations); it is never restored.
		return nil, ErrNotRequested
	}
	if why := notForThisStart(ann); why != "" {
		log.G(ctx).WithFields(log.Fields{"event": "snapboot.skip", "id": req.ContainerID, "ref": refStr, "reason": why}).Info("snapboot: not restoring this container; it starts cold")
		return nil, ErrNotRequested
	}
	if err := r.namespacePolicy(ann, refStr); err != nil {
		return nil, &Error{Ref: refStr, Err: err}
	}
	plan, err := r.prepare(ctx, req, spec, refStr, ann[AnnotationCRIUOptions])
	if err != nil {
		return nil, &Error{Ref: refStr, Err: err}
	}
	return plan, nil
}

// namespacePolicy says why the node's configuration does not let the pod's
// Kubernetes namespace restore from refStr (its namespaces table), or nil
// when it does. Containers that are not a pod's are bound by policy alone.
func (r *Restorer) namespacePolicy(ann map[string]string, refStr string) error {
	ns, ok := ann[criSandboxNamespace]
	if !ok || r.cfgErr != nil {
		return nil // the configuration's error is reported by fetch
	}
	ref, err := oci.ParseReference(refStr)
	if err != nil {
		return err
	}
	if !r.cfg.AllowedInNamespace(ns, ref.Registry, ref.Repository) {
		return fmt.Errorf("%w: pods of namespace %q may not restore from %s/%s (namespaces in %s)", ErrDenied, ns, ref.Registry, ref.Repository, r.ConfigPath)
	}
	return nil
}

func (r *Restorer) prepare(ctx context.Context, req Request, spec *specs.Spec, refStr, criuOptions string) (_ *Plan, retErr error) {
	userOpts, err := criuconf.ParseUserOptions(criuOptions)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %w", AnnotationCRIUOptions, err)
	}
	hook := restorehook.Needed(spec)
	if hook {
		if r.NamespaceHook == nil {
			return nil, fmt.Errorf("%w: the spec needs snapboot's restore hook (lo, sysctls, I/O priority) and the shim has none", confine.ErrRefused)
		}
		if err := restorehook.Check(spec); err != nil {
			return nil, fmt.Errorf("%w: %w", confine.ErrRefused, err)
		}
	}
	seccompFilter := r.startSeccompFilter(ctx, spec, req.Runc)
	f, err := r.fetch(ctx, refStr, true)
	if err != nil {
		return nil, err
	}
	plan := &Plan{Ref: refStr, Digest: f.Digest, Cached: f.Cached, PulledBytes: f.PulledBytes,
		Timings: f.Timings, unpacked: f.unpacked, Spec: spec, stream: f.stream}
	defer func() {
		if retErr != nil {
			plan.Release()
		}
	}()
	plan.ImagesDir = filepath.Join(f.Dir, "criu")

	scratch, removeScratch, err := f.cache.ScratchDir("restore-" + req.ContainerID)
	if err != nil {
		return nil, err
	}
	plan.scratch = removeScratch
	// The page images CRIU reads a page at a time: not one request to the
	// FUSE server a page (package cowpages).
	var pageByPage []string
	if plan.stream != nil || f.Checkpoint.Stream != nil && len(f.Checkpoint.Stream.Tail) > 0 {
		if pageByPage, err = cowpages.PageByPage(plan.ImagesDir); err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: cannot tell which page images CRIU reads a page at a time; it reads all of them with direct I/O")
			pageByPage = nil
		}
		plan.PageByPage = len(pageByPage)
	}
	switch {
	case plan.stream != nil:
		if sfs, err := plan.stream.mount.wait(); err == nil {
			// Only the page images the checkpoint lists: the pagemaps'
			// names for them are the images' own, untrusted.
			var listed []string
			for _, t := range f.Checkpoint.Stream.Tail {
				if slices.Contains(pageByPage, t.Name) {
					listed = append(listed, t.Name)
				}
			}
			if err := sfs.ReadThroughPageCache(listed); err != nil {
				log.G(ctx).WithError(err).Warn("snapboot: page images read a page at a time stay on direct I/O")
			}
		}
		linked := filepath.Join(scratch, "images")
		if err := linkImages(plan.ImagesDir, linked, plan.stream.mountpoint, f.Checkpoint.Stream.Tail, nil); err != nil {
			return nil, fmt.Errorf("images directory for a streamed restore: %w", err)
		}
		plan.ImagesDir = linked
	case f.Checkpoint.Stream != nil && len(f.Checkpoint.Stream.Tail) > 0:
		// From the cache: the page images through a streamfs mount too
		// (servePages says why), or from the files if it cannot mount;
		// those CRIU reads a page at a time from their files, in the
		// page cache if they were read lately.
		sv, err := servePages(f.cache, plan.ImagesDir, f.Checkpoint.Stream.Tail)
		if err == nil {
			linked := filepath.Join(scratch, "images")
			fromFiles := map[string]bool{}
			for _, name := range pageByPage {
				fromFiles[name] = true
			}
			if err = linkImages(plan.ImagesDir, linked, sv.mountpoint, f.Checkpoint.Stream.Tail, fromFiles); err == nil {
				plan.served = sv
				plan.ImagesDir = linked
				break
			}
			sv.close()
			os.RemoveAll(linked)
		}
		if errors.Is(err, oci.ErrInvalidArtifact) {
			return nil, fmt.Errorf("serving the cached page images: %w", err)
		}
		// CRIU reads the files, as it can; the mount is faster only.
		log.G(ctx).WithError(err).Warn("snapboot: cannot serve the cached page images through FUSE; CRIU reads them from their files")
	}
	// The caller's spec wins: CRIU would restore the donor's credentials.
	filter, err := seccompFilter()
	if err != nil {
		return nil, err
	}
	plan.Rootfs = req.Rootfs
	if rootfs := filepath.Join(f.Dir, "rootfs"); f.Checkpoint.Rootfs != nil && !isEmptyDir(rootfs) {
		// A streamed restore mounts the directory before it moves into
		// place in the cache; the mount follows it.
		if plan.Rootfs, err = stackRootfsChanges(req.Rootfs, rootfs); err != nil {
			return nil, err
		}
		plan.mountsCache = true
	}
	opts := criuconf.RestoreOptions(userOpts)
	tcpRepair := slices.ContainsFunc(opts, func(o criuconf.Option) bool { return o.Name == "tcp-established" })
	confined, err := confine.Apply(plan.ImagesDir, scratch, spec, filter, rootfsLayers(plan.Rootfs), tcpRepair)
	if err != nil {
		return nil, err
	}
	if plan.mountsCache {
		// Stacked on the image's layers: held to what the user could change.
		if err := confine.CheckRootfsChanges(filepath.Join(f.Dir, "rootfs"), rootfsLayers(req.Rootfs), spec); err != nil {
			return nil, err
		}
	}
	plan.ImagesDir = confined.ImagesDir
	plan.NarrowedTasks = confined.Narrowed
	if _, ok := restorehook.SpecNamespace(spec, specs.UserNamespace); ok {
		if err := shareWithUserNamespace(plan.ImagesDir, scratch); err != nil {
			return nil, err
		}
	}

	for _, e := range confined.External {
		opts = append(opts, criuconf.Option{Name: "external", Value: e})
	}
	confPath, err := criuconf.WriteFile(req.Bundle, "restore", opts)
	if err != nil {
		return nil, err
	}
	if err := editSpec(req.Bundle, func(doc map[string]json.RawMessage) (bool, error) {
		changed, err := annotate(doc, criuconf.RuncAnnotation, confPath)
		if err != nil || !hook {
			return changed, err
		}
		added, err := addCreateRuntimeHook(doc, *r.NamespaceHook)
		return changed || added, err
	}); err != nil {
		return nil, err
	}
	return plan, nil
}

// fallbackReserve is the time a pull leaves, before the caller's deadline,
// for the cold start that follows it if it fails: the kubelet gives a
// container's start 2 minutes (its runtime request timeout), the pull
// 5 by default.
const fallbackReserve = 15 * time.Second

// pullContext bounds a pull by timeout and ends it early enough for a cold
// start to fit in the caller's deadline: by fallbackReserve, or half the
// time left when less than twice that is left.
func pullContext(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	deadline := time.Now().Add(timeout)
	if before, ok := fallbackDeadline(ctx); ok {
		deadline = minTime(deadline, before)
	}
	return context.WithDeadline(ctx, deadline)
}

// RestoreContext bounds runc's restore at Start the same way: it ends
// early enough for the cold start that follows a failed restore to fit in
// the caller's deadline. Without a caller's deadline it is ctx.
func RestoreContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if before, ok := fallbackDeadline(ctx); ok {
		return context.WithDeadline(ctx, before)
	}
	return context.WithCancel(ctx)
}

// fallbackDeadline is when a pull or a restore must end for a cold start
// to fit in ctx's deadline: fallbackReserve before it, or halfway when
// less than twice that is left.
func fallbackDeadline(ctx context.Context) (time.Time, bool) {
	callers, ok := ctx.Deadline()
	if !ok {
		return time.Time{}, false
	}
	reserve := min(fallbackReserve, time.Until(callers)/2)
	return callers.Add(-reserve), true
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// Fetched is a checkpoint in the node cache, unpacked and held in use until
// Release.
type Fetched struct {
	Ref         string
	Digest      digest.Digest // manifest digest
	Checkpoint  *oci.Checkpoint
	Metadata    *oci.Metadata
	Dir         string // the unpacked checkpoint: criu/ and rootfs/
	Cached      bool   // nothing was downloaded or unpacked
	PulledBytes int64
	Timings     Timings

	unpacked *cache.Unpacked // nil while stream is on
	cache    *cache.Cache
	stream   *stream
}

// Release ends the hold on the unpacked checkpoint.
func (f *Fetched) Release() { f.unpacked.Release() }

// Fetch applies the node's policy to a reference, resolves it, runs the
// pre-flight on its manifest and metadata, and makes sure the checkpoint is
// downloaded and unpacked in the node cache. The shim restores from what it
// returns; `snapboot pull` fills the cache with it.
func (r *Restorer) Fetch(ctx context.Context, refStr string) (*Fetched, error) {
	return r.fetch(ctx, refStr, false)
}

// fetch is Fetch; with streaming set, it may return before the page images
// are in (see stream), with Fetched.stream set.
func (r *Restorer) fetch(ctx context.Context, refStr string, streaming bool) (*Fetched, error) {
	began := time.Now()
	if r.cfgErr != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrConfig, r.ConfigPath, r.cfgErr)
	}
	ref, err := oci.ParseReference(refStr)
	if err != nil {
		return nil, err
	}
	if err := r.policy(ref); err != nil {
		return nil, err
	}

	ctx, cancel := pullContext(ctx, time.Duration(r.cfg.Pull.Timeout))
	defer cancel()
	c, err := cache.Open(r.cfg.Cache.Root)
	if err != nil {
		return nil, err
	}
	a, err := r.open(ctx, c, ref)
	if err != nil {
		return nil, err
	}
	defer a.release() // the unpacked checkpoint holds its own
	node, err := r.nodeInfo()
	if err != nil {
		return nil, fmt.Errorf("describe this node: %w", err)
	}
	if err := compat.Check(a.meta, node); err != nil {
		return nil, err
	}
	if max := int64(r.cfg.Pull.MaxArtifactSize); a.ck.Size() > max {
		return nil, fmt.Errorf("%w: checkpoint layers are %d bytes, the node allows %d (pull.max_artifact_size)", ErrDenied, a.ck.Size(), max)
	}
	f := &Fetched{Ref: refStr, Digest: a.desc.Digest, Checkpoint: a.ck, Metadata: a.meta, Cached: true, cache: a.cache}
	f.Timings.Resolve = time.Since(began)

	begin := a.cache.BeginUnpack // snapboot pull: fills the cache, or waits for who does
	if streaming {
		begin = a.cache.BeginUnpackOrCopy
	}
	u, filling, err := begin(ctx, a.desc.Digest)
	if err != nil {
		return nil, err
	}
	if filling != nil {
		f.Cached = false
		if filling.Private() {
			log.G(ctx).WithField("digest", a.desc.Digest).Info("snapboot: another restore has been unpacking this checkpoint into the cache for too long; this one downloads a copy of its own, not cached")
		}
		if streaming && a.ck.Stream != nil && r.cfg.Pull.Streaming() {
			s, err := r.startStream(ctx, a, filling, f)
			if err != nil {
				filling.Abort()
				return nil, err
			}
			if s != nil {
				f.stream, f.Dir = s, filling.Dir
				return f, nil
			}
		}
		var st pullStats
		if err := r.pullLayers(ctx, a, filling.Dir, &st, nil); err != nil {
			filling.Abort()
			return nil, err
		}
		if u, err = filling.Commit(); err != nil {
			filling.Abort()
			return nil, err
		}
		f.PulledBytes, f.Timings.Pull, f.Timings.Unpack = st.PulledBytes, st.Pull, st.Unpack
	}
	f.unpacked = u
	f.Dir = u.Dir
	return f, nil
}

// artifact is a resolved checkpoint whose manifest and metadata are read.
type artifact struct {
	cache *cache.Cache
	src   Source
	desc  ocispec.Descriptor // the manifest
	ck    *oci.Checkpoint
	meta  *oci.Metadata
	// release ends the hold that keeps eviction away while it is used.
	release func()
}

func (r *Restorer) open(ctx context.Context, c *cache.Cache, ref registry.Reference) (*artifact, error) {
	// The pre-flight after this describes the node, which runs `criu
	// --version` (about 10 ms): it overlaps the registry's round trips
	// instead of following them.
	go r.nodeInfo()
	src, err := r.NewSource(ref)
	if err != nil {
		return nil, err
	}
	mdesc, err := r.resolve(ctx, c, src, ref)
	if err != nil {
		return nil, err
	}
	// From here on, eviction must leave this checkpoint alone.
	release, err := c.Hold(ctx, mdesc.Digest)
	if err != nil {
		return nil, err
	}
	ck, meta, err := r.readArtifact(ctx, c, src, mdesc)
	if err != nil {
		release()
		return nil, err
	}
	return &artifact{cache: c, src: src, desc: mdesc, ck: ck, meta: meta, release: release}, nil
}

// Inspection is what `snapboot inspect` reports: the artifact, and whether
// this node would restore it.
type Inspection struct {
	Ref        string
	Descriptor ocispec.Descriptor
	Checkpoint *oci.Checkpoint
	Metadata   *oci.Metadata
	Node       *compat.Node
	// Allowed is nil when the node's policy allows restores from the
	// reference, and the reason otherwise.
	Allowed error
	// Compatible is nil when the checkpoint can run on this node.
	Compatible error
	// Unpacked reports whether the checkpoint is ready in the node cache.
	Unpacked bool
	// Namespaces are the Kubernetes namespaces whose pods may restore it,
	// when the node's configuration has a [namespaces] table (sorted; empty
	// when none may); nil without the table.
	Namespaces []string
}

// Inspect reads a checkpoint's manifest and metadata (never its layers) and
// checks it against this node.
func (r *Restorer) Inspect(ctx context.Context, refStr string) (*Inspection, error) {
	if r.cfgErr != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrConfig, r.ConfigPath, r.cfgErr)
	}
	ref, err := oci.ParseReference(refStr)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(r.cfg.Pull.Timeout))
	defer cancel()
	c, err := cache.Open(r.cfg.Cache.Root)
	if err != nil {
		return nil, err
	}
	allowed := r.policy(ref)
	store := c
	if allowed != nil {
		// Shown, but nothing from a source the node does not allow stays
		// in its cache: the manifest and the metadata go to a scratch
		// cache that is removed after.
		dir, err := c.TempDir("inspect")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		if store, err = cache.Open(dir); err != nil {
			return nil, err
		}
	}
	a, err := r.open(ctx, store, ref)
	if err != nil {
		return nil, err
	}
	defer a.release()
	in := &Inspection{Ref: refStr, Descriptor: a.desc, Checkpoint: a.ck, Metadata: a.meta, Allowed: allowed}
	if r.cfg.Namespaces != nil {
		in.Namespaces = []string{}
		for ns := range r.cfg.Namespaces {
			if r.cfg.AllowedInNamespace(ns, ref.Registry, ref.Repository) {
				in.Namespaces = append(in.Namespaces, ns)
			}
		}
		slices.Sort(in.Namespaces)
	}
	in.Node, err = r.nodeInfo()
	if err != nil {
		in.Compatible = fmt.Errorf("describe this node: %w", err)
	} else {
		in.Compatible = compat.Check(a.meta, in.Node)
	}
	in.Unpacked = c.IsUnpacked(a.desc.Digest)
	return in, nil
}

// policy says why the node's configuration does not allow restores from
// ref, or nil when it does.
func (r *Restorer) policy(ref registry.Reference) error {
	if !r.cfg.Allowed(ref.Registry, ref.Repository) {
		return fmt.Errorf("%w: %s/%s is not in the allow list of %s", ErrDenied, ref.Registry, ref.Repository, r.ConfigPath)
	}
	if r.cfg.RequireDigest && !oci.Pinned(ref) {
		return fmt.Errorf("%w: the node requires checkpoints pinned by digest (REPOSITORY@sha256:...)", ErrDenied)
	}
	return nil
}

// resolve finds the manifest descriptor. The cache holds checkpoints by
// digest, whichever repository they came from; one is used for ref only if
// ref's repository served it to this node configuration (its allow list
// and credentials) before: another repository, or another configuration's,
// could otherwise name a checkpoint it has no access to by its digest. So
// a digest reference needs no registry only when its repository served the
// cached manifest. A tag is resolved at the registry; if the registry
// cannot be reached (not: it answered, with the tag gone or access
// refused), the tag's last resolution here is used, so cached checkpoints
// restore with the registry down.
func (r *Restorer) resolve(ctx context.Context, c *cache.Cache, src Source, ref registry.Reference) (ocispec.Descriptor, error) {
	source := r.sourceOf(ref)
	if oci.Pinned(ref) {
		d := digest.Digest(ref.Reference)
		if fi, err := os.Stat(c.BlobPath(d)); err == nil && c.SourceServed(source, d) {
			return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: d, Size: fi.Size()}, nil
		}
	}
	desc, body, err := resolveRemote(ctx, src, ref.Reference)
	if err == nil {
		if body != nil {
			defer body.Close()
		}
		if desc.Size > oci.MaxManifestSize {
			return ocispec.Descriptor{}, fmt.Errorf("%w: manifest of %d bytes", oci.ErrInvalidArtifact, desc.Size)
		}
		if oci.Pinned(ref) && desc.Digest.String() != ref.Reference {
			return ocispec.Descriptor{}, fmt.Errorf("registry resolved %s to %s", ref.Reference, desc.Digest)
		}
		if body != nil {
			// The registry shows it holds the manifest, not just its
			// digest: verified as it is stored, or read and verified here
			// if this node has it already.
			if err := storeManifest(ctx, c, desc, body); err != nil {
				return ocispec.Descriptor{}, fmt.Errorf("manifest: %w", err)
			}
		}
		if err := c.RememberSource(source, desc.Digest); err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: could not record which repository served the manifest")
		}
		if !oci.Pinned(ref) {
			if err := c.RememberRef(ref.String(), desc); err != nil {
				log.G(ctx).WithError(err).Warn("snapboot: could not record tag resolution in the cache")
			}
		}
		return desc, nil
	}
	if oci.Pinned(ref) || ctx.Err() != nil || !registryUnreachable(err) {
		return ocispec.Descriptor{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	cached, when, ok := c.LookupRef(ref.String())
	if !ok || !c.HasBlob(ctx, cached) || !c.SourceServed(source, cached.Digest) {
		return ocispec.Descriptor{}, fmt.Errorf("resolve %s: %w", ref, err)
	}
	log.G(ctx).WithError(err).WithFields(log.Fields{"ref": ref.String(), "digest": cached.Digest, "resolved_at": when}).
		Warn("snapboot: registry unreachable, using the tag's cached resolution")
	return cached, nil
}

// sourceOf names ref's repository as this node configuration reaches it,
// for the cache's record of which repositories served a manifest.
func (r *Restorer) sourceOf(ref registry.Reference) string {
	config := r.ConfigPath
	if abs, err := filepath.Abs(config); err == nil {
		config = abs
	}
	if real, err := filepath.EvalSymlinks(config); err == nil {
		config = real // one file, however it is named
	}
	return "config=" + config + " repository=" + ref.Registry + "/" + ref.Repository
}

// storeManifest stores the manifest desc from body in the cache, verified;
// if the cache has it, body is read and verified all the same.
func storeManifest(ctx context.Context, c *cache.Cache, desc ocispec.Descriptor, body io.Reader) error {
	if !c.HasBlob(ctx, desc) {
		_, err := c.StoreBlob(ctx, desc, body)
		return err
	}
	v := desc.Digest.Verifier()
	n, err := io.Copy(v, io.LimitReader(body, desc.Size+1))
	if err != nil {
		return err
	}
	if n != desc.Size || !v.Verified() {
		return fmt.Errorf("%w: the registry's manifest does not match its digest %s", oci.ErrInvalidArtifact, desc.Digest)
	}
	return nil
}

// registryUnreachable reports whether err is the registry not answering:
// no connection (refused, unreachable, a name that does not resolve), one
// cut or timed out, or a server error (5xx). An answer is not: the tag or
// repository gone, access refused (401, 403, or a TLS alert refusing the
// node's client certificate), a certificate the node does not trust, or a
// response the node cannot use (plain HTTP where it expects HTTPS).
func registryUnreachable(err error) bool {
	var resp *errcode.ErrorResponse
	if errors.As(err, &resp) {
		return resp.StatusCode >= http.StatusInternalServerError
	}
	if errors.Is(err, errdef.ErrNotFound) {
		return false
	}
	var alert tls.AlertError
	var recordHeader tls.RecordHeaderError
	var certErr *tls.CertificateVerificationError
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	if errors.As(err, &alert) || errors.As(err, &recordHeader) || errors.As(err, &certErr) ||
		errors.As(err, &unknownAuthority) || errors.As(err, &hostname) || errors.As(err, &invalid) {
		return false
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr), errors.As(err, &opErr):
		return true
	case errors.As(err, &netErr) && netErr.Timeout():
		return true
	}
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
}

// resolveRemote resolves reference at the registry. A source that can
// fetches the manifest with the same request (a GET instead of a HEAD), and
// returns its content in body, for the caller to close: a node without the
// manifest saves the round trip that would fetch it next.
func resolveRemote(ctx context.Context, src Source, reference string) (desc ocispec.Descriptor, body io.ReadCloser, err error) {
	if rf, ok := src.(registry.ReferenceFetcher); ok {
		return rf.FetchReference(ctx, reference)
	}
	desc, err = src.Resolve(ctx, reference)
	return desc, nil, err
}

// readArtifact reads and validates the manifest and the metadata: the small
// documents that the pre-flight needs, before any layer is downloaded.
func (r *Restorer) readArtifact(ctx context.Context, c *cache.Cache, src Source, mdesc ocispec.Descriptor) (*oci.Checkpoint, *oci.Metadata, error) {
	data, err := r.readSmall(ctx, c, src, mdesc)
	if err != nil {
		return nil, nil, fmt.Errorf("manifest: %w", err)
	}
	ck, err := oci.DecodeManifest(data)
	if err != nil {
		return nil, nil, err
	}
	if ck.Config.Data != nil {
		// Embedded in the manifest, and checked against its digest by
		// DecodeManifest: no round trip. Cached like a fetched blob.
		data = ck.Config.Data
		if _, err := c.StoreBlob(ctx, ck.Config, bytes.NewReader(data)); err != nil {
			return nil, nil, fmt.Errorf("metadata: %w", err)
		}
	} else if data, err = r.readSmall(ctx, c, src, ck.Config); err != nil {
		return nil, nil, fmt.Errorf("metadata: %w", err)
	}
	meta, err := oci.DecodeMetadata(data)
	if err != nil {
		return nil, nil, err
	}
	return ck, meta, nil
}

func (r *Restorer) readSmall(ctx context.Context, c *cache.Cache, src Source, desc ocispec.Descriptor) ([]byte, error) {
	if _, _, err := c.FetchBlob(ctx, src, desc); err != nil {
		return nil, err
	}
	return c.ReadBlob(ctx, desc)
}

// pullStats are what pullLayers did.
type pullStats struct {
	PulledBytes int64
	Pull        time.Duration // layers downloaded
	Unpack      time.Duration // layers that were in the cache already
}

// pullLayers unpacks the layers into dir, each while it downloads (or from
// the cache when only the unpacked copy was missing). Download,
// decompression and extraction overlap; the unpacked directory is used only
// if every layer matched its digest. With pages set (a streamed restore),
// see pullStreamed.
func (r *Restorer) pullLayers(ctx context.Context, a *artifact, dir string, st *pullStats, pages *streamPull) error {
	if pages != nil {
		return r.pullStreamed(ctx, a, dir, st, pages)
	}
	defer pullCPUs(0)()
	budget := unpack.NewBudget(int64(r.cfg.Pull.MaxUnpackedSize))
	for _, l := range a.ck.Layers() {
		ls, err := r.pullLayer(ctx, a, dir, l, budget, nil)
		if err != nil {
			return err
		}
		st.add(ls, l.Size)
	}
	return nil
}

// pullStreamed is pullLayers for a streamed restore: the CRIU images layer
// is checked frame by frame against its stream index and its files are
// reported to pages, and the rootfs changes download beside it (one round
// trip to the registry less before the restore can begin); pages.rootfsDone
// is closed once they are in. The two layers unpack within one budget, the
// node's limit: a checkpoint that would pass it fails as soon as one of its
// files would, streamed page images included, and the container starts
// cold.
func (r *Restorer) pullStreamed(ctx context.Context, a *artifact, dir string, st *pullStats, pages *streamPull) error {
	defer pullCPUs(streamWorkers())() // decoding threads at a lower priority
	defer pullGC()()
	budget := unpack.NewBudget(int64(r.cfg.Pull.MaxUnpackedSize))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var (
		rootfs    layerStats
		rootfsErr error
		wg        sync.WaitGroup
	)
	if a.ck.Rootfs != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rootfs, rootfsErr = r.pullLayer(ctx, a, dir, *a.ck.Rootfs, budget, nil)
			if rootfsErr != nil {
				cancel(rootfsErr) // the CRIU layer's download stops too
				return
			}
			close(pages.rootfsDone)
		}()
	} else {
		close(pages.rootfsDone)
	}
	criu, err := r.pullLayer(ctx, a, dir, a.ck.CRIU, budget, pages)
	if err != nil {
		cancel(err) // and the rootfs changes' download
	}
	wg.Wait()
	if err != nil || rootfsErr != nil {
		// The first failure, not the other layer's cancellation by it.
		cause := context.Cause(ctx)
		for _, e := range []error{err, rootfsErr} {
			if e != nil && e == cause {
				return e
			}
		}
		return errors.Join(err, rootfsErr)
	}
	if a.ck.Rootfs != nil {
		st.add(rootfs, a.ck.Rootfs.Size)
	}
	st.add(criu, a.ck.CRIU.Size)
	return nil
}

// layerStats is what pulling one layer did.
type layerStats struct {
	downloaded bool
	took       time.Duration
}

func (st *pullStats) add(ls layerStats, size int64) {
	if ls.downloaded {
		st.PulledBytes += size
		st.Pull += ls.took
	} else {
		st.Unpack += ls.took
	}
}

// pullLayer unpacks layer l into its directory under dir, within what is
// left of budget, which the checkpoint's layers share; with pages set (the
// CRIU images layer of a streamed restore), as pullStreamed says.
func (r *Restorer) pullLayer(ctx context.Context, a *artifact, dir string, l ocispec.Descriptor, budget *unpack.Budget, pages *streamPull) (layerStats, error) {
	sub := "criu"
	opts := unpack.Options{Mode: unpack.CRIUImages, Codec: codecOf(l), Budget: budget, SkipFrameChecksums: true}
	if l.MediaType == oci.MediaTypeRootfsDiff {
		opts.Mode, sub = unpack.RootfsDiff, "rootfs"
	} else if pages != nil {
		opts.Frames, opts.Files, opts.Workers, opts.Nice = a.ck.Stream.Frames, pages.feed, streamWorkers(), streamDecodeNice
		// Until the page images begin, Create waits for the decoding:
		// it runs at the shim's priority, and lowered from then on.
		opts.NiceFrom = pages.feed.ready
	}
	target := filepath.Join(dir, sub)
	if err := os.Mkdir(target, 0o700); err != nil {
		return layerStats{}, err
	}
	t := time.Now()
	// FetchBlobTo verifies the layer's digest and fails the unpack on a
	// mismatch, unless the unpack checks every frame against the digest
	// the manifest lists for it (a streamed restore): hashing the layer
	// twice adds nothing. The frames' own checksums add nothing either.
	fetch := cache.FetchOptions{ConsumerVerifies: opts.Frames != nil}
	var head []byte
	if opts.Frames != nil {
		head = a.ck.Stream.Head
	}
	downloaded, err := a.cache.FetchBlobTo(ctx, layerSource(a.src, l, head), l, fetch, func(rd io.Reader) error {
		if opts.Files != nil {
			rd = io.TeeReader(rd, pages.keep)
		}
		_, err := unpack.TarCompressed(ctx, rd, target, opts)
		return err
	})
	if err != nil {
		return layerStats{}, fmt.Errorf("pull and unpack %s layer %s: %w", sub, l.Digest, err)
	}
	return layerStats{downloaded: downloaded, took: time.Since(t)}, nil
}

// codecOf is how layer l is compressed: LZ4 for a CRIU images layer packed
// so, zstd for every other.
func codecOf(l ocispec.Descriptor) unpack.Codec {
	if l.MediaType == oci.MediaTypeCRIUImagesLZ4 {
		return unpack.LZ4
	}
	return unpack.Zstd
}

// ArmDump writes the dump-side CRIU config into the bundle and points runc
// at it (org.criu.config), so that a later checkpoint of this container
// (ctr task checkpoint, snapboot checkpoint) dumps open TCP connections and
// file locks instead of failing on them. runc reads the file when it dumps,
// so the same path serves the restore config first and the dump config
// after the restore. It also takes the restore's createRuntime hook
// (restorehook) out of the spec: it has run, or, before a cold start after
// a failed restore, the cold start gets the caller's hooks only.
func ArmDump(bundle string) error {
	return editSpec(bundle, func(doc map[string]json.RawMessage) (bool, error) {
		// The dump config is written whatever becomes of the hook; a cold
		// start would run it.
		removed, herr := removeRestoreHook(doc)
		if herr != nil {
			herr = fmt.Errorf("take the restore hook out of the spec: %w", herr)
		}
		ann, err := annotations(doc)
		if err != nil {
			return removed, errors.Join(herr, err)
		}
		user, err := criuconf.ParseUserOptions(ann[AnnotationCRIUOptions])
		if err != nil {
			user = nil // the restore path reports it; a dump keeps the defaults
		}
		path, err := criuconf.WriteFile(bundle, "dump", criuconf.DumpOptions(user))
		if err != nil {
			return removed, errors.Join(herr, err)
		}
		annotated, err := annotate(doc, criuconf.RuncAnnotation, path)
		return removed || annotated, errors.Join(herr, err)
	})
}

// EnforceCacheLimits evicts checkpoints not in use beyond the node's
// [cache] max_size and max_age (least recently used first), and reports
// whether the cache is still over max_size (checkpoints in use are never
// evicted). Either way it first removes what restores whose shims died
// left in the cache's tmp/: a streamed restore's mount point, a restore's
// images directory (see cache.MountDir and cache.ScratchDir).
func (r *Restorer) EnforceCacheLimits(ctx context.Context) ([]cache.Entry, bool, error) {
	c, err := cache.Open(r.cfg.Cache.Root)
	if err != nil {
		return nil, false, err
	}
	// Limits or not: a shim killed while it streamed left a mount point,
	// one killed between create and start its images directory, one killed
	// while it unpacked its unpack directory.
	c.RemoveDeadDirs()
	if r.cfg.Cache.MaxSize == 0 && r.cfg.Cache.MaxAge == 0 {
		return nil, false, nil
	}
	evicted, err := c.Prune(ctx, cache.PruneLimits{MaxSize: int64(r.cfg.Cache.MaxSize), MaxAge: time.Duration(r.cfg.Cache.MaxAge)})
	if err != nil || r.cfg.Cache.MaxSize == 0 {
		return evicted, false, err
	}
	size, err := c.Size(ctx)
	return evicted, size > int64(r.cfg.Cache.MaxSize), err
}

// RemoveDeadDirs removes what restores whose shims died left in the
// cache's tmp/ (see cache.Cache.RemoveDeadDirs), and nothing else.
func (r *Restorer) RemoveDeadDirs() {
	if c, err := cache.Open(r.cfg.Cache.Root); err == nil {
		c.RemoveDeadDirs()
	}
}

// Metrics is the node's metrics store, or nil when metrics are off.
func (r *Restorer) Metrics() *metrics.Store {
	if r.cfg.Metrics.Dir == "" {
		return nil
	}
	m, err := metrics.Open(r.cfg.Metrics.Dir)
	if err != nil {
		return nil
	}
	return m
}

// ReasonKind sorts why a restore did not happen, for metrics and alerts:
// policy, invalid, incompatible, spec, not_found, timeout, restore, config,
// or other.
func ReasonKind(err error) string {
	switch {
	case errors.Is(err, ErrDenied):
		return "policy"
	case errors.Is(err, oci.ErrInvalidArtifact), errors.Is(err, unpack.ErrUnsafe), errors.Is(err, unpack.ErrTooLarge), errors.Is(err, unpack.ErrCorrupt):
		return "invalid"
	case errors.Is(err, compat.ErrIncompatible):
		return "incompatible"
	case errors.Is(err, confine.ErrRefused):
		return "spec"
	case errors.Is(err, errdef.ErrNotFound):
		return "not_found"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, ErrRestoreFailed):
		return "restore"
	case errors.Is(err, ErrConfig):
		return "config"
	}
	return "other"
}

// ErrRestoreFailed is wrapped by the shim when runc's restore fails.
var ErrRestoreFailed = errors.New("runc restore failed")

// ErrConfig is wrapped when the node configuration is unusable.
var ErrConfig = errors.New("node configuration unusable")

// notForThisStart says why a container whose spec names a checkpoint is
// not restored: another container of the pod is the one snapboot.dev/container
// names, or the kubelet is restarting it. A restored container that ended
// (it crashed, failed its liveness probe, was OOM-killed) starts cold when
// the kubelet restarts it, so that a checkpoint that fails after its
// restore costs one restart, never a crash loop. "" means restore it.
func notForThisStart(ann map[string]string) string {
	if want, ok := ann[AnnotationContainer]; ok {
		name, ok := ann[criContainerName]
		switch {
		case !ok:
			return fmt.Sprintf("%s=%q, and the spec names no CRI container (%s)", AnnotationContainer, want, criContainerName)
		case name != want:
			return fmt.Sprintf("%s=%q, and this is container %q", AnnotationContainer, want, name)
		}
	}
	if count, ok := ann[kubeletRestartCount]; ok && count != "0" {
		return fmt.Sprintf("the kubelet's restart %s of the container (%s): restarts start cold", count, kubeletRestartCount)
	}
	return ""
}

// isPodSandbox reports whether a spec's annotations mark a CRI pod sandbox
// (pause) container: containerd's and CRI-O's markers.
func isPodSandbox(ann map[string]string) bool {
	return ann["io.kubernetes.cri.container-type"] == "sandbox" || ann["io.kubernetes.cri-o.ContainerType"] == "sandbox"
}

//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"time"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/pkg/oom"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
	emptypb "google.golang.org/protobuf/types/known/emptypb"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/criulog"
	"github.com/snapboot/snapboot/metrics"
	"github.com/snapboot/snapboot/restore"
)

// preparer turns a create request into a restore plan. *restore.Restorer is
// the real one; tests use fakes.
type preparer interface {
	Prepare(ctx context.Context, req restore.Request) (*restore.Plan, error)
	EnforceCacheLimits(ctx context.Context) (evicted []cache.Entry, overLimit bool, err error)
	// RemoveDeadDirs removes what restores whose shims died left in the
	// cache (EnforceCacheLimits does too).
	RemoveDeadDirs()
	// Metrics is the node's metrics store, nil when metrics are off.
	Metrics() *metrics.Store
}

// service is the runc task service with restore-on-create in front of it.
// Only Create, Start, Wait, Delete and Shutdown are overridden; every other
// call goes to the runc task service untouched.
type service struct {
	taskAPI.TTRPCTaskService

	publisher *filteringPublisher
	// restorerFor returns the preparer for a node configuration file ("" is
	// the default one); containerd's runtime options may name another.
	restorerFor func(configPath string) preparer

	// armDumpFn writes the dump-side CRIU config into a bundle.
	armDumpFn func(bundle string) error
	// clearAbortedFn removes what a killed runc restore leaves behind
	// (clearAbortedRestore).
	clearAbortedFn func(ctx context.Context, bundle, id string) error
	// oom watches restored containers' cgroups (nil in unit tests).
	oom oom.Watcher

	mu      sync.Mutex
	pending map[string]*pendingRestore // container ID -> restore waiting for Start
	running map[string]*restore.Plan   // container ID -> restored, until Delete
	// restored are the containers whose init process was restored.
	restored map[string]bool
	// replaced: container ID -> closed when the Start fallback has replaced
	// the failed restore's init process with a cold one (see Wait).
	replaced map[string]chan struct{}
	// fallingBack: container ID -> closed when the Start fallback, which
	// deletes the failed restore and creates the container again, has
	// ended. Meanwhile the container is not there: Delete, Kill and State
	// wait for it instead of finding none (containerd takes a Delete's
	// "not found" for done, and would forget a container the fallback
	// then makes).
	fallingBack map[string]chan struct{}
	// live are the containers created and not deleted yet: while any is
	// left, the runc task service's Shutdown does not end the shim, and
	// snapboot's does not wait for cache fills.
	live map[string]bool
	// filling counts the cache work after restores (a streamed restore's
	// fill, then the cache limits) still running: the shim does not exit
	// before it ends, if its Shutdown's deadline allows (see Shutdown).
	filling sync.WaitGroup
	// ending is closed when Shutdown begins to end the shim: the cache
	// trims' retries stop waiting then.
	ending     chan struct{}
	endingOnce sync.Once
}

// pendingRestore is a container created from a checkpoint and not started yet.
type pendingRestore struct {
	original *taskAPI.CreateTaskRequest // the caller's request, for the fallback
	plan     *restore.Plan
	restorer preparer
	// freshUpper is the container's empty overlay upper directory, which
	// the fallback empties again; "" if it held something before.
	freshUpper string
}

func newService(inner taskAPI.TTRPCTaskService, publisher *filteringPublisher, restorerFor func(string) preparer) *service {
	return &service{
		TTRPCTaskService: inner,
		publisher:        publisher,
		restorerFor:      restorerFor,
		armDumpFn:        restore.ArmDump,
		clearAbortedFn:   clearAbortedRestore,
		pending:          map[string]*pendingRestore{},
		running:          map[string]*restore.Plan{},
		restored:         map[string]bool{},
		replaced:         map[string]chan struct{}{},
		fallingBack:      map[string]chan struct{}{},
		live:             map[string]bool{},
		ending:           make(chan struct{}),
	}
}

// RegisterTTRPC registers the wrapper, not the inner service, so that
// Create/Start/Delete go through snapboot.
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	return nil
}

// Create restores the container from its checkpoint when the spec asks for
// one, and cold-creates it otherwise or when anything about the checkpoint
// is wrong.
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	resp, err := s.create(ctx, r)
	if err == nil {
		s.mu.Lock()
		s.live[r.ID] = true
		s.mu.Unlock()
	}
	return resp, err
}

func (s *service) create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	r, configPath, err := translateOptions(r)
	if err != nil {
		return nil, err
	}
	if r.Checkpoint != "" {
		// containerd's own restore (ctr c restore, CRI restore): not ours.
		return s.TTRPCTaskService.Create(ctx, r)
	}
	began := time.Now()
	restorer := s.restorerFor(configPath)
	plan, err := restorer.Prepare(ctx, restore.Request{ContainerID: r.ID, Bundle: r.Bundle, Rootfs: r.Rootfs, Runc: runcBinary(r)})
	if errors.Is(err, restore.ErrNotRequested) {
		return s.coldCreate(ctx, r)
	}
	if err != nil {
		logFallback(ctx, restorer, r.ID, restore.RefOf(err), err, time.Since(began))
		return s.coldCreate(ctx, r)
	}

	rr := proto.Clone(r).(*taskAPI.CreateTaskRequest)
	rr.Checkpoint = plan.ImagesDir
	rr.Rootfs = plan.Rootfs
	freshUpper := restore.FreshUpperDir(r.Rootfs)
	resp, err := s.TTRPCTaskService.Create(ctx, rr)
	if err != nil {
		plan.Release()
		logFallback(ctx, restorer, r.ID, plan.Ref, fmt.Errorf("create from checkpoint: %w", err), time.Since(began))
		return s.coldCreate(ctx, r)
	}
	s.mu.Lock()
	s.pending[r.ID] = &pendingRestore{original: r, plan: plan, restorer: restorer, freshUpper: freshUpper}
	s.replaced[r.ID] = make(chan struct{})
	s.mu.Unlock()
	return resp, nil
}

// Start runs the restore (runc restore, through the runc task service). If
// it fails before the process runs, the half-made container is deleted and
// the caller's original request is created and started cold instead.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	if r.ExecID != "" {
		return s.TTRPCTaskService.Start(ctx, r)
	}
	s.mu.Lock()
	p := s.pending[r.ID]
	delete(s.pending, r.ID)
	s.mu.Unlock()
	if p == nil {
		return s.TTRPCTaskService.Start(ctx, r)
	}
	began := time.Now()
	// runc is killed at the end of the restore's context: time is kept
	// for the cold start, should the restore fail.
	restoreCtx, cancel := restore.RestoreContext(ctx)
	resp, err := s.TTRPCTaskService.Start(restoreCtx, r)
	cancel()
	// A streamed restore's download ends with the restore: CRIU has read
	// the page images, so what is left is the end of the layer.
	streamErr := p.plan.FinishStream(ctx, err == nil)
	p.plan.RestoreDone()
	if err == nil {
		s.mu.Lock()
		delete(s.replaced, r.ID)
		s.restored[r.ID] = true
		s.mu.Unlock()
		p.plan.Timings.Restore = time.Since(began)
		if err := restore.SetZeroOOMScore(p.plan.Spec, resp.Pid); err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: cannot give the restored container its spec's oom_score_adj of 0")
		}
		if s.oom != nil {
			if err := s.watchOOM(r.ID, int(resp.Pid)); err != nil {
				log.G(ctx).WithError(err).Warn("snapboot: OOM kills of the restored container will not be reported")
			}
		}
		logRestored(ctx, p.restorer, r.ID, p.plan)
		s.armDump(ctx, p.original.Bundle)
		if p.plan.NeedsCache() {
			s.mu.Lock()
			s.running[r.ID] = p.plan
			s.mu.Unlock()
		} else {
			p.plan.Release()
		}
		if !p.plan.Cached {
			// After a streamed restore, once its background cache fill
			// has ended; the shim does not exit before.
			trimCtx, filled := context.WithoutCancel(ctx), p.plan.CacheFilled()
			s.filling.Go(func() {
				if filled != nil {
					<-filled
				}
				trimCache(trimCtx, p.restorer, s.ending)
			})
		} else {
			// A node whose restores hit the cache also clears what dead
			// shims left (a mount point, an images directory, an unpack),
			// without the evictions a download may call for.
			s.filling.Go(p.restorer.RemoveDeadDirs)
		}
		return resp, nil
	}
	restoreErr := fmt.Errorf("%w: %w", restore.ErrRestoreFailed, err)
	if detail := criulog.Errors(filepath.Join(p.original.Bundle, "work", "restore.log")); detail != "" {
		restoreErr = fmt.Errorf("%w: %w; CRIU: %s", restore.ErrRestoreFailed, err, detail)
	}
	if streamErr != nil && !errors.Is(streamErr, context.Canceled) {
		// What CRIU could not read never arrived: that is the reason.
		restoreErr = fmt.Errorf("%w; the page images' download failed: %w", restoreErr, streamErr)
	}

	// The failed restore is removed even when the request has ended (a
	// CRI timeout, containerd restarting): that is what killed runc, and
	// runc's delete, run on the dead request, would not start.
	cleanupCtx := context.WithoutCancel(ctx)
	if cerr := s.clearAbortedFn(cleanupCtx, p.original.Bundle, r.ID); cerr != nil {
		log.G(ctx).WithError(cerr).Warn("snapboot: the failed restore's runc state may not be removable")
	}
	fallenBack := s.beginFallback(r.ID)
	defer fallenBack() // the cold create's outcome is there to find
	s.publisher.suppressRecreate(r.ID)
	derr := s.deleteFailedRestore(cleanupCtx, r.ID)
	// Only now, with no process of the restore left, may the cache let go
	// of the checkpoint a restored rootfs stacked on.
	p.plan.Release()
	if derr != nil {
		s.publisher.cancelSuppress(r.ID, "delete", "create")
		s.endReplacement(r.ID)
		return nil, fmt.Errorf("%v; removing the failed restore also failed: %w", restoreErr, derr)
	}
	if p.freshUpper != "" {
		// The cold start gets the empty writable layer it would have had.
		if n, cerr := restore.ClearDir(p.freshUpper); cerr != nil {
			log.G(ctx).WithError(cerr).Warn("snapboot: files the failed restore wrote may stay in the container's rootfs")
		} else if n > 0 {
			log.G(ctx).WithField("entries", n).Info("snapboot: removed what the failed restore wrote into the container's rootfs")
		}
	}
	if _, cerr := s.coldCreate(ctx, p.original); cerr != nil {
		s.publisher.cancelSuppress(r.ID, "create")
		s.endReplacement(r.ID) // the Waits then find no container, instead of waiting for ever
		return nil, fmt.Errorf("%v; cold create after it failed: %w", restoreErr, cerr)
	}
	logFallback(ctx, p.restorer, r.ID, p.plan.Ref, restoreErr, p.plan.Timings.Total()+time.Since(began))
	s.endReplacement(r.ID)
	fallenBack()
	return s.TTRPCTaskService.Start(ctx, r)
}

// deleteFailedRestore deletes the failed restore of container id. A
// restore that runc completed before a later step of Start failed (the
// container's stdin, its console, its pid file) left the restored process
// running, which runc's delete (not forced) refuses, and whose output the
// runc task service's delete would wait for: its processes are killed
// first (runc's kill fails, harmlessly, when the restore left none).
func (s *service) deleteFailedRestore(ctx context.Context, id string) error {
	if _, err := s.TTRPCTaskService.Kill(ctx, &taskAPI.KillRequest{ID: id, Signal: uint32(unix.SIGKILL), All: true}); err == nil {
		log.G(ctx).Info("snapboot: killed what the failed restore left running")
	}
	deadline := time.Now().Add(deleteGrace)
	for {
		_, err := s.TTRPCTaskService.Delete(ctx, &taskAPI.DeleteRequest{ID: id})
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deleteGrace is how long deleteFailedRestore waits for killed processes
// to go.
var deleteGrace = 2 * time.Second

// beginFallback marks container id as being deleted and created again by
// the Start fallback; the returned function, safe to call twice, ends
// that.
func (s *service) beginFallback(id string) func() {
	ch := make(chan struct{})
	s.mu.Lock()
	s.fallingBack[id] = ch
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			delete(s.fallingBack, id)
			s.mu.Unlock()
			close(ch)
		})
	}
}

// afterFallback waits until container id is not in the Start fallback.
func (s *service) afterFallback(ctx context.Context, id string) error {
	s.mu.Lock()
	ch := s.fallingBack[id]
	s.mu.Unlock()
	if ch == nil {
		return nil
	}
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return errgrpc.ToGRPC(fmt.Errorf("waiting for the cold start that replaces the failed restore of %s: %w", id, errdefs.ErrUnavailable))
	}
}

// Kill waits for a Start fallback under way (see fallingBack).
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	if err := s.afterFallback(ctx, r.ID); err != nil {
		return nil, err
	}
	return s.TTRPCTaskService.Kill(ctx, r)
}

// State waits for a Start fallback under way (see fallingBack).
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	if err := s.afterFallback(ctx, r.ID); err != nil {
		return nil, err
	}
	return s.TTRPCTaskService.State(ctx, r)
}

// endReplacement ends the Start fallback of container id: Waits issued
// before Start (CRI, the containerd client), blocked on the deleted init
// process, go to the new one, or find none when the fallback failed.
func (s *service) endReplacement(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ch := s.replaced[id]; ch != nil {
		close(ch)
		delete(s.replaced, id)
	}
}

// Wait waits for the container's init process like the runc task service,
// but across a Start fallback: a Wait that began on the failed restore's
// init process (which never runs, so never exits) moves to the cold one.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	if r.ExecID != "" {
		return s.TTRPCTaskService.Wait(ctx, r)
	}
	for {
		s.mu.Lock()
		ch := s.replaced[r.ID]
		s.mu.Unlock()
		if ch == nil {
			return s.TTRPCTaskService.Wait(ctx, r)
		}
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-ch:
				cancel()
			case <-wctx.Done():
			}
		}()
		resp, err := s.TTRPCTaskService.Wait(wctx, r)
		cancel()
		select {
		case <-ch:
			if ctx.Err() == nil {
				continue
			}
		default:
		}
		return resp, err
	}
}

// shutdownReserve is what Shutdown leaves of its caller's deadline after
// waiting for cache fills, to answer in.
const shutdownReserve = 500 * time.Millisecond

// Shutdown, once the shim's last container is deleted, waits for the cache
// fills of streamed restores before the shim goes, so that the next restore
// of the checkpoint on this node needs no download. containerd calls it
// after every task delete, with 3 s (io.containerd.timeout.shim.shutdown),
// and fails the delete if it does not answer in time: the wait ends
// shutdownReserve before the deadline, and a fill still running then is
// given up (the next restore downloads again and clears what it left).
// While containers are left (a pod's shim serves all of them), it does not
// wait: the runc task service's Shutdown then returns at once.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	left := len(s.live)
	s.mu.Unlock()
	if left == 0 {
		s.endingOnce.Do(func() { close(s.ending) })
		if !s.waitFilling(ctx) {
			log.G(ctx).Warn("snapboot: the shim is shutting down before its cache fill ended; the next restore of the checkpoint downloads it again")
		}
	}
	return s.TTRPCTaskService.Shutdown(ctx, r)
}

// waitFilling waits for the cache work after restores, until ctx's deadline
// less shutdownReserve; it reports whether that work ended.
func (s *service) waitFilling(ctx context.Context) bool {
	done := make(chan struct{})
	go func() {
		s.filling.Wait()
		close(done)
	}()
	var giveUp <-chan time.Time
	if deadline, ok := ctx.Deadline(); ok {
		t := time.NewTimer(time.Until(deadline) - shutdownReserve)
		defer t.Stop()
		giveUp = t.C
	}
	select {
	case <-done:
		return true
	case <-giveUp:
	case <-ctx.Done():
	}
	return false
}

// Delete releases the container's hold on its checkpoint in the cache (the
// rootfs changes stay mounted as a lower layer while the container exists).
// It waits for a Start fallback under way (see fallingBack).
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	if err := s.afterFallback(ctx, r.ID); err != nil {
		return nil, err
	}
	resp, err := s.TTRPCTaskService.Delete(ctx, r)
	if r.ExecID == "" && (err == nil || errdefs.IsNotFound(errgrpc.ToNative(err))) {
		// Not left, also when gone already: a Start fallback whose cold
		// create failed after it had deleted the failed restore.
		s.mu.Lock()
		delete(s.live, r.ID)
		s.mu.Unlock()
	}
	if err == nil && r.ExecID == "" {
		s.mu.Lock()
		var plan *restore.Plan
		if p := s.pending[r.ID]; p != nil {
			plan = p.plan
		} else {
			plan = s.running[r.ID]
		}
		delete(s.pending, r.ID)
		delete(s.running, r.ID)
		delete(s.replaced, r.ID)
		delete(s.restored, r.ID)
		s.mu.Unlock()
		plan.Release()
	}
	return resp, err
}

// trimCache evicts checkpoints beyond the node's cache limits after a
// restore made the cache grow, off the restore path. Checkpoints other
// restores still hold are skipped, so it tries again a few times while the
// cache stays over its limit, until ending is closed.
func trimCache(ctx context.Context, r preparer, ending <-chan struct{}) {
	for wait := time.Second; ; wait *= 2 {
		evicted, over, err := r.EnforceCacheLimits(ctx)
		if err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: cache eviction failed")
			return
		}
		if m := r.Metrics(); m != nil {
			m.RecordEvictions(len(evicted))
		}
		for _, e := range evicted {
			log.G(ctx).WithFields(log.Fields{"event": "snapboot.evict", "digest": e.Digest.String(), "bytes": e.Size}).Info("snapboot: evicted a checkpoint from the node cache")
		}
		if !over || wait > 16*time.Second {
			return
		}
		select {
		case <-time.After(wait):
		case <-ending:
			return // the shim is ending: the next restore's trim goes on
		}
	}
}

// coldCreate creates the container from the caller's request, armed for a
// later checkpoint.
func (s *service) coldCreate(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	s.armDump(ctx, r.Bundle)
	return s.TTRPCTaskService.Create(ctx, r)
}

// armDump writes the dump-side CRIU config. A failure only costs a later
// checkpoint its defaults, so it is logged, not returned.
func (s *service) armDump(ctx context.Context, bundle string) {
	if bundle == "" {
		return
	}
	if err := s.armDumpFn(bundle); err != nil {
		log.G(ctx).WithError(err).Warn("snapboot: could not write the dump-side CRIU config")
	}
}

func logFallback(ctx context.Context, r preparer, id, ref string, reason error, elapsed time.Duration) {
	kind := restore.ReasonKind(reason)
	log.G(ctx).WithFields(log.Fields{
		"event":       "snapboot.fallback",
		"id":          id,
		"ref":         ref,
		"reason":      reason.Error(),
		"reason_kind": kind,
		"elapsed_s":   elapsed.Seconds(),
	}).Warn("snapboot: restore not possible, cold-starting the container")
	if m := r.Metrics(); m != nil {
		if err := m.RecordFallback(kind); err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: metrics not recorded")
		}
	}
}

func logRestored(ctx context.Context, r preparer, id string, plan *restore.Plan) {
	t := plan.Timings
	if m := r.Metrics(); m != nil {
		err := m.RecordRestore(metrics.Restore{Cached: plan.Cached, PulledBytes: plan.PulledBytes,
			Pull: t.Pull, Unpack: t.Unpack, Restore: t.Restore, Total: t.Total()})
		if err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: metrics not recorded")
		}
	}
	log.G(ctx).WithFields(log.Fields{
		"event":         "snapboot.restore",
		"id":            id,
		"ref":           plan.Ref,
		"digest":        plan.Digest.String(),
		"cached":        plan.Cached,
		"streamed":      plan.Timings.Streamed > 0,
		"stalls":        plan.StreamStalls,
		"page_by_page":  plan.PageByPage,
		"spilled_bytes": plan.SpilledBytes,
		"narrowed":      plan.NarrowedTasks,
		"pulled_bytes":  plan.PulledBytes,
		"resolve_s":     t.Resolve.Seconds(),
		"pull_s":        t.Pull.Seconds(),
		"streamed_s":    t.Streamed.Seconds(),
		"unpack_s":      t.Unpack.Seconds(),
		"restore_s":     t.Restore.Seconds(),
		"total_s":       t.Total().Seconds(),
	}).Info("snapboot: container restored from checkpoint")
}

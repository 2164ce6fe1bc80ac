//go:build linux

package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/events"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	emptypb "google.golang.org/protobuf/types/known/emptypb"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/metrics"
	"github.com/snapboot/snapboot/restore"
)

// fakeTasks stands in for the runc task service: it records calls, fails
// the first Start of a checkpointed create when told to, and sends events
// through the publisher the way the real one does.
type fakeTasks struct {
	taskAPI.TTRPCTaskService
	pub *filteringPublisher

	mu               sync.Mutex // calls, from Start and a test's goroutine
	calls            []string
	creates          []*taskAPI.CreateTaskRequest
	failRestoreStart bool
	checkpointed     bool
	// endRequest, when set, is called as the restore fails: the caller's
	// request ends with it.
	endRequest func()
	// failColdCreate fails a create without a checkpoint.
	failColdCreate bool
	deleted        atomic.Bool
	waiting        chan struct{} // receives once a Wait blocks
	// copyUp, when set, is written as the restore fails: a file CRIU
	// opened for writing, copied up into the container's upper directory.
	copyUp string
	// upperAtColdCreate lists the upper directory when a cold create
	// comes, if upper is set.
	upper             string
	upperAtColdCreate []string
	// coldCreating, when set, is sent to as a cold create begins, which
	// then waits for coldCreateGate.
	coldCreating   chan struct{}
	coldCreateGate chan struct{}
	// startDeadlines are the deadlines the Starts had.
	startDeadlines []time.Time
	// restoredThenFailed: the failing restore's process runs (a step of
	// Start after runc's restore failed); a delete is refused until it is
	// killed.
	restoredThenFailed bool
	running            bool
	// gone: the container is not there (Delete answers NotFound).
	gone bool
}

func (f *fakeTasks) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	name := fmt.Sprintf("kill-%d", r.Signal)
	if r.All {
		name += "-all"
	}
	f.record(name)
	if r.Signal == 9 && r.All {
		f.running = false
	}
	return &emptypb.Empty{}, nil
}

// record notes a call.
func (f *fakeTasks) record(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
}

// called lists the calls so far.
func (f *fakeTasks) called() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, " ")
}

// Wait blocks, as a Wait on an init process that never runs does, until
// its context ends; once the container is deleted it finds none.
func (f *fakeTasks) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	if f.deleted.Load() {
		return nil, errors.New("container not found")
	}
	if f.waiting != nil {
		f.waiting <- struct{}{}
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func (f *fakeTasks) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (*taskAPI.CreateTaskResponse, error) {
	if r.Checkpoint == "" && f.coldCreating != nil {
		f.coldCreating <- struct{}{}
		<-f.coldCreateGate
	}
	f.record("create")
	if r.Checkpoint == "" && f.failColdCreate {
		return nil, errors.New("cold create failed")
	}
	if r.Checkpoint == "" && f.upper != "" {
		entries, _ := os.ReadDir(f.upper)
		for _, e := range entries {
			f.upperAtColdCreate = append(f.upperAtColdCreate, e.Name())
		}
	}
	f.deleted.Store(false)
	f.creates = append(f.creates, r)
	f.checkpointed = r.Checkpoint != ""
	f.pub.Publish(ctx, "/tasks/create", &eventstypes.TaskCreate{ContainerID: r.ID})
	return &taskAPI.CreateTaskResponse{}, nil
}

func (f *fakeTasks) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	f.record("start")
	if d, ok := ctx.Deadline(); ok {
		f.startDeadlines = append(f.startDeadlines, d)
	}
	if f.checkpointed && f.failRestoreStart {
		f.running = f.restoredThenFailed
		if f.endRequest != nil {
			f.endRequest()
		}
		if f.copyUp != "" {
			os.MkdirAll(filepath.Dir(f.copyUp), 0o755)
			os.WriteFile(f.copyUp, []byte("the donor's log"), 0o644)
		}
		return nil, errors.New("OCI runtime restore failed: criu failed: type RESTORE errno 0")
	}
	f.pub.Publish(ctx, "/tasks/start", &eventstypes.TaskStart{ContainerID: r.ID, Pid: 42})
	return &taskAPI.StartResponse{Pid: 42}, nil
}

func (f *fakeTasks) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	if f.gone {
		f.record("delete-not-found")
		return nil, errgrpc.ToGRPC(fmt.Errorf("container %s: %w", r.ID, errdefs.ErrNotFound))
	}
	if ctx.Err() != nil {
		f.record("delete-on-ended-request")
		return nil, ctx.Err()
	}
	if f.running {
		f.record("delete-refused")
		return nil, errors.New("cannot delete container that is not stopped: running")
	}
	f.record("delete")
	f.deleted.Store(true)
	f.pub.Publish(ctx, "/tasks/delete", &eventstypes.TaskDelete{ContainerID: r.ID})
	return &taskAPI.DeleteResponse{}, nil
}

func (f *fakeTasks) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	if ctx.Err() != nil {
		f.record("shutdown-on-ended-request")
		return nil, ctx.Err()
	}
	f.record("shutdown")
	return &emptypb.Empty{}, nil
}

type recordingPublisher struct {
	mu     sync.Mutex
	topics []string
}

func (p *recordingPublisher) Publish(_ context.Context, topic string, _ events.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.topics = append(p.topics, topic)
	return nil
}
func (p *recordingPublisher) Close() error { return nil }

type fakePreparer struct {
	plan    *restore.Plan
	err     error
	metrics *metrics.Store

	deadDirsRemoved atomic.Int32
	// overLimit: the cache stays over its limits; trims counts the
	// evictions asked for.
	overLimit bool
	trims     atomic.Int32
}

func (f *fakePreparer) Prepare(context.Context, restore.Request) (*restore.Plan, error) {
	return f.plan, f.err
}

func (f *fakePreparer) Metrics() *metrics.Store { return f.metrics }

func (f *fakePreparer) RemoveDeadDirs() { f.deadDirsRemoved.Add(1) }

func (f *fakePreparer) EnforceCacheLimits(context.Context) ([]cache.Entry, bool, error) {
	f.trims.Add(1)
	return nil, f.overLimit, nil
}

func setup(prep *fakePreparer, failStart bool) (*service, *fakeTasks, *recordingPublisher) {
	rec := &recordingPublisher{}
	pub := newFilteringPublisher(rec)
	inner := &fakeTasks{pub: pub, failRestoreStart: failStart}
	s := newService(inner, pub, func(string) preparer { return prep })
	s.armDumpFn = func(bundle string) error {
		inner.record("arm-dump")
		return nil
	}
	s.clearAbortedFn = func(_ context.Context, bundle, id string) error {
		inner.record("clear-aborted")
		return nil
	}
	return s, inner, rec
}

func join(s []string) string {
	out := ""
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out
}

func TestRestoreSucceeds(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, rec := setup(prep, false)
	ctx := context.Background()
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}); err != nil {
		t.Fatal(err)
	}
	if inner.creates[0].Checkpoint != "/cache/criu" {
		t.Fatalf("runc shim not asked to restore: %+v", inner.creates[0])
	}
	resp, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"})
	if err != nil || resp.Pid != 42 {
		t.Fatalf("Start: %v %v", resp, err)
	}
	if got := inner.called(); got != "create start arm-dump" {
		t.Fatalf("calls %q", got)
	}
	if got := join(rec.topics); got != "/tasks/create /tasks/start" {
		t.Fatalf("events %q", got)
	}
	// A restore from the cache clears what dead shims left, in the
	// background.
	s.filling.Wait()
	if n := prep.deadDirsRemoved.Load(); n != 1 {
		t.Fatalf("dead shims' directories cleared %d times after a cached restore, want 1", n)
	}
}

func TestFailedPrepareColdStarts(t *testing.T) {
	prep := &fakePreparer{err: &restore.Error{Ref: "r/a:v1", Err: errors.New("resolve: not found")}}
	s, inner, _ := setup(prep, false)
	req := &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}
	if _, err := s.Create(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if got := inner.called(); got != "arm-dump create" {
		t.Fatalf("calls %q", got)
	}
	if len(inner.creates) != 1 || inner.creates[0] != req || inner.creates[0].Checkpoint != "" {
		t.Fatalf("cold create expected with the caller's request: %+v", inner.creates)
	}
}

func TestFailedRestoreFallsBackWithoutStrayEvents(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, rec := setup(prep, true)
	ctx := context.Background()
	orig := &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}
	if _, err := s.Create(ctx, orig); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"})
	if err != nil || resp.Pid != 42 {
		t.Fatalf("fallback Start: %v %v", resp, err)
	}
	if got := inner.called(); got != "create start clear-aborted kill-9-all delete arm-dump create start" {
		t.Fatalf("calls %q", got)
	}
	if last := inner.creates[len(inner.creates)-1]; last != orig || last.Checkpoint != "" {
		t.Fatalf("fallback did not create the caller's original request: %+v", last)
	}
	// containerd sees one create and one start, not the internal delete/create.
	if got := join(rec.topics); got != "/tasks/create /tasks/start" {
		t.Fatalf("events %q", got)
	}
	// A later, real delete is published.
	s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"})
	if got := join(rec.topics); got != "/tasks/create /tasks/start /tasks/delete" {
		t.Fatalf("events after delete %q", got)
	}
}

// The cold start after a failed restore gets the empty writable layer it
// would have had, not the files CRIU copied up into it; a layer that held
// something before the restore is left alone.
func TestFallbackGetsAnEmptyUpperDir(t *testing.T) {
	for _, c := range []struct {
		name   string
		before []string // in the upper directory at Create
		want   []string // at the cold create
	}{
		{"fresh", nil, nil},
		{"written before", []string{"kept"}, []string{"kept", "tmp"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
			s, inner, _ := setup(prep, true)
			upper := t.TempDir()
			for _, name := range c.before {
				os.WriteFile(filepath.Join(upper, name), nil, 0o644)
			}
			inner.upper, inner.copyUp = upper, filepath.Join(upper, "tmp", "app.log")
			rootfs := []*types.Mount{{Type: "overlay", Source: "overlay", Options: []string{"workdir=/w", "upperdir=" + upper, "lowerdir=/l"}}}
			if _, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b", Rootfs: rootfs}); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Start(context.Background(), &taskAPI.StartRequest{ID: "c1"}); err != nil {
				t.Fatal(err)
			}
			if got, want := strings.Join(inner.upperAtColdCreate, " "), strings.Join(c.want, " "); got != want {
				t.Fatalf("upper directory at the cold create: %q, want %q", got, want)
			}
		})
	}
}

// A restore that fails because the request ended (runc killed with it) is
// still removed: its runc state and cgroup must not stay on the node.
func TestFailedRestoreRemovedAfterTheRequestEnded(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, _ := setup(prep, true)
	if _, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	inner.endRequest = cancel
	s.Start(ctx, &taskAPI.StartRequest{ID: "c1"})
	if got := inner.called(); !strings.HasPrefix(got+" ", "create start clear-aborted kill-9-all delete ") {
		t.Fatalf("calls %q: the failed restore was not deleted", got)
	}
}

// A Wait issued before Start, blocked on the failed restore's init
// process, returns when the fallback's cold create fails too, instead of
// waiting for a process that will never run.
func TestWaitReturnsWhenTheFallbackFails(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, _ := setup(prep, true)
	inner.failColdCreate = true
	inner.waiting = make(chan struct{}, 1)
	ctx := context.Background()
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		_, err := s.Wait(ctx, &taskAPI.WaitRequest{ID: "c1"})
		waited <- err
	}()
	<-inner.waiting
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err == nil || !strings.Contains(err.Error(), "cold create after it failed") {
		t.Fatalf("Start: %v; want the failed fallback", err)
	}
	select {
	case err := <-waited:
		if err == nil {
			t.Fatal("Wait succeeded for a container that is gone")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait still blocked after the fallback failed")
	}
}

// While the Start fallback deletes the failed restore and creates the
// container again, a Delete waits for it, instead of finding no container
// (which containerd would take for done, and forget the container the
// fallback then makes); one whose request ends first says so.
func TestDeleteWaitsForTheFallback(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, _ := setup(prep, true)
	inner.coldCreating, inner.coldCreateGate = make(chan struct{}), make(chan struct{})
	ctx := context.Background()
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() {
		_, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"})
		started <- err
	}()
	<-inner.coldCreating
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Delete(short, &taskAPI.DeleteRequest{ID: "c1"}); !errdefs.IsUnavailable(errgrpc.ToNative(err)) {
		t.Fatalf("Delete whose request ended during the fallback: %v, want unavailable", err)
	}
	deleted := make(chan error, 1)
	go func() {
		_, err := s.Delete(ctx, &taskAPI.DeleteRequest{ID: "c1"})
		deleted <- err
	}()
	select {
	case err := <-deleted:
		t.Fatalf("Delete returned during the fallback: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(inner.coldCreateGate)
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	<-started
	got := inner.called()
	if !strings.HasPrefix(got, "create start clear-aborted kill-9-all delete arm-dump create ") || !strings.HasSuffix(got, " delete") && !strings.Contains(got, "create delete") {
		t.Fatalf("calls %q: the Delete should come after the cold create", got)
	}
}

// The restore at Start ends early enough for the cold start after it, if
// it fails, to fit in the caller's deadline; the cold start has the rest.
func TestRestoreLeavesTimeForTheFallback(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, _ := setup(prep, true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	callers, _ := ctx.Deadline()
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatal(err)
	}
	if len(inner.startDeadlines) != 2 {
		t.Fatalf("deadlines %v, want the restore's and the cold start's", inner.startDeadlines)
	}
	if restoreEnds := inner.startDeadlines[0]; restoreEnds.After(callers.Add(-10 * time.Second)) {
		t.Fatalf("the restore may run until %v, %v before the caller's deadline: no time left for the cold start", restoreEnds, callers.Sub(restoreEnds))
	}
	if coldEnds := inner.startDeadlines[1]; !coldEnds.Equal(callers) {
		t.Fatalf("the cold start's deadline %v, want the caller's %v", coldEnds, callers)
	}
}

// A restore whose process runs though Start failed after it (its stdin,
// console or pid file) is killed so that it can be deleted, and the
// container starts cold; it is not left running beside a failed Start.
func TestFallbackKillsARestoreThatRuns(t *testing.T) {
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}}
	s, inner, _ := setup(prep, true)
	inner.restoredThenFailed = true
	ctx := context.Background()
	if _, err := s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, &taskAPI.StartRequest{ID: "c1"}); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if got := inner.called(); got != "create start clear-aborted kill-9-all delete arm-dump create start" {
		t.Fatalf("calls %q", got)
	}
}

func TestNotRequestedPassesThrough(t *testing.T) {
	prep := &fakePreparer{err: restore.ErrNotRequested}
	s, inner, _ := setup(prep, false)
	req := &taskAPI.CreateTaskRequest{ID: "c1"}
	s.Create(context.Background(), req)
	if inner.creates[0] != req {
		t.Fatal("request not passed through unchanged")
	}
	// containerd's own restore is never intercepted.
	prep.err = nil
	prep.plan = &restore.Plan{ImagesDir: "/x"}
	req = &taskAPI.CreateTaskRequest{ID: "c2", Checkpoint: "/containerd/checkpoint"}
	s.Create(context.Background(), req)
	if inner.creates[1] != req {
		t.Fatal("containerd restore intercepted")
	}
}

func TestMetricsRecorded(t *testing.T) {
	m, err := metrics.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	prep := &fakePreparer{plan: &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}, metrics: m}
	s, _, _ := setup(prep, true) // the restore fails at Start: one fallback
	s.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c1", Bundle: "/b"})
	s.Start(ctx, &taskAPI.StartRequest{ID: "c1"})
	prep.plan = &restore.Plan{Ref: "r/a:v1", ImagesDir: "/cache/criu", Cached: true}
	s2, _, _ := setup(prep, false) // this one restores
	s2.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c2", Bundle: "/b"})
	s2.Start(ctx, &taskAPI.StartRequest{ID: "c2"})
	prep.plan, prep.err = nil, &restore.Error{Ref: "x", Err: restore.ErrDenied}
	s2.Create(ctx, &taskAPI.CreateTaskRequest{ID: "c3", Bundle: "/b"})

	st, err := m.Read()
	if err != nil {
		t.Fatal(err)
	}
	if st.Restores != 1 || st.Fallbacks["restore"] != 1 || st.Fallbacks["policy"] != 1 || st.CacheHits != 1 {
		t.Fatalf("metrics %+v", st)
	}
}

// Shutdown, which containerd calls after every task delete, waits for the
// cache fills only once no container is left, and answers before its
// caller's deadline even when a fill goes on.
func TestShutdownWaitsForFillsOnlyWhenItEndsTheShim(t *testing.T) {
	s, inner, _ := setup(&fakePreparer{err: restore.ErrNotRequested}, false)
	for _, id := range []string{"pause", "web"} {
		if _, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	fillEnd := make(chan struct{})
	s.filling.Go(func() { <-fillEnd; inner.record("fill-ended") })
	shutdown := func(timeout time.Duration) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if _, err := s.Shutdown(ctx, &taskAPI.ShutdownRequest{}); err != nil {
			t.Fatalf("Shutdown: %v (calls %q)", err, inner.called())
		}
	}

	// A container is left: no wait at all, although the fill runs on.
	if _, err := s.Delete(context.Background(), &taskAPI.DeleteRequest{ID: "web"}); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	shutdown(20 * time.Second)
	if waited := time.Since(began); waited > 10*time.Second {
		t.Fatalf("Shutdown with a container left waited %v for the fill", waited)
	}
	if got := inner.called(); got != "create create delete shutdown" {
		t.Fatalf("calls %q, want the shutdown passed on at once", got)
	}

	// The last container is gone: it waits, but answers before its
	// caller's deadline, the fill still running.
	if _, err := s.Delete(context.Background(), &taskAPI.DeleteRequest{ID: "pause"}); err != nil {
		t.Fatal(err)
	}
	shutdown(shutdownReserve + 300*time.Millisecond)
	if got := inner.called(); got != "create create delete shutdown delete shutdown" {
		t.Fatalf("calls %q, want the shutdown passed on within its deadline", got)
	}

	// With time enough, the shim goes only after the fill.
	go func() { time.Sleep(100 * time.Millisecond); close(fillEnd) }()
	shutdown(time.Minute)
	if got := inner.called(); got != "create create delete shutdown delete shutdown fill-ended shutdown" {
		t.Fatalf("calls %q, want the fill's end before the last shutdown", got)
	}
}

// A container the runc task service no longer has (a fallback whose cold
// create failed) is not left once containerd deletes it: the shim's last
// Shutdown still waits for the fills.
func TestDeletedContainerNotFoundIsNotLeft(t *testing.T) {
	s, inner, _ := setup(&fakePreparer{err: restore.ErrNotRequested}, false)
	if _, err := s.Create(context.Background(), &taskAPI.CreateTaskRequest{ID: "web"}); err != nil {
		t.Fatal(err)
	}
	inner.gone = true
	if _, err := s.Delete(context.Background(), &taskAPI.DeleteRequest{ID: "web"}); err == nil {
		t.Fatal("Delete of a container that is gone: no error")
	}
	s.mu.Lock()
	left := len(s.live)
	s.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d containers left after the last one's delete answered NotFound", left)
	}
}

// The trims' retries, while the cache stays over its limit, end when the
// shim is ending instead of holding its Shutdown.
func TestTrimStopsWhenTheShimEnds(t *testing.T) {
	prep := &fakePreparer{overLimit: true}
	ending := make(chan struct{})
	done := make(chan struct{})
	go func() { trimCache(context.Background(), prep, ending); close(done) }()
	for prep.trims.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	close(ending)
	select {
	case <-done:
	case <-time.After(10 * time.Second): // its retries take 31 s
		t.Fatal("the trim went on retrying after the shim began to end")
	}
	if n := prep.trims.Load(); n != 1 {
		t.Fatalf("%d evictions asked for, want 1", n)
	}
}

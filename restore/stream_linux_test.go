//go:build linux

package restore

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"oras.land/oras-go/v2/registry"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/nodeconfig"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/pack"
	"github.com/snapboot/snapboot/streamfs"
	"github.com/snapboot/snapboot/unpack"
)

func needFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("a streamed restore mounts FUSE: needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
}

// addStreamed pushes a checkpoint packed as `snapboot checkpoint` packs it:
// page images last, the stream index in the CRIU layer's annotations.
func (f *fakeRegistry) addStreamed(t *testing.T, tag string, pages []byte) (ocispec.Descriptor, *oci.Stream) {
	t.Helper()
	criu, _, st := f.addStreamedLayers(t, tag, pages, false)
	return criu, st
}

// addStreamedLayers is addStreamed, with rootfs changes as well when
// rootfs is set.
func (f *fakeRegistry) addStreamedLayers(t *testing.T, tag string, pages []byte, rootfs bool) (criu, rootfsLayer ocispec.Descriptor, st *oci.Stream) {
	t.Helper()
	return f.addPacked(t, tag, pages, rootfs, "")
}

// addPacked is addStreamedLayers with the CRIU images packed at level.
func (f *fakeRegistry) addPacked(t *testing.T, tag string, pages []byte, rootfs bool, level pack.Level) (criu, rootfsLayer ocispec.Descriptor, st *oci.Stream) {
	t.Helper()
	return f.addPackedWith(t, tag, pages, level, packed{rootfs: rootfs})
}

// packed says how addPackedWith makes the manifest.
type packed struct {
	rootfs       bool // with rootfs changes
	embedRootfs  bool // in the manifest, as `snapboot checkpoint` puts small ones
	withoutFirst bool // the first frame not in the manifest, as before it was
}

// addPackedWith is addPacked, the manifest made as p says.
func (f *fakeRegistry) addPackedWith(t *testing.T, tag string, pages []byte, level pack.Level, p packed) (criu, rootfsLayer ocispec.Descriptor, st *oci.Stream) {
	t.Helper()
	src := t.TempDir()
	for name, data := range map[string][]byte{"inventory.img": []byte(inventoryImage(t, tag)), "core-1.img": []byte(coreImage(t)), "pages-1.img": pages} {
		if err := os.WriteFile(filepath.Join(src, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	sz, err := pack.TarDir(context.Background(), src, &buf, level)
	if err != nil {
		t.Fatal(err)
	}
	criu = push(t, f.store, level.CRIUImagesMediaType(), buf.Bytes())
	if sz.Stream.Head == nil {
		t.Fatal("the first frame is not kept for the manifest")
	}
	if p.withoutFirst {
		sz.Stream.Head = nil
	}
	criu.Annotations = sz.Stream.Annotations()
	layers := []ocispec.Descriptor{criu}
	if p.rootfs {
		diff := tarZstd(t, entry{name: "etc/", typ: tar.TypeDir}, entry{name: "etc/app.log", body: "log line\n"})
		rootfsLayer = push(t, f.store, oci.MediaTypeRootfsDiff, diff)
		if p.embedRootfs {
			rootfsLayer.Data = diff
		}
		layers = append(layers, rootfsLayer)
	}
	f.addManifest(t, tag, testArtifact{}, layers...)
	return criu, rootfsLayer, sz.Stream
}

// gatedSource serves a layer up to `at` bytes, then waits for open.
type gatedSource struct {
	Source
	layer  ocispec.Descriptor
	at     int64
	open   chan struct{}
	tamper bool // flip a byte at `at` instead of waiting
}

func (g *gatedSource) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := g.Source.Fetch(ctx, d)
	if err != nil || d.Digest != g.layer.Digest {
		return rc, err
	}
	b, _ := io.ReadAll(rc)
	if g.tamper {
		b[g.at] ^= 0xff
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	return io.NopCloser(io.MultiReader(bytes.NewReader(b[:g.at]), &waitReader{open: g.open, r: bytes.NewReader(b[g.at:])})), nil
}

type waitReader struct {
	open chan struct{}
	r    io.Reader
}

func (w *waitReader) Read(p []byte) (int, error) {
	<-w.open
	return w.r.Read(p)
}

// A checkpoint packed with zstd or with LZ4 streams into CRIU's reads, and
// into the cache after.
func TestStreamedPrepare(t *testing.T) {
	needFUSE(t)
	for _, level := range []pack.Level{"", pack.LZ4} {
		t.Run(level.CRIUImagesMediaType(), func(t *testing.T) { testStreamedPrepare(t, level) })
	}
}

func testStreamedPrepare(t *testing.T, level pack.Level) {
	e := newEnv(t)
	pages := randomPages(9 << 20)
	criu, _, st := e.reg.addPacked(t, "v1", pages, false, level)
	if len(st.Frames) < 3 {
		t.Fatalf("%d frames", len(st.Frames))
	}
	// The registry holds back the last frame until told.
	gate := &gatedSource{Source: e.reg, layer: criu, at: criu.Size - st.Frames[len(st.Frames)-1].Size, open: make(chan struct{})}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return gate, nil }

	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err) // returned without the last frame: it did not wait for the download
	}
	defer plan.Release()
	if plan.stream == nil || plan.Cached {
		t.Fatalf("not streamed: cached=%v", plan.Cached)
	}
	if b, _ := os.ReadFile(filepath.Join(plan.ImagesDir, "inventory.img")); string(b) != inventoryImage(t, "v1") {
		t.Fatalf("inventory.img: %q", b)
	}
	link, err := os.Readlink(filepath.Join(plan.ImagesDir, "pages-1.img"))
	if err != nil || filepath.IsAbs(link) {
		t.Fatalf("pages-1.img should be a relative symlink: %q, %v", link, err)
	}
	// The page image reads up to what has arrived, then waits.
	f, err := os.Open(filepath.Join(plan.ImagesDir, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, 1<<20)
	if _, err := f.ReadAt(head, 0); err != nil || !bytes.Equal(head, pages[:1<<20]) {
		t.Fatalf("first MiB of the page image: %v", err)
	}
	got := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(io.NewSectionReader(f, 0, int64(len(pages))))
		got <- b
	}()
	select {
	case <-got:
		t.Fatal("read the whole page image before its last frame arrived")
	case <-time.After(200 * time.Millisecond):
	}
	close(gate.open)
	if b := <-got; !bytes.Equal(b, pages) {
		t.Fatalf("page image read through the stream: %d bytes, differ", len(b))
	}
	finishCached(t, e, plan, pages)
	if !openCache(t, e).IsUnpacked(plan.Digest) || plan.PulledBytes != criu.Size {
		t.Fatalf("after the download: unpacked=%v pulled=%d", openCache(t, e).IsUnpacked(plan.Digest), plan.PulledBytes)
	}
	// Under this test's cache only: other packages' tests mount streams
	// of their own at the same time.
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), e.cfg.Cache.Root) {
		t.Fatalf("streamfs still mounted:\n%s", mi)
	}

	plan2, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil || !plan2.Cached || plan2.stream != nil {
		t.Fatalf("second restore should come from the cache: %v", err)
	}
	plan2.Release()
}

func TestStreamedPrepareBadLastFrame(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	pages := randomPages(9 << 20)
	criu, st := e.reg.addStreamed(t, "v1", pages)
	last := st.Frames[len(st.Frames)-1]
	e.restorer.NewSource = func(registry.Reference) (Source, error) {
		return &gatedSource{Source: e.reg, layer: criu, at: criu.Size - last.Size/2, tamper: true}, nil
	}
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img"))
	if err == nil || len(b) >= len(pages) {
		t.Fatalf("read %d bytes of a page image whose last frame is bad, error %v", len(b), err)
	}
	ferr := plan.FinishStream(context.Background(), false)
	if !errors.Is(ferr, unpack.ErrCorrupt) || ReasonKind(ferr) != "invalid" {
		t.Fatalf("download error %v (kind %s)", ferr, ReasonKind(ferr))
	}
	if openCache(t, e).IsUnpacked(plan.Digest) {
		t.Fatal("a checkpoint with a bad frame was cached")
	}
	if ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "tmp")); len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "scratch-restore-") {
		t.Fatalf("left in tmp: %v (only the container's scratch directory should be)", ents)
	}
}

// A streamed restore that fails once the whole checkpoint is in (CRIU
// reading back past what streamfs keeps, for one) still caches it: the
// next restore reads it from files. One given up while the download runs
// keeps nothing (TestStreamedPrepareBadLastFrame, the tests that give up a
// stalled download).
func TestFailedStreamedRestoreCachesCompleteDownload(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	pages := randomPages(9 << 20)
	e.reg.addStreamed(t, "v1", pages)
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	if b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img")); err != nil || !bytes.Equal(b, pages) {
		t.Fatalf("read %d bytes of the page image: %v", len(b), err)
	}
	select {
	case <-plan.stream.done:
	case <-time.After(30 * time.Second):
		t.Fatal("the download did not end")
	}
	if err := plan.FinishStream(context.Background(), false); err != nil {
		t.Fatal(err)
	}
	waitCached(t, e, plan, pages)
}

// With [pull] stream = false, the whole checkpoint is in before Prepare
// returns, packed with zstd or with LZ4.
func TestStreamingOff(t *testing.T) {
	for _, level := range []pack.Level{"", pack.LZ4} {
		e := newEnv(t)
		off := false
		e.cfg.Pull.Stream = &off
		pages := randomPages(5 << 20)
		e.reg.addPacked(t, "v1", pages, false, level)
		plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
		if err != nil {
			t.Fatalf("%s: %v", level.CRIUImagesMediaType(), err)
		}
		if plan.stream != nil || plan.CacheFilled() != nil || !openCache(t, e).IsUnpacked(plan.Digest) {
			t.Fatalf("streamed with streaming off")
		}
		if b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img")); err != nil || !bytes.Equal(b, pages) {
			t.Fatalf("%s: pages-1.img: %d bytes, %v", level.CRIUImagesMediaType(), len(b), err)
		}
		plan.Release()
	}
}

// A checkpoint whose manifest does not carry the first frame (an older
// snapboot's, or one whose first frame is too large): a bad first frame
// is found before the restore can begin.
func TestStreamedPrepareBadFirstFrame(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	criu, _, _ := e.reg.addPackedWith(t, "v1", randomPages(9<<20), "", packed{withoutFirst: true})
	e.restorer.NewSource = func(registry.Reference) (Source, error) {
		return &gatedSource{Source: e.reg, layer: criu, at: 100, tamper: true}, nil
	}
	_, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if !errors.Is(err, unpack.ErrCorrupt) {
		t.Fatalf("got %v, want the bad frame before the restore could begin", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "tmp")); len(ents) != 0 {
		t.Fatalf("left in tmp: %v", ents)
	}
}

// The rootfs changes download beside the CRIU images: the restore waits
// for them as well, and a bad rootfs layer fails it before it begins.
func TestStreamedPrepareWithRootfs(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	_, rootfs, _ := e.reg.addStreamedLayers(t, "v1", randomPages(9<<20), true)
	gate := &gatedSource{Source: e.reg, layer: rootfs, at: 10, open: make(chan struct{})}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return gate, nil }
	done := prepareInBackground(t, e, "reg.test/apps/web:v1")
	select {
	case r := <-done:
		t.Fatalf("Prepare returned before the rootfs changes were in: %v", r.err)
	case <-time.After(300 * time.Millisecond):
	}
	close(gate.open)
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer r.plan.Release()
	if r.plan.stream == nil {
		t.Fatal("not streamed")
	}
	defer abandonStream(r.plan)
	if b, err := os.ReadFile(filepath.Join(r.plan.stream.filling.Dir, "rootfs", "etc", "app.log")); err != nil || string(b) != "log line\n" {
		t.Fatalf("rootfs changes: %q, %v", b, err)
	}

	e2 := newEnv(t)
	_, rootfs2, _ := e2.reg.addStreamedLayers(t, "v1", randomPages(9<<20), true)
	e2.restorer.NewSource = func(registry.Reference) (Source, error) {
		return &gatedSource{Source: e2.reg, layer: rootfs2, at: 20, tamper: true}, nil
	}
	if _, err := e2.prepare(t, "reg.test/apps/web:v1", overlayRootfs); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("a tampered rootfs layer: %v, want a digest error", err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e2.cfg.Cache.Root, "tmp")); len(ents) != 0 {
		t.Fatalf("left in tmp: %v", ents)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), e2.cfg.Cache.Root) {
		t.Fatalf("a stream is still mounted after the failed prepare:\n%s", mi)
	}
}

// abandonStream ends plan's stream without a restore (unmounting it). A
// download already complete is then cached in the background: it waits
// for that, so that the test's temporary directories are not removed
// under it.
func abandonStream(plan *Plan) {
	plan.FinishStream(context.Background(), false)
	if filled := plan.CacheFilled(); filled != nil {
		<-filled
	}
}

// heldSource holds one layer back until the fetch's context ends, and
// flips the byte at `at` of another.
type heldSource struct {
	Source
	held, tampered ocispec.Descriptor
	at             int64
}

func (h *heldSource) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := h.Source.Fetch(ctx, d)
	switch {
	case err != nil:
		return rc, err
	case d.Digest == h.held.Digest:
		rc.Close()
		<-ctx.Done()
		return nil, ctx.Err()
	case d.Digest == h.tampered.Digest:
		b, _ := io.ReadAll(rc)
		rc.Close()
		b[h.at] ^= 0xff
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	return rc, nil
}

// When the CRIU layer fails while the rootfs changes still download, the
// restore reports the CRIU layer's failure, not the rootfs download it
// cancelled.
func TestStreamedPrepareReportsFirstFailure(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	criu, rootfs, st := e.reg.addStreamedLayers(t, "v1", randomPages(9<<20), true)
	e.restorer.NewSource = func(registry.Reference) (Source, error) {
		// In the second frame: the first comes with the manifest.
		return &heldSource{Source: e.reg, held: rootfs, tampered: criu, at: st.Frames[0].Size + 100}, nil
	}
	_, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if !errors.Is(err, unpack.ErrCorrupt) || errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want the CRIU layer's corrupt frame", err)
	}
}

func randomPages(n int) []byte {
	b := make([]byte, n)
	x := uint32(1)
	for i := range b {
		x = x*1664525 + 1013904223
		if i%3 == 0 {
			b[i] = byte(x >> 24)
		}
	}
	return b
}

func openCache(t *testing.T, e *env) *cache.Cache {
	t.Helper()
	c, err := cache.Open(e.cfg.Cache.Root)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// setMount replaces the streamfs mount for one test.
func setMount(t *testing.T, mount func(string, []streamfs.File, string) (*streamfs.FS, error)) {
	t.Helper()
	prev := mountStreamfs
	mountStreamfs = mount
	t.Cleanup(func() { mountStreamfs = prev })
}

// fetchSignal tells when a layer's download has begun.
type fetchSignal struct {
	Source
	layer   ocispec.Descriptor
	fetched chan struct{}
	once    sync.Once
}

func (f *fetchSignal) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	if d.Digest == f.layer.Digest {
		f.once.Do(func() { close(f.fetched) })
	}
	return f.Source.Fetch(ctx, d)
}

// The page images' file system mounts while the layers download: the
// mount here waits for the CRIU layer's download to begin.
func TestStreamedMountOverlapsDownload(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	pages := randomPages(9 << 20)
	criu, _ := e.reg.addStreamed(t, "v1", pages)
	src := &fetchSignal{Source: e.reg, layer: criu, fetched: make(chan struct{})}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return src, nil }
	setMount(t, func(mountpoint string, files []streamfs.File, spillDir string) (*streamfs.FS, error) {
		select {
		case <-src.fetched:
			return streamfs.Mount(mountpoint, files, spillDir)
		case <-time.After(5 * time.Second):
			return nil, errors.New("mounted before the download began")
		}
	})
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	if plan.stream == nil {
		t.Fatal("not streamed: the mount waited for the download, which waited for the mount")
	}
	b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img"))
	if err != nil || !bytes.Equal(b, pages) {
		t.Fatalf("page image through the stream: %d bytes, %v", len(b), err)
	}
	if err := plan.FinishStream(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	<-plan.CacheFilled()
}

// Without FUSE, the checkpoint downloads whole before the restore: what
// the streamed attempt had unpacked is cleared first.
func TestStreamedMountFails(t *testing.T) {
	e := newEnv(t)
	setMount(t, func(string, []streamfs.File, string) (*streamfs.FS, error) {
		return nil, errors.New("no FUSE here")
	})
	pages := randomPages(9 << 20)
	e.reg.addStreamedLayers(t, "v1", pages, true)
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	if plan.stream != nil || plan.Cached || !openCache(t, e).IsUnpacked(plan.Digest) {
		t.Fatalf("stream=%v cached=%v: want the whole checkpoint unpacked", plan.stream != nil, plan.Cached)
	}
	if b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img")); err != nil || !bytes.Equal(b, pages) {
		t.Fatalf("pages-1.img: %d bytes, %v", len(b), err)
	}
	dir := filepath.Join(e.cfg.Cache.Root, "unpacked", plan.Digest.Encoded())
	if b, err := os.ReadFile(filepath.Join(dir, "rootfs", "etc", "app.log")); err != nil || string(b) != "log line\n" {
		t.Fatalf("rootfs changes: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "criu.tar.zst")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the streamed attempt's compressed copy is left: %v", err)
	}
	ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "tmp"))
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), "mnt-stream") {
			t.Fatalf("mountpoint left in tmp: %s", ent.Name())
		}
	}
}

// The layers of a checkpoint unpack within one budget, streamed or not:
// each fits the node's limit alone, together they do not, and the restore
// is refused instead of unpacking close to twice the limit (streamed), or
// without a limit once the CRIU layer took all of it (whole pull).
func TestLayersShareOneBudget(t *testing.T) {
	needFUSE(t)
	pages := randomPages(9 << 20)
	criuBytes := int64(len(inventoryImage(t, "v1")) + len(coreImage(t)) + len(pages))
	const rootfsBytes = int64(len("log line\n"))
	for _, c := range []struct {
		limit  int64
		fits   bool
		stream bool
	}{
		{criuBytes + rootfsBytes, true, true},
		{criuBytes + rootfsBytes - 1, false, true},
		{criuBytes, false, true},
		{criuBytes + rootfsBytes, true, false},
		{criuBytes + rootfsBytes - 1, false, false},
		{criuBytes, false, false},
	} {
		e := newEnv(t)
		e.cfg.Pull.MaxUnpackedSize = nodeconfig.ByteSize(c.limit)
		e.cfg.Pull.Stream = &c.stream
		e.reg.addStreamedLayers(t, "v1", pages, true)
		plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
		if err == nil {
			abandonStream(plan)
			plan.Release()
		}
		if c.fits {
			if err != nil {
				t.Fatalf("stream %v: layers of %d bytes within a limit of %d: %v", c.stream, criuBytes+rootfsBytes, c.limit, err)
			}
			continue
		}
		if !errors.Is(err, unpack.ErrTooLarge) {
			t.Fatalf("stream %v: layers of %d bytes, a limit of %d: got %v, want ErrTooLarge", c.stream, criuBytes+rootfsBytes, c.limit, err)
		}
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), e.cfg.Cache.Root) {
			t.Fatalf("a stream is still mounted after the refused prepare:\n%s", mi)
		}
	}
}

// deadlineSource records the deadline of the request that resolves the
// reference and of the one that fetches layer.
type deadlineSource struct {
	Source
	layer               ocispec.Descriptor
	mu                  sync.Mutex
	resolved, layerDead time.Time
}

func (d *deadlineSource) Resolve(ctx context.Context, reference string) (ocispec.Descriptor, error) {
	d.mu.Lock()
	d.resolved, _ = ctx.Deadline()
	d.mu.Unlock()
	return d.Source.Resolve(ctx, reference)
}

func (d *deadlineSource) Fetch(ctx context.Context, target ocispec.Descriptor) (io.ReadCloser, error) {
	if target.Digest == d.layer.Digest {
		d.mu.Lock()
		d.layerDead, _ = ctx.Deadline()
		d.mu.Unlock()
	}
	return d.Source.Fetch(ctx, target)
}

// The download that goes on during a streamed restore keeps the pull's
// deadline: pull.timeout bounds the whole pull, not what is left of it
// once the restore can begin.
func TestStreamedDownloadKeepsPullDeadline(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	criu, _ := e.reg.addStreamed(t, "v1", randomPages(9<<20))
	src := &deadlineSource{Source: e.reg, layer: criu}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return src, nil }
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	abandonStream(plan)
	plan.Release()
	src.mu.Lock()
	defer src.mu.Unlock()
	if src.resolved.IsZero() || src.layerDead.IsZero() {
		t.Fatalf("no deadline: resolve %v, layer %v", src.resolved, src.layerDead)
	}
	if !src.layerDead.Equal(src.resolved) {
		t.Fatalf("the layer's download has the deadline %v, the pull %v", src.layerDead, src.resolved)
	}
}

// stalledSource serves 100 bytes of a layer, then nothing until the
// fetch's context ends, as a stalled connection does.
type stalledSource struct {
	Source
	layer ocispec.Descriptor
}

func (s *stalledSource) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	rc, err := s.Source.Fetch(ctx, d)
	if err != nil || d.Digest != s.layer.Digest {
		return rc, err
	}
	b, _ := io.ReadAll(rc)
	return io.NopCloser(io.MultiReader(bytes.NewReader(b[:100]), stalled{ctx})), nil
}

type stalled struct{ ctx context.Context }

func (s stalled) Read([]byte) (int, error) {
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}

// detachMountsUnder detaches every mount below dir.
func detachMountsUnder(dir string) {
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			unix.Unmount(f[4], unix.MNT_DETACH)
		}
	}
}

// A streamed pull that has not reached the page images when pull.timeout
// ends fails with the deadline as its reason (kind "timeout"), not with
// the "context canceled" of the download the deadline stopped.
func TestStreamedPrepareTimesOut(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	e.cfg.Pull.Timeout = nodeconfig.Duration(300 * time.Millisecond)
	t.Cleanup(func() { detachMountsUnder(e.cfg.Cache.Root) }) // so that a failure here leaks nothing
	criu, _, _ := e.reg.addPackedWith(t, "v1", randomPages(9<<20), "", packed{withoutFirst: true})
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return &stalledSource{Source: e.reg, layer: criu}, nil }
	_, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if !errors.Is(err, context.DeadlineExceeded) || ReasonKind(err) != "timeout" {
		t.Fatalf("got %v (kind %s), want the pull's deadline", err, ReasonKind(err))
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), e.cfg.Cache.Root) {
		t.Fatalf("a stream is still mounted after the timeout:\n%s", mi)
	}
}

// The images directory of a streamed restore links the unpacked images and
// points at the streamed page images; a subdirectory, which CRIU does not
// read, is left out, and anything else is refused.
func TestLinkImages(t *testing.T) {
	unpacked, mnt := t.TempDir(), t.TempDir()
	for name, where := range map[string]string{"core-1.img": unpacked, "inventory.img": unpacked, "pages-1.img": mnt} {
		if err := os.WriteFile(filepath.Join(where, name), []byte(name), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(unpacked, "extra"), 0o700); err != nil {
		t.Fatal(err)
	}
	s := &stream{mountpoint: mnt}
	tail := []oci.TailFile{{Name: "pages-1.img", Size: int64(len("pages-1.img"))}}
	dir := filepath.Join(t.TempDir(), "images")
	if err := linkImages(unpacked, dir, s.mountpoint, tail, nil); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if got := strings.Join(names, " "); got != "core-1.img inventory.img pages-1.img" {
		t.Fatalf("images directory holds %q", got)
	}
	for _, name := range names {
		if b, err := os.ReadFile(filepath.Join(dir, name)); err != nil || string(b) != name {
			t.Fatalf("%s reads %q, %v", name, b, err)
		}
	}

	// A page image CRIU reads a page at a time, from the cache: linked
	// from its file, not from the mount.
	if err := os.WriteFile(filepath.Join(unpacked, "pages-2.img"), []byte("cached pages-2.img"), 0o600); err != nil {
		t.Fatal(err)
	}
	two := append(tail, oci.TailFile{Name: "pages-2.img", Size: int64(len("cached pages-2.img"))})
	dir = filepath.Join(t.TempDir(), "images")
	if err := linkImages(unpacked, dir, s.mountpoint, two, map[string]bool{"pages-2.img": true}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "pages-2.img")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("pages-2.img: %v, %v; want a link to the cached file", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "pages-2.img")); string(b) != "cached pages-2.img" {
		t.Fatalf("pages-2.img reads %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(dir, "pages-1.img")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("pages-1.img: %v, %v; want a symlink into the mount", fi, err)
	}
	os.Remove(filepath.Join(unpacked, "pages-2.img"))

	if err := unix.Mkfifo(filepath.Join(unpacked, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := linkImages(unpacked, filepath.Join(t.TempDir(), "images"), s.mountpoint, tail, nil); !errors.Is(err, oci.ErrInvalidArtifact) {
		t.Fatalf("a fifo among the images: %v, want ErrInvalidArtifact", err)
	}
}

// heldUntil holds the download of a layer until open is closed, and
// records what was downloaded.
type heldUntil struct {
	Source
	layer   ocispec.Descriptor
	open    chan struct{}
	mu      sync.Mutex
	fetched []digest.Digest
}

func (h *heldUntil) Fetch(ctx context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	h.mu.Lock()
	h.fetched = append(h.fetched, d.Digest)
	h.mu.Unlock()
	if d.Digest == h.layer.Digest {
		select {
		case <-h.open:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return h.Source.Fetch(ctx, d)
}

// With the first frame and the rootfs changes in the manifest, the restore
// can begin before the registry answers the CRIU layer's download, and the
// rootfs changes are not downloaded at all; the page images still stream,
// and the whole layer, first frame included, goes into the cache.
func TestStreamedPrepareFromManifest(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	t.Cleanup(func() { detachMountsUnder(e.cfg.Cache.Root) }) // so that a failure here leaks nothing
	pages := randomPages(9 << 20)
	criu, rootfs, _ := e.reg.addPackedWith(t, "v1", pages, "", packed{rootfs: true, embedRootfs: true})
	src := &heldUntil{Source: e.reg, layer: criu, open: make(chan struct{})}
	e.restorer.NewSource = func(registry.Reference) (Source, error) { return src, nil }
	done := prepareInBackground(t, e, "reg.test/apps/web:v1")
	var plan *Plan
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		plan = r.plan
	case <-time.After(10 * time.Second):
		close(src.open)
		if r := <-done; r.plan != nil {
			r.plan.Release()
		}
		t.Fatal("Prepare waited for the registry's answer to the CRIU layer's download")
	}
	defer plan.Release()
	if plan.stream == nil {
		t.Fatal("not streamed")
	}
	if b, _ := os.ReadFile(filepath.Join(plan.ImagesDir, "inventory.img")); string(b) != inventoryImage(t, "v1") {
		t.Fatalf("inventory.img: %q", b)
	}
	if b, err := os.ReadFile(filepath.Join(plan.stream.filling.Dir, "rootfs", "etc", "app.log")); err != nil || string(b) != "log line\n" {
		t.Fatalf("rootfs changes: %q, %v", b, err)
	}
	close(src.open)
	if b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img")); err != nil || !bytes.Equal(b, pages) {
		t.Fatalf("page image read through the stream: %d bytes, %v", len(b), err)
	}
	finishCached(t, e, plan, pages)
	src.mu.Lock()
	defer src.mu.Unlock()
	for _, d := range src.fetched {
		if d == rootfs.Digest {
			t.Fatal("the rootfs changes in the manifest were downloaded")
		}
	}
}

// finishCached ends a streamed restore that succeeded, and checks that the
// cache fill after it stored the page image.
func finishCached(t *testing.T, e *env, plan *Plan, pages []byte) {
	t.Helper()
	if err := plan.FinishStream(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	waitCached(t, e, plan, pages)
}

// waitCached waits for a finished stream's cache fill and checks that the
// cache holds the page image.
func waitCached(t *testing.T, e *env, plan *Plan, pages []byte) {
	t.Helper()
	select {
	case <-plan.CacheFilled():
	case <-time.After(30 * time.Second):
		t.Fatal("the cache fill after the restore did not end")
	}
	if b, _ := os.ReadFile(filepath.Join(e.cfg.Cache.Root, "unpacked", plan.Digest.Encoded(), "criu", "pages-1.img")); !bytes.Equal(b, pages) {
		t.Fatalf("the cache holds %d bytes of pages-1.img, not the page image", len(b))
	}
}

// prepared is what Prepare returned.
type prepared struct {
	plan *Plan
	err  error
}

// prepareInBackground runs Prepare for ref and sends what it returns. The
// bundle is made first, here: t.Fatal must not be called from the
// goroutine.
func prepareInBackground(t *testing.T, e *env, ref string) <-chan prepared {
	req := Request{ContainerID: "c1", Bundle: bundle(t, map[string]string{AnnotationCheckpoint: ref}), Rootfs: overlayRootfs}
	done := make(chan prepared, 1)
	go func() {
		plan, err := e.restorer.Prepare(context.Background(), req)
		done <- prepared{plan, err}
	}()
	return done
}

// A cache fill that fails after a restore whose rootfs stacks on the
// checkpoint's rootfs changes leaves them in place, out of the cache's
// way, until the container is gone: the fill used to remove them from
// under the running container.
func TestFailedCacheFillKeepsTheRootfs(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	t.Cleanup(func() { detachMountsUnder(e.cfg.Cache.Root) })
	e.reg.addStreamedLayers(t, "v1", randomPages(9<<20), true)
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	if plan.stream == nil || !plan.NeedsCache() {
		t.Fatalf("streamed %v, rootfs on the cache %v: want both", plan.stream != nil, plan.NeedsCache())
	}
	// The fill cannot make its directory (as on a full disk).
	if err := os.Mkdir(filepath.Join(plan.stream.filling.Dir, "criu.full"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := plan.FinishStream(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-plan.CacheFilled():
	case <-time.After(30 * time.Second):
		t.Fatal("the cache fill did not end")
	}
	if openCache(t, e).IsUnpacked(plan.Digest) {
		t.Fatal("cached, though the fill failed")
	}
	kept := filepath.Join(e.cfg.Cache.Root, "tmp", "detached-*", "rootfs", "etc", "app.log")
	if m, _ := filepath.Glob(kept); len(m) != 1 {
		t.Fatalf("the rootfs changes the container stacks on: %v, want them kept aside", m)
	}
	plan.Release()
	if m, _ := filepath.Glob(kept); len(m) != 0 {
		t.Fatalf("kept after the container was gone: %v", m)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "tmp")); len(ents) != 0 {
		t.Fatalf("left in tmp: %v", ents)
	}
}

// A restore of a checkpoint that another restore has been streaming into
// the cache for longer than cache.UnpackWait streams a private copy: it
// restores, fills no cache, and leaves nothing once released.
func TestStreamedPrepareBesideAnother(t *testing.T) {
	needFUSE(t)
	prev := cache.UnpackWait
	cache.UnpackWait = 100 * time.Millisecond
	t.Cleanup(func() { cache.UnpackWait = prev })
	e := newEnv(t)
	t.Cleanup(func() { detachMountsUnder(e.cfg.Cache.Root) })
	pages := randomPages(9 << 20)
	e.reg.addStreamedLayers(t, "v1", pages, false)
	first, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Release()
	second, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatalf("beside a restore holding the checkpoint's unpack: %v", err)
	}
	if second.stream == nil || !second.stream.filling.Private() {
		t.Fatal("not a streamed private copy")
	}
	if b, err := os.ReadFile(filepath.Join(second.ImagesDir, "pages-1.img")); err != nil || !bytes.Equal(b, pages) {
		t.Fatalf("the private copy's page image: %d bytes, %v", len(b), err)
	}
	dir := second.stream.filling.Dir
	if err := second.FinishStream(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.CacheFilled():
	case <-time.After(30 * time.Second):
		t.Fatal("the private copy's end did not come")
	}
	if openCache(t, e).IsUnpacked(second.Digest) {
		t.Fatal("the private copy went into the cache")
	}
	second.Release()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the private copy is left: %v", err)
	}
	finishCached(t, e, first, pages)
}

// A restore from the cache serves the page images through a streamfs mount
// of their cached files, unmounted once the restore is done; without FUSE
// it links the files.
func TestCachedPrepareServesPages(t *testing.T) {
	needFUSE(t)
	e := newEnv(t)
	pages := randomPages(9 << 20)
	e.reg.addStreamedLayers(t, "v1", pages, false)
	plan, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	finishCached(t, e, plan, pages)
	plan.Release()

	plan, err = e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan.Release()
	if !plan.Cached || plan.served == nil {
		t.Fatalf("cached=%v served=%v: want the cached page images served", plan.Cached, plan.served != nil)
	}
	mountpoint := plan.served.mountpoint
	link, err := os.Readlink(filepath.Join(plan.ImagesDir, "pages-1.img"))
	if err != nil || filepath.IsAbs(link) || filepath.Join(plan.ImagesDir, link) != filepath.Join(mountpoint, "pages-1.img") {
		t.Fatalf("pages-1.img should be a relative symlink into %s: %q, %v", mountpoint, link, err)
	}
	if b, err := os.ReadFile(filepath.Join(plan.ImagesDir, "pages-1.img")); err != nil || !bytes.Equal(b, pages) {
		t.Fatalf("served pages-1.img: %d bytes, %v", len(b), err)
	}
	if b, _ := os.ReadFile(filepath.Join(plan.ImagesDir, "inventory.img")); string(b) != inventoryImage(t, "v1") {
		t.Fatalf("inventory.img: %q", b)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); !strings.Contains(string(mi), mountpoint) {
		t.Fatalf("nothing mounted on %s", mountpoint)
	}
	if err := plan.FinishStream(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), e.cfg.Cache.Root) {
		t.Fatalf("still mounted after the restore:\n%s", mi)
	}
	if _, err := os.Stat(mountpoint); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mountpoint left: %v", err)
	}

	// No FUSE: the files themselves.
	setMount(t, func(string, []streamfs.File, string) (*streamfs.FS, error) {
		return nil, errors.New("no FUSE here")
	})
	plan2, err := e.prepare(t, "reg.test/apps/web:v1", overlayRootfs)
	if err != nil {
		t.Fatal(err)
	}
	defer plan2.Release()
	if !plan2.Cached || plan2.served != nil {
		t.Fatalf("cached=%v served=%v: want the files", plan2.Cached, plan2.served != nil)
	}
	if fi, err := os.Lstat(filepath.Join(plan2.ImagesDir, "pages-1.img")); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("pages-1.img without FUSE: %v, %v", fi, err)
	}
	ents, _ := os.ReadDir(filepath.Join(e.cfg.Cache.Root, "tmp"))
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), "mnt-serve") {
			t.Fatalf("mountpoint left in tmp after a failed mount: %s", ent.Name())
		}
	}
}

// While a pull runs, the collector waits for more than streamfs may hold
// in memory before it spills, with the free decoded frames beside it.
func TestPullHeadroomAboveStreamMemory(t *testing.T) {
	if pullHeadroom < streamfs.MaxInMemory+256<<20 {
		t.Fatalf("pullHeadroom is %d MiB, below streamfs's %d MiB and 256 MiB of free frames", pullHeadroom>>20, streamfs.MaxInMemory>>20)
	}
}

//go:build linux

package restore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/containerd/log"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/streamfs"
	"github.com/snapboot/snapboot/unpack"
)

// A streamed restore: the CRIU images layer downloads while runc restores.
// Create returns as soon as every image but the page images is unpacked;
// CRIU then reads the page images through streamfs, from memory, each read
// waiting for its bytes. Every zstd frame is checked against the digest the
// manifest lists for it before it is decoded, so CRIU never reads a byte
// that was not verified.
//
// The page images are not written to disk while CRIU needs the CPU: only
// the compressed layer is (a sixth of their size), and once the restore is
// done it is unpacked into the cache in the background, for the next
// restore.

// stream is a download that goes on while the container is restored.
type stream struct {
	mount      *pendingMount
	mountpoint string
	// releaseMountpoint lets go of the mount point's directory, once it
	// is unmounted and removed (see cache.MountDir).
	releaseMountpoint func()
	filling           *cache.Filling
	cancel            context.CancelFunc
	done              chan struct{} // closed when the download has ended
	err               error         // why it failed; read after done
	stats             pullStats
	compressed        *os.File     // the CRIU images layer as downloaded, verified once done
	codec             unpack.Codec // compressed's
	began             time.Time
	ended             time.Time
}

// pageFeed follows the CRIU images layer as it is unpacked: it sends the
// page images' content to streamfs instead of to files, and tells when
// everything before them is in.
type pageFeed struct {
	tail  []oci.TailFile
	names map[string]bool
	mount *pendingMount
	next  int
	ready chan struct{}
}

func (p *pageFeed) Start(name string, size int64) (io.Writer, error) {
	if p.next < len(p.tail) && name == p.tail[p.next].Name {
		if want := p.tail[p.next].Size; size != want {
			return nil, fmt.Errorf("%w: page image %s is %d bytes, the layer's index says %d", oci.ErrInvalidArtifact, name, size, want)
		}
		sfs, err := p.mount.wait()
		if err != nil {
			return nil, err
		}
		w, err := sfs.Writer(name)
		if err != nil {
			return nil, err
		}
		if p.next == 0 {
			close(p.ready) // everything before the page images is in
		}
		p.next++
		return w, nil
	}
	if p.next > 0 || p.names[name] {
		return nil, fmt.Errorf("%w: %s is out of place: the layer's tar must end with the page images %s lists", oci.ErrInvalidArtifact, name, oci.AnnotationTail)
	}
	return nil, nil
}

func (p *pageFeed) finished() error {
	if p.next != len(p.tail) {
		return fmt.Errorf("%w: the layer holds %d of the %d page images %s lists", oci.ErrInvalidArtifact, p.next, len(p.tail), oci.AnnotationTail)
	}
	return nil
}

// A streamed restore decodes frames on every CPU, at a lower priority than
// everything else once the page images begin: CRIU reading the pages, the
// FUSE server handing them over, and the download come first, and the
// decoders take the CPU time they leave. Before that, Create waits for the
// decoders, and they keep the shim's priority: lowered from the start,
// they were starved while the shim, containerd and runc set up (in one
// traced restore of the demo app the page images began 78 ms into the
// pull, against 59 ms this way; in 8 alternating rounds, the app answered
// in 0.89 s against 0.95 s). With one decoder CRIU waited for it while a
// CPU sat idle about a third of the time (2 CPUs); with decoders at the
// same priority as CRIU, CRIU was starved.
const (
	streamDecodeNice = 10
	// fillNice is the priority of the cache fill after a streamed
	// restore: it runs while the restored app answers its first requests.
	fillNice = 19
)

// streamWorkers is how many frames a streamed restore decodes at once: two
// more than there are CPUs. With one decoder per CPU, a CPU sat idle
// 10-25% of the time while the page images streamed (a system-wide
// profile of the demo app's restore, in 50 ms steps): the decoders, the
// download and the FUSE replies hand frames on to each other, and with
// no spare decoder a wait anywhere left a CPU with nothing to run. More
// decoders fill some of it. In 8-round compares on 2 CPUs the app
// answered in 0.77 against 0.86 s with two more (1.29 against 1.35 CPU-s
// per start: the same work, less idle time), 0.78 against 0.83 s with one
// more, and 0.81 against 0.78 s with six in all instead of four (more CPU
// time, not less). At most 8 CPUs count: CRIU reads the page images at
// 1–1.5 GB/s, which eight decoders outrun (about 1 GB/s each), and each
// decoder holds frames in memory (see the memory limit in pullGC).
func streamWorkers() int { return min(runtime.NumCPU(), 8) + 2 }

// startStream begins unpacking into filling in the background and returns
// once the images other than the page images are in, with the page images
// served from a streamfs mount. It returns nil and no error when streaming
// is not possible here (no FUSE): the caller then unpacks the whole layer.
func (r *Restorer) startStream(ctx context.Context, a *artifact, filling *cache.Filling, f *Fetched) (*stream, error) {
	mountpoint, releaseMountpoint, err := a.cache.MountDir("stream")
	if err != nil {
		return nil, err
	}
	files := make([]streamfs.File, len(a.ck.Stream.Tail))
	names := map[string]bool{}
	for i, t := range a.ck.Stream.Tail {
		files[i] = streamfs.File{Name: t.Name, Size: t.Size}
		names[t.Name] = true
	}
	// The compressed layer is kept beside the unpack, for the cache fill
	// after the restore: a few tens of megabytes to write, where the page
	// images are hundreds.
	compressed, err := os.Create(filepath.Join(filling.Dir, "criu.tar.zst"))
	if err != nil {
		os.Remove(mountpoint)
		releaseMountpoint()
		return nil, err
	}
	// The download outlives the Create request that starts it, but not the
	// pull's deadline (pull.timeout from the start of the fetch). Until the
	// restore can begin, the request's end still cancels it.
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Duration(r.cfg.Pull.Timeout))
	}
	bg, cancel := context.WithDeadline(context.WithoutCancel(ctx), deadline)
	stopLink := context.AfterFunc(ctx, cancel)
	// The file system is first needed by the first page image: it mounts
	// while the registry answers and the images before it unpack.
	s := &stream{mount: mountAsync(mountpoint, files, filling.Dir), mountpoint: mountpoint, releaseMountpoint: releaseMountpoint, filling: filling, cancel: cancel,
		done: make(chan struct{}), began: time.Now(), compressed: compressed, codec: codecOf(a.ck.CRIU)}
	feed := &pageFeed{tail: a.ck.Stream.Tail, names: names, mount: s.mount, ready: make(chan struct{})}
	pull := &streamPull{feed: feed, keep: s.compressed, rootfsDone: make(chan struct{})}
	go func() {
		defer close(s.done)
		err := r.pullLayers(bg, a, filling.Dir, &s.stats, pull)
		if err == nil {
			err = feed.finished()
		}
		s.ended = time.Now()
		if err != nil {
			s.err = err
			if sfs, _ := s.mount.wait(); sfs != nil {
				sfs.Fail(err)
			}
		}
	}()
	// The restore can begin once everything before the page images is in,
	// and the rootfs changes. A small checkpoint may be in whole by then:
	// the download's end is no failure if the two are done.
	ready := func() bool {
		for _, c := range []chan struct{}{feed.ready, pull.rootfsDone} {
			select {
			case <-c:
			case <-s.done:
				select {
				case <-c:
				default:
					return false
				}
			}
		}
		return true
	}
	if ready() {
		stopLink()
		f.Timings.Pull = time.Since(s.began)
		return s, nil
	}
	stopLink()
	s.close()
	compressed.Close()
	if _, merr := s.mount.wait(); merr != nil && errors.Is(s.err, errNoStreamfs) {
		log.G(ctx).WithError(merr).Warn("snapboot: cannot stream the page images; downloading the whole checkpoint before the restore")
		if err := clearFilling(filling.Dir); err != nil {
			filling.Abort()
			return nil, err
		}
		return nil, nil
	}
	filling.Abort()
	if s.err == nil {
		s.err = errors.New("the download ended before the page images")
	}
	if cerr := ctx.Err(); cerr != nil && !errors.Is(s.err, cerr) {
		// The request ended first (pull.timeout, or the caller went away)
		// and stopped the download: that is the reason, not the download's
		// own "context canceled".
		return nil, fmt.Errorf("pull and unpack: %w before the page images began: %w", cerr, s.err)
	}
	return nil, fmt.Errorf("pull and unpack: %w", s.err)
}

// streamPull is how pullLayers treats the CRIU images layer of a streamed
// restore: its page images go to feed, and its compressed bytes to keep.
// rootfsDone is closed once the rootfs changes are unpacked (at once when
// there are none).
type streamPull struct {
	feed       *pageFeed
	keep       io.Writer
	rootfsDone chan struct{}
}

// finish waits for the download to end and unmounts the page images. With
// abandon set (the restore failed or was given up), a download still under
// way is stopped first and nothing is kept. Otherwise, or when the download
// had already ended well, the checkpoint is unpacked into the cache in the
// background. Either way done is called once, with what ends the plan's
// hold on what is left (the cached checkpoint, or the directory of a fill
// that failed under a rootfs stacked on it), or nil.
// It returns why the download failed, if it did. When it failed after a
// restore whose rootfs is stacked on the directory (keep), that directory
// is moved out of the cache's way and returned, for the caller to remove
// when the container is gone.
func (s *stream) finish(ctx context.Context, abandon, keep bool, done func(free func())) (*detached, error) {
	if abandon {
		select {
		case <-s.done:
			// The restore failed with the whole checkpoint in and
			// verified: it is cached all the same. The next restore reads
			// it from files, which CRIU may read in any order; streamfs
			// keeps only what CRIU has not read far past (a process tree
			// whose copy-on-write memory CRIU reads first, the rest after).
			if s.err == nil {
				abandon = false
				log.G(ctx).Info("snapboot: the streamed restore failed after the download was complete; the checkpoint is cached for the next restore")
			}
		default:
		}
		if abandon {
			s.cancel()
		}
	}
	<-s.done
	s.close()
	if abandon || s.err != nil {
		s.compressed.Close()
	}
	switch {
	case abandon:
		s.filling.Abort()
		done(nil)
		return nil, s.err
	case s.err != nil:
		log.G(ctx).WithError(s.err).Warn("snapboot: the checkpoint's download failed after the restore had read what it needed; it is not cached")
		done(nil)
		return s.endUncached(ctx, keep), s.err
	case s.filling.Private():
		// A copy of its own, which another unpack of the checkpoint
		// fills the cache for.
		s.compressed.Close()
		os.Remove(s.compressed.Name())
		done(s.endUncached(ctx, keep).remove)
		return nil, nil
	}
	go func() {
		ctx := context.WithoutCancel(ctx)
		defer unpack.LowerPriority(fillNice)()
		u, err := s.fillCache(ctx)
		if err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: the streamed checkpoint could not be cached")
			done(s.endUncached(ctx, keep).remove)
			return
		}
		done(u.Release)
	}()
	return nil, nil
}

// endUncached ends a restore's unpack that is not to be cached. When the
// restored container's rootfs stacks on its directory (keep), the
// directory is moved out of the cache's way and returned, for the caller
// to remove when the container is gone; otherwise it is removed at once.
func (s *stream) endUncached(ctx context.Context, keep bool) *detached {
	if !keep {
		s.filling.Abort()
		return nil
	}
	dir, release, err := s.filling.Detach(ctx)
	if err != nil {
		// Kept where it is, and the unpack with it, until the container
		// is gone.
		log.G(ctx).WithError(err).Warn("snapboot: could not move the uncached checkpoint aside; it stays in the cache's tmp until the container is deleted")
		return &detached{release: s.filling.Abort}
	}
	return &detached{dir: dir, release: release}
}

// fillCache unpacks the whole CRIU images layer, from the kept copy,
// beside the images unpacked while streaming, swaps it in and moves the
// checkpoint into the cache. If it fails, the unpack is still under way:
// the restored container's rootfs may stack on its directory.
func (s *stream) fillCache(ctx context.Context) (*cache.Unpacked, error) {
	defer pullCPUs(2)() // this goroutine and its decoder, both lowered
	dir := filepath.Join(s.filling.Dir, "criu")
	full := dir + ".full"
	err := os.Mkdir(full, 0o700)
	if err == nil {
		_, err = s.compressed.Seek(0, io.SeekStart)
	}
	if err == nil {
		// One CPU, at the lowest priority: the restored app is answering
		// its first requests. The frames were verified as they streamed in.
		_, err = unpack.TarCompressed(ctx, s.compressed, full,
			unpack.Options{Mode: unpack.CRIUImages, Codec: s.codec, SkipFrameChecksums: true, Workers: 1, Nice: fillNice})
	}
	s.compressed.Close()
	if err == nil {
		err = os.Remove(s.compressed.Name())
	}
	if err == nil {
		err = os.RemoveAll(dir)
	}
	if err == nil {
		err = os.Rename(full, dir)
	}
	if err != nil {
		return nil, err
	}
	return s.filling.Commit()
}

// flowStats is the page images' mount's Stalls and Spilled, once runc's
// restore has returned (CRIU has read them all, or given up).
func (s *stream) flowStats() (stalls int, spilled int64) {
	select {
	case <-s.mount.done:
	default:
		return 0, 0 // not mounted yet
	}
	sfs, err := s.mount.wait()
	if err != nil {
		return 0, 0
	}
	return sfs.Stalls(), sfs.Spilled()
}

// close unmounts the page images.
func (s *stream) close() {
	s.cancel()
	if sfs, err := s.mount.wait(); err == nil {
		if err := sfs.Close(); err != nil {
			log.L.WithError(err).Warn("snapboot: unmounting the streamed page images failed")
			return // held until the shim exits; Prune unmounts it then
		}
	}
	os.Remove(s.mountpoint)
	s.releaseMountpoint()
}

// errNoStreamfs is a streamfs mount's failure: the restore then unpacks
// the whole checkpoint before it begins.
var errNoStreamfs = errors.New("cannot mount the page images' file system")

// mountStreamfs is streamfs.Mount; tests replace it.
var mountStreamfs = streamfs.Mount

// pendingMount is a streamfs mount under way.
type pendingMount struct {
	done chan struct{}
	fs   *streamfs.FS
	err  error
}

func mountAsync(mountpoint string, files []streamfs.File, spillDir string) *pendingMount {
	m := &pendingMount{done: make(chan struct{})}
	go func() {
		defer close(m.done)
		if m.fs, m.err = mountStreamfs(mountpoint, files, spillDir); m.err != nil {
			m.err = fmt.Errorf("%w: %w", errNoStreamfs, m.err)
		}
	}()
	return m
}

// wait returns the mounted file system once the mount is done.
func (m *pendingMount) wait() (*streamfs.FS, error) {
	<-m.done
	return m.fs, m.err
}

// clearFilling removes what a streamed pull left in dir, for the whole
// pull to begin afresh.
func clearFilling(dir string) error {
	for _, name := range []string{"criu", "rootfs", "criu.tar.zst"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// detached is a failed download's directory that a restored container's
// rootfs still stacks on.
type detached struct {
	dir     string
	release func()
}

func (d *detached) remove() {
	if d != nil {
		os.RemoveAll(d.dir)
		d.release()
	}
}

// linkImages makes the directory runc restores from while the page images
// stream, or are served from the cache (servePages): hard links to the
// images unpacked so far, and for each page image a relative symlink into
// the streamfs mount at mountpoint. Relative, because CRIU opens the page
// images after it has entered the container's mount namespace, through its
// descriptor of the images directory. The page images in fromFiles are
// linked as the other images are, from unpacked, where they must be.
func linkImages(unpacked, dir, mountpoint string, tail []oci.TailFile, fromFiles map[string]bool) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	skip := map[string]bool{}
	for _, t := range tail {
		if fromFiles[t.Name] {
			continue
		}
		skip[t.Name] = true
		rel, err := filepath.Rel(dir, filepath.Join(mountpoint, t.Name))
		if err != nil {
			return err
		}
		if err := os.Symlink(rel, filepath.Join(dir, t.Name)); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(dir, t.Name)); err != nil {
			return fmt.Errorf("streamed page image: %w", err)
		}
	}
	entries, err := os.ReadDir(unpacked)
	if err != nil {
		return err
	}
	for _, e := range entries {
		switch {
		case skip[e.Name()]:
		case e.Type().IsRegular():
			if err := os.Link(filepath.Join(unpacked, e.Name()), filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		case e.IsDir():
			// CRIU reads no subdirectory of its images directory: left
			// out, as confine leaves it out of a narrowed copy.
		default:
			return fmt.Errorf("%w: %s in the CRIU images is not a regular file", oci.ErrInvalidArtifact, e.Name())
		}
	}
	return nil
}

// cached is the unpacked checkpoint a streamed restore's background cache
// fill ends with, held for the plan (eviction must leave a checkpoint alone
// while a container's rootfs stacks on it).
type cached struct {
	mu       sync.Mutex
	free     func() // ends the hold on what the fill left, or nil
	released bool
	done     chan struct{}
}

func newCached() *cached { return &cached{done: make(chan struct{})} }

// set hands over what ends the hold on the fill's result (the cached
// checkpoint, or the directory of a failed fill the rootfs stacks on), or
// nil; it is called at once if the plan was released.
func (c *cached) set(free func()) {
	c.mu.Lock()
	if c.released {
		if free != nil {
			defer free()
		}
	} else {
		c.free = free
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *cached) release() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.released = true
	free := c.free
	c.free = nil
	c.mu.Unlock()
	if free != nil {
		free()
	}
}

// served is a streamfs mount that serves a cached checkpoint's page images
// from their files in the cache, for one restore.
type served struct {
	fs         *streamfs.FS
	mountpoint string
	release    func()
}

// servePages mounts the page images tail lists, from the unpacked CRIU
// images in criuDir, on a streamfs mount of the cache, for CRIU to read
// them there instead of from the files: on a machine whose memory is dear
// to populate (a VM that hands freed memory back to its host at once),
// a FUSE read, for which the kernel pins the reader's pages before it
// copies into them, filled 512 MiB of new memory in 0.5-0.8 s where a
// read from the file in the page cache, which faults each page in during
// the copy, took 2.1-3.2 s. The replies are spliced from the files: no
// copy in the shim.
func servePages(c *cache.Cache, criuDir string, tail []oci.TailFile) (_ *served, err error) {
	sv := &served{}
	defer func() {
		if err != nil {
			sv.close()
		}
	}()
	files := make([]streamfs.File, 0, len(tail))
	defer func() {
		// streamfs serves duplicates of the descriptors.
		for _, f := range files {
			f.Backing.Close()
		}
	}()
	for _, t := range tail {
		f, err := os.Open(filepath.Join(criuDir, t.Name))
		if err != nil {
			return nil, err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, err
		}
		if !fi.Mode().IsRegular() {
			f.Close()
			return nil, fmt.Errorf("%w: %s in the cache is not a regular file", oci.ErrInvalidArtifact, t.Name)
		}
		files = append(files, streamfs.File{Name: t.Name, Size: fi.Size(), Backing: f})
	}
	if sv.mountpoint, sv.release, err = c.MountDir("serve"); err != nil {
		return nil, err
	}
	if sv.fs, err = mountStreamfs(sv.mountpoint, files, ""); err != nil {
		return nil, fmt.Errorf("%w: %w", errNoStreamfs, err)
	}
	return sv, nil
}

// close unmounts the page images.
func (sv *served) close() {
	if sv == nil {
		return
	}
	if sv.fs != nil {
		if err := sv.fs.Close(); err != nil {
			log.L.WithError(err).Warn("snapboot: unmounting the cached page images failed")
			return // held until the shim exits; Prune unmounts it then
		}
	}
	if sv.mountpoint != "" {
		os.Remove(sv.mountpoint)
		sv.release()
	}
}

//go:build linux

package restore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containerd/log"

	"github.com/snapboot/snapboot/cache"
	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/streamfs"
)

// A streamed restore: the checkpoint's layers download in the background
// while runc restores. Create returns as soon as every image but the page
// images is unpacked; CRIU then reads the page images through streamfs,
// and each read waits for its bytes. Every zstd frame is checked against
// the digest the manifest lists for it before it is decoded, so CRIU never
// reads a byte that was not verified. The unpacked checkpoint goes into the
// cache once the download is complete.

// stream is a download that goes on while the container is restored.
type stream struct {
	fs      *streamfs.FS
	filling *cache.Filling
	cancel  context.CancelFunc
	done    chan struct{} // closed when the download has ended
	err     error         // why it failed; read after done
	stats   pullStats
	began   time.Time
	ended   time.Time
}

// pageFeed follows the CRIU images layer as it is unpacked: it hands the
// page images to streamfs as they are written, and tells when everything
// before them is in.
type pageFeed struct {
	tail  []oci.TailFile
	names map[string]bool
	dir   string // where the layer is unpacked
	fs    *streamfs.FS
	next  int
	ready chan struct{}
}

func (p *pageFeed) Start(name string, size int64) error {
	if p.next < len(p.tail) && name == p.tail[p.next].Name {
		if want := p.tail[p.next].Size; size != want {
			return fmt.Errorf("%w: page image %s is %d bytes, the layer's index says %d", oci.ErrInvalidArtifact, name, size, want)
		}
		f, err := os.Open(filepath.Join(p.dir, name))
		if err != nil {
			return err
		}
		if err := p.fs.Attach(name, f); err != nil {
			f.Close()
			return err
		}
		if p.next == 0 {
			close(p.ready) // everything before the page images is in
		}
		p.next++
		return nil
	}
	if p.next > 0 || p.names[name] {
		return fmt.Errorf("%w: %s is out of place: the layer's tar must end with the page images %s lists", oci.ErrInvalidArtifact, name, oci.AnnotationTail)
	}
	return nil
}

func (p *pageFeed) Wrote(name string, n int64) { p.fs.Written(name, n) }

func (p *pageFeed) finished() error {
	if p.next != len(p.tail) {
		return fmt.Errorf("%w: the layer holds %d of the %d page images %s lists", oci.ErrInvalidArtifact, p.next, len(p.tail), oci.AnnotationTail)
	}
	return nil
}

// startStream begins unpacking into filling in the background and returns
// once the images other than the page images are in, with the page images
// served from a streamfs mount. It returns nil and no error when streaming
// is not possible here (no FUSE): the caller then unpacks the whole layer.
func (r *Restorer) startStream(ctx context.Context, a *artifact, filling *cache.Filling, f *Fetched) (*stream, error) {
	mountpoint, err := a.cache.TempDir("stream")
	if err != nil {
		return nil, err
	}
	files := make([]streamfs.File, len(a.ck.Stream.Tail))
	names := map[string]bool{}
	for i, t := range a.ck.Stream.Tail {
		files[i] = streamfs.File{Name: t.Name, Size: t.Size}
		names[t.Name] = true
	}
	sfs, err := streamfs.Mount(mountpoint, files)
	if err != nil {
		os.Remove(mountpoint)
		log.G(ctx).WithError(err).Warn("snapboot: cannot stream the page images; downloading the whole checkpoint before the restore")
		return nil, nil
	}
	// The download outlives the Create request that starts it. Until the
	// restore can begin, the request's end still cancels it.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(r.cfg.Pull.Timeout))
	stopLink := context.AfterFunc(ctx, cancel)
	s := &stream{fs: sfs, filling: filling, cancel: cancel, done: make(chan struct{}), began: time.Now()}
	feed := &pageFeed{tail: a.ck.Stream.Tail, names: names, dir: filepath.Join(filling.Dir, "criu"), fs: sfs, ready: make(chan struct{})}
	go func() {
		defer close(s.done)
		err := r.pullLayers(bg, a, filling.Dir, &s.stats, feed)
		if err == nil {
			err = feed.finished()
		}
		s.ended = time.Now()
		if err != nil {
			s.err = err
			sfs.Fail(err)
		}
	}()
	select {
	case <-feed.ready:
		stopLink()
		f.Timings.Pull = time.Since(s.began)
		return s, nil
	case <-s.done:
		stopLink()
		s.close()
		filling.Abort()
		if s.err == nil {
			s.err = errors.New("the download ended before the page images")
		}
		return nil, fmt.Errorf("pull and unpack: %w", s.err)
	}
}

// finish waits for the download to end, unmounts the page images and puts
// the unpacked checkpoint into the cache if the download succeeded. With
// abandon set (the restore failed or was given up), the download is
// stopped first and nothing is kept. It returns the unpacked checkpoint, or
// nil; and when the download failed after a restore whose rootfs is
// stacked on the directory (keep), that directory, moved out of the
// cache's way, for the caller to remove when the container is gone.
func (s *stream) finish(ctx context.Context, abandon, keep bool) (*cache.Unpacked, *detached) {
	if abandon {
		s.cancel()
	}
	<-s.done
	s.close()
	switch {
	case abandon:
		s.filling.Abort()
		return nil, nil
	case s.err != nil:
		log.G(ctx).WithError(s.err).Warn("snapboot: the checkpoint's download failed after the restore had read what it needed; it is not cached")
		if !keep {
			s.filling.Abort()
			return nil, nil
		}
		dir, release, err := s.filling.Detach(ctx)
		if err != nil {
			log.G(ctx).WithError(err).Warn("snapboot: could not move the failed download aside; the restored container's rootfs changes may go")
			s.filling.Abort()
			return nil, nil
		}
		return nil, &detached{dir: dir, release: release}
	}
	u, err := s.filling.Commit()
	if err != nil {
		log.G(ctx).WithError(err).Warn("snapboot: the downloaded checkpoint could not be cached")
		return nil, nil
	}
	return u, nil
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

// close unmounts the page images.
func (s *stream) close() {
	s.cancel()
	mp := s.fs.Mountpoint
	if err := s.fs.Close(); err != nil {
		log.L.WithError(err).Warn("snapboot: unmounting the streamed page images failed")
		return
	}
	os.Remove(mp)
}

// linkImages makes the directory runc restores from while the page images
// stream: hard links to the images unpacked so far, and for each page image
// a relative symlink into the streamfs mount. Relative, because CRIU opens
// the page images after it has entered the container's mount namespace,
// through its descriptor of the images directory.
func linkImages(unpacked, dir string, s *stream, tail []oci.TailFile) error {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return err
	}
	skip := map[string]bool{}
	for _, t := range tail {
		skip[t.Name] = true
		rel, err := filepath.Rel(dir, filepath.Join(s.fs.Mountpoint, t.Name))
		if err != nil {
			return err
		}
		if err := os.Symlink(rel, filepath.Join(dir, t.Name)); err != nil {
			return err
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
		default:
			return fmt.Errorf("%w: %s in the CRIU images is not a regular file", oci.ErrInvalidArtifact, e.Name())
		}
	}
	return nil
}

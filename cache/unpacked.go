package cache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
)

// Unpacked is a checkpoint unpacked in the cache and held in use: eviction
// leaves it alone until Release.
type Unpacked struct {
	Dir string // holds criu/ and, when the checkpoint has rootfs changes, rootfs/
	// Created is true when this call unpacked it (false: it was already there).
	Created bool

	release func()
}

// CRIUDir is the directory of CRIU images.
func (u *Unpacked) CRIUDir() string { return filepath.Join(u.Dir, "criu") }

// RootfsDir is the unpacked rootfs-changes layer, usable as an overlay lowerdir.
func (u *Unpacked) RootfsDir() string { return filepath.Join(u.Dir, "rootfs") }

// Release ends this use of the unpacked checkpoint. It is safe to call twice.
func (u *Unpacked) Release() {
	if u != nil && u.release != nil {
		u.release()
		u.release = nil
	}
}

const completeMarker = ".snapboot-complete"

// Unpack returns the unpacked checkpoint with manifest digest key, calling
// fill to unpack it into an empty directory if it is not in the cache yet.
// fill's directory is moved into place only when fill succeeds; a failed or
// interrupted fill leaves nothing behind in unpacked/. Concurrent callers
// for one key, from any process, unpack it once.
func (c *Cache) Unpack(ctx context.Context, key digest.Digest, fill func(dir string) error) (*Unpacked, error) {
	u, f, err := c.BeginUnpack(ctx, key)
	if err != nil || f == nil {
		return u, err
	}
	if err := fill(f.Dir); err != nil {
		f.Abort()
		return nil, err
	}
	u, err = f.Commit()
	if err != nil {
		f.Abort()
	}
	return u, err
}

// Filling is an unpack in progress. Its owner fills Dir, then calls Commit
// or Abort; until then, other unpacks of the same checkpoint wait.
type Filling struct {
	Dir string

	c       *Cache
	final   string
	unlock  func()
	inUse   func()
	ended   bool
	private func() // removes Dir: a private copy, not to be cached
}

// UnpackWait is how long BeginUnpack waits for another unpack of the same
// checkpoint before it unpacks a private copy. A streamed restore holds
// its unpack through the restore and the cache fill after it; the same
// checkpoint's next restores would otherwise wait for all of that, or
// until their pull deadline and then cold-start.
var UnpackWait = 10 * time.Second

// Private reports whether the directory is a private copy that Commit
// does not put in the cache (another unpack of the checkpoint was under
// way for longer than BeginUnpack waits).
func (f *Filling) Private() bool { return f.private != nil }

// BeginUnpack returns the unpacked checkpoint with manifest digest key if
// it is in the cache, and otherwise an empty directory to unpack it into.
// Unlike Unpack, it lets the caller use the directory while it is still
// being filled (a restore can start before the page images are in). While
// another process unpacks the same checkpoint it waits, until ctx ends.
func (c *Cache) BeginUnpack(ctx context.Context, key digest.Digest) (*Unpacked, *Filling, error) {
	return c.beginUnpack(ctx, key, false)
}

// BeginUnpackOrCopy is BeginUnpack for a restore, which must not wait
// long: while another process unpacks the same checkpoint it waits for up
// to UnpackWait, and then returns a private copy's directory
// (Filling.Private), which is not put in the cache.
func (c *Cache) BeginUnpackOrCopy(ctx context.Context, key digest.Digest) (*Unpacked, *Filling, error) {
	return c.beginUnpack(ctx, key, true)
}

func (c *Cache) beginUnpack(ctx context.Context, key digest.Digest, mayCopy bool) (*Unpacked, *Filling, error) {
	if err := key.Validate(); err != nil {
		return nil, nil, err
	}
	final := filepath.Join(c.root, "unpacked", key.Encoded())
	inUse, err := c.holdShared(ctx, "use-"+key.Encoded())
	if err != nil {
		return nil, nil, err
	}
	if complete(final) {
		touch(final)
		return &Unpacked{Dir: final, release: inUse}, nil, nil
	}
	waitCtx, cancel := ctx, context.CancelFunc(func() {})
	if mayCopy {
		waitCtx, cancel = context.WithTimeout(ctx, UnpackWait)
	}
	unlock, err := c.lock(waitCtx, "unpack-"+key.Encoded())
	cancel()
	if err != nil && mayCopy && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		if complete(final) {
			touch(final)
			return &Unpacked{Dir: final, release: inUse}, nil, nil
		}
		dir, release, err := c.ScratchDir("unpack-" + key.Encoded()[:16])
		if err != nil {
			inUse()
			return nil, nil, err
		}
		return nil, &Filling{Dir: dir, c: c, unlock: func() {}, inUse: inUse, private: release}, nil
	}
	if err != nil {
		inUse()
		return nil, nil, err
	}
	if complete(final) {
		unlock()
		touch(final)
		return &Unpacked{Dir: final, release: inUse}, nil, nil
	}
	fail := func(err error) (*Unpacked, *Filling, error) {
		unlock()
		inUse()
		return nil, nil, err
	}
	// A directory without the marker is a leftover of a crash: replace it.
	if err := os.RemoveAll(final); err != nil {
		return fail(fmt.Errorf("remove incomplete unpack: %w", err))
	}
	// Holding the lock, any unpack directory of this key is a leftover of a
	// process that died mid-unpack.
	leftovers, _ := filepath.Glob(filepath.Join(c.root, "tmp", key.Encoded()+"-*"))
	for _, l := range leftovers {
		os.RemoveAll(l)
	}
	tmp, err := os.MkdirTemp(filepath.Join(c.root, "tmp"), key.Encoded()+"-")
	if err != nil {
		return fail(err)
	}
	return nil, &Filling{Dir: tmp, c: c, final: final, unlock: unlock, inUse: inUse}, nil
}

// Commit moves the filled directory into place and returns it, held in use.
// If it fails, the unpack is still under way, its directory as it was: the
// caller ends it with Abort, or with Detach when something still uses the
// directory.
func (f *Filling) Commit() (*Unpacked, error) {
	if f.ended {
		return nil, errors.New("cache: unpack already committed or aborted")
	}
	if f.private != nil {
		// Used where it is, and removed when released.
		f.ended = true
		return &Unpacked{Dir: f.Dir, release: func() { f.private(); f.inUse() }}, nil
	}
	marker := filepath.Join(f.Dir, completeMarker)
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		return nil, fmt.Errorf("mark unpacked checkpoint complete: %w", err)
	}
	if err := os.Rename(f.Dir, f.final); err != nil {
		os.Remove(marker)
		return nil, fmt.Errorf("move unpacked checkpoint into place: %w", err)
	}
	f.ended = true
	f.unlock()
	return &Unpacked{Dir: f.final, release: f.inUse, Created: true}, nil
}

// Detach ends the unpack without moving the directory into place or
// removing it: it is renamed out of the cache's way and held, and its new
// path returned. The caller removes it and then calls release, once nothing
// uses it (a running container's rootfs may be stacked on it). Until then
// Prune leaves it alone.
// If it fails, the unpack is still under way, and the caller may end it
// with Abort once nothing uses the directory.
func (f *Filling) Detach(ctx context.Context) (dir string, release func(), err error) {
	if f.ended {
		return "", nil, errors.New("cache: unpack already committed or aborted")
	}
	if f.private != nil {
		f.ended = true
		return f.Dir, func() { f.private(); f.inUse() }, nil
	}
	dir = filepath.Join(filepath.Dir(f.Dir), detachedPrefix+filepath.Base(f.Dir))
	unlock, err := f.c.holdShared(ctx, "use-"+filepath.Base(dir))
	if err != nil {
		return "", nil, err
	}
	release = func() { f.c.dropLock(unlock, "use-"+filepath.Base(dir)) }
	if err := os.Rename(f.Dir, dir); err != nil {
		release()
		return "", nil, err
	}
	f.ended = true
	f.unlock()
	f.inUse()
	return dir, release, nil
}

// detachedPrefix names the directories of Detach in tmp/.
const detachedPrefix = "detached-"

// Abort removes the directory and ends the unpack. It is safe to call
// after Commit, when it does nothing.
func (f *Filling) Abort() {
	if f == nil || f.ended {
		return
	}
	f.ended = true
	if f.private != nil {
		f.private()
	} else {
		os.RemoveAll(f.Dir)
		f.unlock()
	}
	f.inUse()
}

func complete(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, completeMarker))
	return err == nil
}

// touch records a use, for least-recently-used eviction.
func touch(dir string) {
	now := time.Now()
	if err := os.Chtimes(filepath.Join(dir, completeMarker), now, now); err != nil && !errors.Is(err, os.ErrNotExist) {
		return
	}
}

// IsUnpacked reports whether the checkpoint with manifest digest key is
// unpacked in the cache.
func (c *Cache) IsUnpacked(key digest.Digest) bool {
	return key.Validate() == nil && complete(filepath.Join(c.root, "unpacked", key.Encoded()))
}

// TempDir makes a private directory in the cache, on the same filesystem as
// the unpacked checkpoints (so files can be hard-linked). The caller removes
// it; leftovers of a killed process are removed by Prune after an hour.
func (c *Cache) TempDir(prefix string) (string, error) {
	return os.MkdirTemp(filepath.Join(c.root, "tmp"), prefix+"-")
}

// Hold keeps eviction away from the checkpoint with manifest digest key
// until the returned function is called.
func (c *Cache) Hold(ctx context.Context, key digest.Digest) (func(), error) {
	if err := key.Validate(); err != nil {
		return nil, err
	}
	return c.holdShared(ctx, "use-"+key.Encoded())
}

//go:build linux

package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Locks are flock(2)s on files under locks/, so they are shared by every
// process on the node and die with the process that holds it. A lock file
// may be removed by whoever holds it exclusively (removeLocked, and Prune
// sweeps the files nobody holds): a taker that opened the file before it
// was removed finds, once it holds the flock, that the path no longer names
// its file, and takes the lock again on the new one.

// lock takes an exclusive lock named name, waiting until ctx is done.
func (c *Cache) lock(ctx context.Context, name string) (func(), error) {
	return c.flock(ctx, name, unix.LOCK_EX, true)
}

// holdShared takes a shared lock: many holders at once, none while an
// exclusive lock (eviction) is held.
func (c *Cache) holdShared(ctx context.Context, name string) (func(), error) {
	return c.flock(ctx, name, unix.LOCK_SH, true)
}

// tryLock takes an exclusive lock without waiting for another holder.
func (c *Cache) tryLock(ctx context.Context, name string) (func(), error) {
	return c.flock(ctx, name, unix.LOCK_EX, false)
}

// errLockBusy is tryLock's error when another process holds the lock.
var errLockBusy = errors.New("held by another process")

func (c *Cache) flock(ctx context.Context, name string, how int, wait bool) (func(), error) {
	path := c.lockPath(name)
	pause := 5 * time.Millisecond
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open lock: %w", err)
		}
		lockFileOpened(name)
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		switch {
		case err == nil:
			if samePath(f, path) {
				return func() { f.Close() }, nil
			}
			f.Close() // removed while we waited for it: take the new one
			continue
		case err != unix.EWOULDBLOCK:
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		f.Close()
		if !wait {
			return nil, fmt.Errorf("lock %s: %w", name, errLockBusy)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for lock %s: %w", name, ctx.Err())
		case <-time.After(pause):
		}
		if pause < 100*time.Millisecond {
			pause *= 2
		}
	}
}

// lockFileOpened is called between opening a lock file and taking the
// flock on it; tests stop there.
var lockFileOpened = func(name string) {}

// samePath reports whether path still names the open file f.
func samePath(f *os.File, path string) bool {
	var held, named unix.Stat_t
	if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &named) != nil {
		return false
	}
	return held.Dev == named.Dev && held.Ino == named.Ino
}

// lockPath is the file the lock named name is taken on.
func (c *Cache) lockPath(name string) string {
	return filepath.Join(c.root, "locks", name+".lock")
}

// dropLock removes the file of a lock held exclusively, or shared by its
// only holder, and then ends the lock: for locks named after something
// that is gone with it (a held directory).
func (c *Cache) dropLock(unlock func(), name string) {
	os.Remove(c.lockPath(name))
	unlock()
}

// sweepLocks removes the lock files nobody holds, so that locks/ does not
// keep one file for every blob and checkpoint the node ever had. It
// returns how many it removed.
func (c *Cache) sweepLocks(ctx context.Context) int {
	ents, _ := os.ReadDir(filepath.Join(c.root, "locks"))
	n := 0
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".lock")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		unlock, err := c.tryLock(ctx, name)
		if err != nil {
			continue // held: in use
		}
		if err := os.Remove(c.lockPath(name)); err == nil || errors.Is(err, fs.ErrNotExist) {
			n++
		}
		unlock()
	}
	return n
}

//go:build linux

package cache

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// lock takes an exclusive lock named name, waiting until ctx is done. The
// lock is an flock(2) on a file under locks/, so it is shared by every
// process on the node and dies with the process that holds it.
func (c *Cache) lock(ctx context.Context, name string) (func(), error) {
	return c.flock(ctx, name, unix.LOCK_EX)
}

// holdShared takes a shared lock: many holders at once, none while an
// exclusive lock (eviction) is held.
func (c *Cache) holdShared(ctx context.Context, name string) (func(), error) {
	return c.flock(ctx, name, unix.LOCK_SH)
}

func (c *Cache) flock(ctx context.Context, name string, how int) (func(), error) {
	f, err := os.OpenFile(c.lockPath(name), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	wait := 5 * time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if err != unix.EWOULDBLOCK {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("waiting for lock %s: %w", name, ctx.Err())
		case <-time.After(wait):
		}
		if wait < 100*time.Millisecond {
			wait *= 2
		}
	}
}

// tryLock takes an exclusive lock without waiting.
func (c *Cache) tryLock(_ context.Context, name string) (func(), error) {
	f, err := os.OpenFile(c.lockPath(name), os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", name, err)
	}
	return func() { f.Close() }, nil
}

// lockPath is the file the lock named name is taken on.
func (c *Cache) lockPath(name string) string {
	return filepath.Join(c.root, "locks", name+".lock")
}

// dropLock ends a lock taken with unlock and removes its file: for locks
// named after something that is gone with it (a held directory).
func (c *Cache) dropLock(unlock func(), name string) {
	unlock()
	os.Remove(c.lockPath(name))
}

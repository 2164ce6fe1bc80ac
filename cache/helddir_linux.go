//go:build linux

package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Directories in tmp/ held by the process that made them, with a lock
// taken before the directory exists: Prune, and RemoveDeadDirs, remove the
// directory of a process that died holding it at once, instead of after an
// hour as other leftovers.
const (
	mountDirPrefix   = "mnt-"     // MountDir's
	scratchDirPrefix = "scratch-" // ScratchDir's
)

// MountDir makes an empty private directory in tmp/ for a mount point
// (a restore's page images, streamed or served from the cache), held by
// this process until release:
// release unmounts nothing, the caller unmounts and removes the directory
// first. The directory of a process that died holding it is unmounted and
// removed.
func (c *Cache) MountDir(prefix string) (dir string, release func(), err error) {
	name, unlock, err := c.heldDir(mountDirPrefix + prefix)
	if err != nil {
		return "", nil, err
	}
	var once sync.Once
	return filepath.Join(c.root, "tmp", name), func() { once.Do(unlock) }, nil
}

// ScratchDir makes a private directory in tmp/, on the cache's file system,
// for files this process needs for a while (a restore's per-container
// images directory). release removes it; so does the cache, once this
// process has died without calling release (a shim killed between a
// container's create and start).
func (c *Cache) ScratchDir(prefix string) (dir string, release func(), err error) {
	name, unlock, err := c.heldDir(scratchDirPrefix + prefix)
	if err != nil {
		return "", nil, err
	}
	dir = filepath.Join(c.root, "tmp", name)
	var once sync.Once
	return dir, func() {
		once.Do(func() {
			os.RemoveAll(dir)
			unlock()
		})
	}, nil
}

// heldDir makes tmp/<prefix>-<random>, locked; unlock drops the lock.
func (c *Cache) heldDir(prefix string) (name string, unlock func(), err error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, err
	}
	name = prefix + "-" + hex.EncodeToString(b[:])
	lock, err := c.tryLock(context.Background(), "use-"+name)
	if err != nil {
		return "", nil, err
	}
	if err := os.Mkdir(filepath.Join(c.root, "tmp", name), 0o700); err != nil {
		c.dropLock(lock, "use-"+name)
		return "", nil, err
	}
	return name, func() { c.dropLock(lock, "use-"+name) }, nil
}

// RemoveDeadDirs removes the directories in tmp/ of processes that died
// holding them (Prune does too): MountDirs and ScratchDirs, unpacks under
// way (BeginUnpack's, held by the key's unpack lock from the directory's
// making to its end) and detached downloads (Filling.Detach's, held while a
// container uses them).
func (c *Cache) RemoveDeadDirs() {
	ents, _ := os.ReadDir(filepath.Join(c.root, "tmp"))
	for _, e := range ents {
		c.removeDeadDir(e.Name())
	}
}

// removeDeadDir removes tmp/name, a directory held by a process that is
// gone, and reports whether name is one of the held kinds at all.
func (c *Cache) removeDeadDir(name string) bool {
	path := filepath.Join(c.root, "tmp", name)
	if key, ok := fillingKey(name); ok {
		unlock, err := c.tryLock(context.Background(), "unpack-"+key)
		if err != nil {
			return true // an unpack of this key is under way
		}
		defer unlock() // the key's lock, not the directory's: others may wait on it
		if !isMountPoint(path) {
			os.RemoveAll(path)
		}
		return true
	}
	mountDir := strings.HasPrefix(name, mountDirPrefix)
	if !mountDir && !strings.HasPrefix(name, scratchDirPrefix) && !strings.HasPrefix(name, detachedPrefix) {
		return false
	}
	unlock, err := c.tryLock(context.Background(), "use-"+name)
	if err != nil {
		return true // its process still holds it
	}
	defer c.dropLock(unlock, "use-"+name)
	if mountDir {
		_ = unix.Unmount(path, unix.MNT_FORCE|unix.MNT_DETACH) // EINVAL when nothing is mounted; FORCE ends a FUSE connection
		os.Remove(path)                                        // an empty directory; never recursive into a mount
	} else if !isMountPoint(path) {
		os.RemoveAll(path)
	}
	return true
}

// fillingKey returns the key of BeginUnpack's directory name
// (<key's hex>-<random>).
func fillingKey(name string) (string, bool) {
	key, _, ok := strings.Cut(name, "-")
	if !ok || len(key) != 64 {
		return "", false
	}
	for _, r := range key {
		if !('0' <= r && r <= '9' || 'a' <= r && r <= 'f') {
			return "", false
		}
	}
	return key, true
}

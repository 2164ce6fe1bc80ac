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

// mountDirPrefix names MountDir's directories in tmp/.
const mountDirPrefix = "mnt-"

// MountDir makes an empty private directory in tmp/ for a mount point
// (a streamed restore's page images), held by this process until release:
// release unmounts nothing, the caller unmounts and removes the directory
// first. Prune removes the directory of a process that died holding it at
// once, unmounting what is still mounted there, instead of after an hour
// as other leftovers: the lock, taken before the directory exists, tells.
func (c *Cache) MountDir(prefix string) (dir string, release func(), err error) {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, err
	}
	name := mountDirPrefix + prefix + "-" + hex.EncodeToString(b[:])
	unlock, err := c.tryLock(context.Background(), "use-"+name)
	if err != nil {
		return "", nil, err
	}
	dir = filepath.Join(c.root, "tmp", name)
	if err := os.Mkdir(dir, 0o700); err != nil {
		c.dropLock(unlock, "use-"+name)
		return "", nil, err
	}
	var once sync.Once
	return dir, func() { once.Do(func() { c.dropLock(unlock, "use-"+name) }) }, nil
}

// RemoveDeadMounts removes the MountDirs of processes that died holding
// them (Prune does too).
func (c *Cache) RemoveDeadMounts() {
	ents, _ := os.ReadDir(filepath.Join(c.root, "tmp"))
	for _, e := range ents {
		c.removeDeadMountDir(e.Name())
	}
}

// removeDeadMountDir removes tmp/name, a MountDir whose holder is gone,
// and reports whether name is a MountDir at all.
func (c *Cache) removeDeadMountDir(name string) bool {
	if !strings.HasPrefix(name, mountDirPrefix) {
		return false
	}
	unlock, err := c.tryLock(context.Background(), "use-"+name)
	if err != nil {
		return true // its process still holds it
	}
	defer c.dropLock(unlock, "use-"+name)
	path := filepath.Join(c.root, "tmp", name)
	_ = unix.Unmount(path, unix.MNT_DETACH) // EINVAL when nothing is mounted
	os.Remove(path)                         // an empty directory; never recursive into a mount
	return true
}

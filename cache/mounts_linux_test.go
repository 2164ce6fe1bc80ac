//go:build linux

package cache

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// An old-looking mount in tmp/ (a streamed restore's, in use) is left alone
// by the stale-leftover cleaner; an old plain directory is not.
func TestRemoveStaleSkipsMounts(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	c, _ := Open(t.TempDir())
	mp := filepath.Join(c.root, "tmp", "stream-1")
	plain := filepath.Join(c.root, "tmp", "restore-1")
	for _, d := range []string{mp, plain} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", mp, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(mp, unix.MNT_DETACH)
	os.WriteFile(filepath.Join(mp, "pages-1.img"), []byte("pages"), 0o600)
	past := time.Now().Add(-48 * time.Hour)
	for _, d := range []string{mp, plain} {
		os.Chtimes(d, past, past)
	}
	c.removeStale(time.Hour)
	if _, err := os.Stat(filepath.Join(mp, "pages-1.img")); err != nil {
		t.Fatalf("the cleaner emptied a mount: %v", err)
	}
	if _, err := os.Stat(plain); !os.IsNotExist(err) {
		t.Fatalf("an old leftover directory stayed: %v", err)
	}
}

// A MountDir is left alone, mounted or not, while its process holds it;
// once no process does (a killed shim), the cleaner unmounts and removes
// it at once, not after an hour, and its lock file with it.
func TestRemoveStaleDeadMountDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	c, _ := Open(t.TempDir())
	held, releaseHeld, err := c.MountDir("stream")
	if err != nil {
		t.Fatal(err)
	}
	defer releaseHeld()
	dead, releaseDead, err := c.MountDir("stream")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{held, dead} {
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=1m"); err != nil {
			t.Skipf("mount tmpfs: %v", err)
		}
		defer unix.Unmount(d, unix.MNT_DETACH)
		os.WriteFile(filepath.Join(d, "pages-1.img"), []byte("pages"), 0o600)
	}
	c.removeStale(time.Hour)
	for _, d := range []string{held, dead} {
		if _, err := os.Stat(filepath.Join(d, "pages-1.img")); err != nil {
			t.Fatalf("the cleaner took a held mount: %v", err)
		}
	}
	releaseDead() // as if its process had died: the lock is free, the mount stays
	c.removeStale(time.Hour)
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("a dead process's mount directory stayed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(held, "pages-1.img")); err != nil {
		t.Fatalf("the cleaner took a held mount: %v", err)
	}
	locks, _ := filepath.Glob(filepath.Join(c.root, "locks", "use-mnt-*"))
	if len(locks) != 1 {
		t.Fatalf("lock files: %v, want the held one's only", locks)
	}
}

// A ScratchDir goes with release; one whose process died without
// releasing it goes at the next RemoveDeadDirs, files and all, while a
// held one stays.
func TestRemoveDeadScratchDir(t *testing.T) {
	c, _ := Open(t.TempDir())
	held, release, err := c.ScratchDir("restore-a")
	if err != nil {
		t.Fatal(err)
	}
	name, unlock, err := c.heldDir(scratchDirPrefix + "restore-b")
	if err != nil {
		t.Fatal(err)
	}
	dead := filepath.Join(c.root, "tmp", name)
	for _, d := range []string{held, dead} {
		os.MkdirAll(filepath.Join(d, "images"), 0o700)
		os.WriteFile(filepath.Join(d, "images", "core-1.img"), []byte("core"), 0o600)
	}
	c.RemoveDeadDirs()
	if _, err := os.Stat(dead); err != nil {
		t.Fatalf("the cleaner took a held scratch directory: %v", err)
	}
	unlock() // its process died
	c.RemoveDeadDirs()
	if _, err := os.Stat(dead); !os.IsNotExist(err) {
		t.Fatalf("a dead process's scratch directory stayed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(held, "images", "core-1.img")); err != nil {
		t.Fatalf("the cleaner took a held scratch directory: %v", err)
	}
	release()
	if ents, _ := os.ReadDir(filepath.Join(c.root, "tmp")); len(ents) != 0 {
		t.Fatalf("left in tmp: %v", ents)
	}
	if locks, _ := filepath.Glob(filepath.Join(c.root, "locks", "use-scratch-*")); len(locks) != 0 {
		t.Fatalf("lock files left: %v", locks)
	}
}

// An unpack under way and a detached download are left alone while their
// process lives, and removed at once, without waiting for their age, when
// it has died.
func TestRemoveDeadFillingAndDetached(t *testing.T) {
	ctx := context.Background()
	c, _ := Open(t.TempDir())
	keyA, keyB := digest.FromString("a"), digest.FromString("b")
	_, fillA, err := c.BeginUnpack(ctx, keyA)
	if err != nil {
		t.Fatal(err)
	}
	_, fillB, err := c.BeginUnpack(ctx, keyB)
	if err != nil {
		t.Fatal(err)
	}
	detached, release, err := fillB.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{fillA.Dir, detached} {
		os.MkdirAll(filepath.Join(d, "rootfs"), 0o700)
		os.WriteFile(filepath.Join(d, "rootfs", "f"), []byte("x"), 0o600)
	}
	other := filepath.Join(c.root, "tmp", "inspect-123")
	os.Mkdir(other, 0o700)

	c.RemoveDeadDirs()
	for _, d := range []string{fillA.Dir, detached, other} {
		if _, err := os.Stat(d); err != nil {
			t.Fatalf("the cleaner took %s while it is held (or not one of its kinds): %v", d, err)
		}
	}
	// Their process dies: its locks go with it.
	fillA.unlock()
	release()
	c.RemoveDeadDirs()
	for _, d := range []string{fillA.Dir, detached} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Fatalf("%s of a dead process stayed: %v", d, err)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("the cleaner took a directory it does not know: %v", err)
	}
	if locks, _ := filepath.Glob(filepath.Join(c.root, "locks", "use-detached-*")); len(locks) != 0 {
		t.Fatalf("lock files left: %v", locks)
	}
	// The key's unpack lock is free again.
	_, again, err := c.BeginUnpack(ctx, keyA)
	if err != nil {
		t.Fatal(err)
	}
	again.Abort()
}

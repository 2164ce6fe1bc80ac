//go:build linux

package cache

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

func lockFiles(t *testing.T, c *Cache) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(c.root, "locks"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// Prune leaves no lock file behind for what it removed, nor for what
// nobody holds, and keeps those held.
func TestPruneSweepsLockFiles(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	addCheckpoint(t, c, "gone", 100)
	kept := addCheckpoint(t, c, "kept", 100)
	if len(lockFiles(t, c)) == 0 {
		t.Fatal("no lock files to sweep: the test would prove nothing")
	}
	hold, err := c.Hold(ctx, kept)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := c.Prune(ctx, PruneLimits{All: true})
	if err != nil || len(removed) != 1 {
		t.Fatalf("prune: %v %v", removed, err)
	}
	if got := lockFiles(t, c); len(got) != 1 || got[0] != "use-"+kept.Encoded()+".lock" {
		t.Fatalf("lock files after prune: %v, want only the held one", got)
	}
	// The held lock still excludes eviction.
	if _, err := c.Prune(ctx, PruneLimits{All: true}); err != nil || !c.IsUnpacked(kept) {
		t.Fatalf("a held checkpoint was pruned: %v", err)
	}
	hold()
	if _, err := c.Prune(ctx, PruneLimits{All: true}); err != nil {
		t.Fatal(err)
	}
	if got := lockFiles(t, c); len(got) != 0 {
		t.Fatalf("lock files left: %v", got)
	}
}

// A taker that opened a lock file just before its holder removed it takes
// the lock on the file that replaced it, so two takers never hold the lock
// at once.
func TestLockFileRemovedUnderATaker(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	held, err := c.lock(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	opened, removed := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	lockFileOpened = func(name string) {
		if first.CompareAndSwap(false, true) {
			close(opened)
			<-removed
		}
	}
	defer func() { lockFileOpened = func(string) {} }()
	type taken struct {
		unlock func()
		err    error
	}
	late := make(chan taken, 1)
	go func() {
		unlock, err := c.lock(ctx, "x")
		late <- taken{unlock, err}
	}()
	<-opened // the taker has the old file open
	c.dropLock(held, "x")
	other, err := c.tryLock(ctx, "x") // on the new file
	if err != nil {
		t.Fatal(err)
	}
	close(removed)
	select {
	case got := <-late:
		if got.err == nil {
			got.unlock()
		}
		t.Fatalf("a second holder while the first still holds the lock (err %v)", got.err)
	case <-time.After(200 * time.Millisecond):
	}
	other()
	got := <-late
	if got.err != nil {
		t.Fatal(got.err)
	}
	got.unlock()
}

func TestTryLockBusy(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	unlock, err := c.holdShared(ctx, "y")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.tryLock(ctx, "y"); !errors.Is(err, errLockBusy) {
		t.Fatalf("tryLock on a held lock: %v", err)
	}
	unlock()
	if _, err := c.tryLock(ctx, "y"); err != nil {
		t.Fatal(err)
	}
}

package cache

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// A directory handed out while it is filled is usable at once, holds off
// other unpacks of the same checkpoint, and goes into place only on Commit.
func TestBeginUnpackCommit(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	key := digest.FromString("streamed")
	u, f, err := c.BeginUnpack(ctx, key)
	if err != nil || u != nil || f == nil {
		t.Fatalf("BeginUnpack: %v %v %v", u, f, err)
	}
	if err := os.WriteFile(filepath.Join(f.Dir, "criu"), []byte("images"), 0o600); err != nil {
		t.Fatal(err)
	}
	if c.IsUnpacked(key) {
		t.Fatal("unpacked before Commit")
	}
	// Another unpack of the same checkpoint waits for the filling.
	waitCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, _, err := c.BeginUnpack(waitCtx, key); err == nil {
		t.Fatal("a second unpack did not wait for the first")
	}
	u, err = f.Commit()
	if err != nil {
		t.Fatal(err)
	}
	defer u.Release()
	if b, _ := os.ReadFile(filepath.Join(u.Dir, "criu")); string(b) != "images" || !c.IsUnpacked(key) {
		t.Fatalf("after Commit: %q, unpacked %v", b, c.IsUnpacked(key))
	}
	if _, err := f.Commit(); err == nil {
		t.Fatal("committed twice")
	}
	f.Abort() // after Commit: nothing
	if !c.IsUnpacked(key) {
		t.Fatal("Abort after Commit removed the checkpoint")
	}
	u2, f2, err := c.BeginUnpack(ctx, key)
	if err != nil || f2 != nil || u2 == nil {
		t.Fatalf("BeginUnpack of a cached checkpoint: %v %v %v", u2, f2, err)
	}
	u2.Release()
}

func TestBeginUnpackAbort(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	key := digest.FromString("aborted")
	_, f, err := c.BeginUnpack(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(f.Dir, "partial"), []byte("x"), 0o600)
	f.Abort()
	if entries, _ := os.ReadDir(filepath.Join(c.Root(), "tmp")); len(entries) != 0 || c.IsUnpacked(key) {
		t.Fatalf("after Abort: tmp %v, unpacked %v", entries, c.IsUnpacked(key))
	}
	// The lock is free again.
	waitCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	_, f, err = c.BeginUnpack(waitCtx, key)
	if err != nil {
		t.Fatal(err)
	}
	f.Abort()
}

// A detached directory survives later unpacks of the same checkpoint and
// stale-leftover removal while it is held, and goes once released.
func TestDetach(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	key := digest.FromString("detached")
	_, f, err := c.BeginUnpack(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(f.Dir, "rootfs", "etc"), 0o755)
	dir, release, err := f.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "rootfs", "etc")); err != nil {
		t.Fatal(err)
	}
	_, f2, err := c.BeginUnpack(ctx, key) // removes the key's leftovers
	if err != nil {
		t.Fatal(err)
	}
	f2.Abort()
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(dir, past, past)
	c.removeStale(time.Hour)
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("a held detached directory was removed: %v", err)
	}
	release()
	c.removeStale(time.Hour)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("a released, stale detached directory stayed: %v", err)
	}
}

// A Commit that fails leaves the unpack under way, its directory as it
// was: a running container's rootfs may stack on it, and its owner decides
// to Detach or Abort.
func TestFailedCommitRemovesNothing(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	key := digest.FromString("commit fails")
	_, f, err := c.BeginUnpack(ctx, key)
	if err != nil || f == nil {
		t.Fatalf("BeginUnpack: %v %v", f, err)
	}
	if err := os.WriteFile(filepath.Join(f.Dir, "rootfs"), []byte("in use"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Something in the way of the rename.
	if err := os.MkdirAll(filepath.Join(f.final, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Commit(); err == nil {
		t.Fatal("Commit over a directory in the way: no error")
	}
	if b, err := os.ReadFile(filepath.Join(f.Dir, "rootfs")); err != nil || string(b) != "in use" {
		t.Fatalf("after the failed Commit: %q, %v", b, err)
	}
	if c.IsUnpacked(key) {
		t.Fatal("marked unpacked")
	}
	dir, release, err := f.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "rootfs")); err != nil || string(b) != "in use" {
		t.Fatalf("detached: %q, %v", b, err)
	}
	os.RemoveAll(dir)
	release()
}

// Another unpack of a checkpoint that one holds for longer than
// UnpackWait gets a private copy, used in place and removed when
// released; the first still goes into the cache.
func TestBeginUnpackPrivateAfterWait(t *testing.T) {
	prev := UnpackWait
	UnpackWait = 50 * time.Millisecond
	t.Cleanup(func() { UnpackWait = prev })
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	key := digest.FromString("held long")
	_, first, err := c.BeginUnpackOrCopy(ctx, key)
	if err != nil || first == nil || first.Private() {
		t.Fatalf("first BeginUnpack: %v %v", first, err)
	}
	_, second, err := c.BeginUnpackOrCopy(ctx, key)
	if err != nil || second == nil || !second.Private() || second.Dir == first.Dir {
		t.Fatalf("second BeginUnpack while the first holds it: %+v %v, want a private copy", second, err)
	}
	if err := os.WriteFile(filepath.Join(second.Dir, "criu"), []byte("own"), 0o600); err != nil {
		t.Fatal(err)
	}
	u2, err := second.Commit()
	if err != nil || u2.Dir != second.Dir || c.IsUnpacked(key) {
		t.Fatalf("private Commit: %v %v, cached %v", u2, err, c.IsUnpacked(key))
	}
	u2.Release()
	if _, err := os.Stat(second.Dir); !os.IsNotExist(err) {
		t.Fatalf("private copy left after release: %v", err)
	}
	_, third, err := c.BeginUnpackOrCopy(ctx, key)
	if err != nil || !third.Private() {
		t.Fatalf("third: %+v %v", third, err)
	}
	// BeginUnpack (snapboot pull) waits for the unpack instead.
	short, stop := context.WithTimeout(ctx, 3*UnpackWait)
	defer stop()
	if _, f, err := c.BeginUnpack(short, key); err == nil {
		f.Abort()
		t.Fatal("BeginUnpack did not wait for the unpack under way")
	}
	third.Abort()
	if _, err := os.Stat(third.Dir); !os.IsNotExist(err) {
		t.Fatalf("private copy left after Abort: %v", err)
	}
	if err := os.WriteFile(filepath.Join(first.Dir, "criu"), []byte("cached"), 0o600); err != nil {
		t.Fatal(err)
	}
	u1, err := first.Commit()
	if err != nil || !c.IsUnpacked(key) {
		t.Fatalf("first Commit: %v, cached %v", err, c.IsUnpacked(key))
	}
	u1.Release()
	// A caller whose own context ends first gets its error, not a copy.
	_, f, _ := c.BeginUnpack(ctx, digest.FromString("another"))
	defer f.Abort()
	short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if _, g, err := c.BeginUnpackOrCopy(short, digest.FromString("another")); err == nil {
		g.Abort()
		t.Fatal("a caller out of time got a private copy")
	}
}

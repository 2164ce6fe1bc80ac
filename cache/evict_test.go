package cache

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// addCheckpoint caches a manifest with one layer and unpacks it.
func addCheckpoint(t *testing.T, c *Cache, name string, size int) digest.Digest {
	t.Helper()
	layer := string(make([]byte, size)) + name
	src, ds := newSource(layer)
	m := ocispec.Manifest{Config: ds[0], Layers: ds}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(mb), Size: int64(len(mb))}
	src.blobs[md.Digest] = mb
	ctx := context.Background()
	for _, d := range []ocispec.Descriptor{md, ds[0]} {
		if _, _, err := c.FetchBlob(ctx, src, d); err != nil {
			t.Fatal(err)
		}
	}
	u, err := c.Unpack(ctx, md.Digest, func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "data"), []byte(layer), 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	u.Release()
	c.RememberRef("reg/app:"+name, md)
	return md.Digest
}

func TestEntriesRemovePrune(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	old := addCheckpoint(t, c, "old", 1000)
	mid := addCheckpoint(t, c, "mid", 1000)
	recent := addCheckpoint(t, c, "recent", 1000)
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(c.root, "unpacked", old.Encoded(), completeMarker), past, past)
	hour := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(c.root, "unpacked", mid.Encoded(), completeMarker), hour, hour)

	entries, err := c.Entries(ctx)
	if err != nil || len(entries) != 3 {
		t.Fatalf("entries %v %v", entries, err)
	}
	if entries[0].Digest != recent || entries[2].Digest != old || entries[0].Refs[0] != "reg/app:recent" || entries[0].Size < 2000 {
		t.Fatalf("entries not most-recent-first with refs and sizes: %+v", entries)
	}

	// A checkpoint in use is never removed.
	u, _ := c.Unpack(ctx, old, func(string) error { return errors.New("should be cached") })
	if err := c.Remove(ctx, old); !errors.Is(err, ErrInUse) {
		t.Fatalf("Remove in use: %v", err)
	}
	if removed, _ := c.Prune(ctx, PruneLimits{MaxAge: 24 * time.Hour}); len(removed) != 0 {
		t.Fatalf("pruned an entry in use: %v", removed)
	}
	u.Release()
	os.Chtimes(filepath.Join(c.root, "unpacked", old.Encoded(), completeMarker), past, past) // Unpack counted as a use

	removed, err := c.Prune(ctx, PruneLimits{MaxAge: 24 * time.Hour})
	if err != nil || len(removed) != 1 || removed[0].Digest != old {
		t.Fatalf("age prune removed %v, %v", removed, err)
	}
	if c.IsUnpacked(old) || c.HasBlob(ctx, ocispec.Descriptor{Digest: old}) {
		t.Fatal("old checkpoint still cached")
	}
	// Size bound: the least recently used goes first.
	entries, _ = c.Entries(ctx)
	removed, err = c.Prune(ctx, PruneLimits{MaxSize: entries[0].Size + 10})
	if err != nil || len(removed) != 1 || removed[0].Digest != mid {
		t.Fatalf("size prune removed %v, %v", removed, err)
	}
	if !c.IsUnpacked(recent) {
		t.Fatal("most recent checkpoint evicted")
	}
	if removed, _ := c.Prune(ctx, PruneLimits{All: true}); len(removed) != 1 {
		t.Fatalf("prune --all removed %v", removed)
	}
	if entries, _ := c.Entries(ctx); len(entries) != 0 {
		t.Fatalf("left after prune --all: %v", entries)
	}
}

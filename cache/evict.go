package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Entry is one checkpoint in the cache.
type Entry struct {
	Digest   digest.Digest // manifest digest
	Unpacked bool
	// Size is what the checkpoint takes: its unpacked files plus its blobs.
	Size     int64
	LastUsed time.Time
	InUse    bool     // a container restored from it still exists
	Refs     []string // tags on this node that last resolved to it
}

// Entries lists the checkpoints in the cache, most recently used first.
// A checkpoint is known by its manifest blob or its unpacked directory.
func (c *Cache) Entries(ctx context.Context) ([]Entry, error) {
	byDigest := map[digest.Digest]*Entry{}
	get := func(d digest.Digest) *Entry {
		e := byDigest[d]
		if e == nil {
			e = &Entry{Digest: d}
			byDigest[d] = e
		}
		return e
	}
	dirs, err := os.ReadDir(filepath.Join(c.root, "unpacked"))
	if err != nil {
		return nil, err
	}
	for _, d := range dirs {
		dg := digest.NewDigestFromEncoded(digest.SHA256, d.Name())
		if dg.Validate() != nil {
			continue
		}
		e := get(dg)
		dir := filepath.Join(c.root, "unpacked", d.Name())
		e.Unpacked = complete(dir)
		e.Size += dirSize(dir)
		if fi, err := os.Stat(filepath.Join(dir, completeMarker)); err == nil {
			e.LastUsed = fi.ModTime()
		}
	}
	for _, m := range c.manifests() {
		e := get(m.desc.Digest)
		e.Size += m.blobBytes
		if e.LastUsed.IsZero() {
			e.LastUsed = m.modTime
		}
	}
	refs, _ := os.ReadDir(filepath.Join(c.root, "refs"))
	for _, r := range refs {
		data, err := os.ReadFile(filepath.Join(c.root, "refs", r.Name()))
		if err != nil {
			continue
		}
		var rec refRecord
		if json.Unmarshal(data, &rec) == nil {
			if e := byDigest[rec.Descriptor.Digest]; e != nil {
				e.Refs = append(e.Refs, rec.Reference)
			}
		}
	}
	var out []Entry
	for _, e := range byDigest {
		e.InUse = c.inUse(ctx, e.Digest)
		sort.Strings(e.Refs)
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastUsed.After(out[j].LastUsed) })
	return out, nil
}

type cachedManifest struct {
	desc      ocispec.Descriptor
	layers    []ocispec.Descriptor // config and layers
	blobBytes int64                // manifest, config and layers present
	modTime   time.Time
}

// manifests finds the cached blobs that are checkpoint manifests.
func (c *Cache) manifests() []cachedManifest {
	dir := filepath.Join(c.root, "blobs", "sha256")
	ents, _ := os.ReadDir(dir)
	var out []cachedManifest
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil || fi.Size() > 4<<20 || fi.Size() == 0 {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		var m ocispec.Manifest
		if json.Unmarshal(data, &m) != nil || m.SchemaVersion != 2 || m.Config.Digest == "" {
			continue
		}
		cm := cachedManifest{
			desc:      ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.NewDigestFromEncoded(digest.SHA256, e.Name()), Size: fi.Size()},
			layers:    append([]ocispec.Descriptor{m.Config}, m.Layers...),
			blobBytes: fi.Size(),
			modTime:   fi.ModTime(),
		}
		for _, l := range cm.layers {
			if fi, err := os.Stat(c.BlobPath(l.Digest)); err == nil && l.Digest.Validate() == nil {
				cm.blobBytes += fi.Size()
			}
		}
		out = append(out, cm)
	}
	return out
}

// Size is what the cache's checkpoints take, in bytes.
func (c *Cache) Size(ctx context.Context) (int64, error) {
	entries, err := c.Entries(ctx)
	var n int64
	for _, e := range entries {
		n += e.Size
	}
	return n, err
}

// ErrInUse is returned when removing a checkpoint a container still uses.
var ErrInUse = errors.New("checkpoint is in use by a container")

// inUse reports whether some process holds the checkpoint's use lock.
func (c *Cache) inUse(ctx context.Context, d digest.Digest) bool {
	unlock, err := c.tryLock(ctx, "use-"+d.Encoded())
	if err != nil {
		return true
	}
	unlock()
	return false
}

// Remove deletes one checkpoint: its unpacked directory and its blobs (blobs
// shared with another cached checkpoint are kept). It refuses while a
// container restored from it exists.
func (c *Cache) Remove(ctx context.Context, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	unlock, err := c.tryLock(ctx, "use-"+d.Encoded())
	if err != nil {
		return fmt.Errorf("%s: %w", d, ErrInUse)
	}
	defer unlock()
	if err := os.RemoveAll(filepath.Join(c.root, "unpacked", d.Encoded())); err != nil {
		return err
	}
	all := c.manifests()
	keep := map[digest.Digest]bool{}
	var mine []ocispec.Descriptor
	for _, m := range all {
		if m.desc.Digest == d {
			mine = append(m.layers, m.desc)
			continue
		}
		for _, l := range m.layers {
			keep[l.Digest] = true
		}
	}
	for _, b := range mine {
		if !keep[b.Digest] && b.Digest.Validate() == nil {
			if err := os.Remove(c.BlobPath(b.Digest)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	c.forgetSources(d)
	return nil
}

// forgetSources removes RememberSource's records of the manifest d.
func (c *Cache) forgetSources(d digest.Digest) {
	dir := filepath.Join(c.root, "refs")
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".source") {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if data, err := os.ReadFile(p); err == nil && strings.HasSuffix(string(data), " "+d.String()+"\n") {
			os.Remove(p)
		}
	}
}

// PruneLimits bound the cache.
type PruneLimits struct {
	MaxSize int64         // 0: unbounded
	MaxAge  time.Duration // 0: no age limit
	All     bool          // remove everything not in use
}

// Prune removes checkpoints not in use: all of them, those unused for
// longer than MaxAge, then the least recently used until the cache fits
// MaxSize. It also clears leftovers of interrupted downloads and unpacks,
// and the lock files nobody holds. It returns what it removed.
func (c *Cache) Prune(ctx context.Context, l PruneLimits) ([]Entry, error) {
	c.removeStale(time.Hour)
	entries, err := c.Entries(ctx)
	if err != nil {
		return nil, err
	}
	var total int64
	for _, e := range entries {
		total += e.Size
	}
	var removed []Entry
	// entries are most recently used first: walk from the end.
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if e.InUse {
			continue
		}
		old := l.MaxAge > 0 && time.Since(e.LastUsed) > l.MaxAge
		big := l.MaxSize > 0 && total > l.MaxSize
		if !l.All && !old && !big {
			continue
		}
		if err := c.Remove(ctx, e.Digest); err != nil {
			if errors.Is(err, ErrInUse) {
				continue
			}
			return removed, err
		}
		total -= e.Size
		removed = append(removed, e)
	}
	c.sweepLocks(ctx)
	return removed, nil
}

// removeStale removes download and unpack leftovers older than age (longer
// than any pull may take): what a killed shim left behind.
func (c *Cache) removeStale(age time.Duration) {
	for _, sub := range []string{"ingest", "tmp"} {
		ents, _ := os.ReadDir(filepath.Join(c.root, sub))
		for _, e := range ents {
			if sub == "tmp" && c.removeDeadDir(e.Name()) {
				continue
			}
			path := filepath.Join(c.root, sub, e.Name())
			fi, err := e.Info()
			if unmountDead(path, err) {
				continue
			}
			if err != nil || time.Since(fi.ModTime()) < age || isMountPoint(path) {
				continue
			}
			os.RemoveAll(filepath.Join(c.root, sub, e.Name()))
		}
	}
}

func dirSize(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	return n
}

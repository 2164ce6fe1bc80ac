// Package cache is the node-local, content-addressed checkpoint cache:
// unpacked checkpoints by manifest digest, verified blobs by digest (the
// manifests and metadata; layers are verified as they stream into the
// unpacker), and the last resolution of every tag, so that a second restore
// of a checkpoint downloads nothing and works with the registry down. File
// locks make concurrent shims share one download; holds keep eviction away
// from checkpoints in use.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/content/oci"
	"oras.land/oras-go/v2/errdef"
)

// Cache is one cache root. Layout:
//
//	blobs/sha256/HEX    verified blobs (oras-go's OCI storage layout): manifests, metadata
//	ingest/             downloads in progress
//	unpacked/HEX/       unpacked checkpoints, by manifest digest: criu/, rootfs/
//	refs/HASH.json      the descriptor a tag last resolved to
//	refs/HASH.source    a repository, as one node configuration reaches it, served a manifest
//	locks/              lock files
//	tmp/                unpacking in progress
type Cache struct {
	root  string
	blobs *oci.Storage
}

// Open opens (creating if needed) the cache at root. The cache holds
// checkpoints, every memory page of their donors included, and the mounts
// that stream page images to CRIU (which CRIU may reach from a user
// namespace, so the kernel does not check who opens their files): root and
// its directories are made private to root, as they are created, or
// tightened if they were made with wider permissions. tmp/ may also be
// searched by others, not listed (mode 711): a restore into a user
// namespace reads its streamed page images through it, from its images
// directory's descriptor, as the namespace's root (see package restore's
// shareWithUserNamespace). No one but root reaches it by a path: the cache
// root is root's alone. A directory owned by another user is refused: its
// owner could change its mode or its entries.
func Open(root string) (*Cache, error) {
	if !filepath.IsAbs(root) {
		return nil, fmt.Errorf("cache root %q must be absolute", root)
	}
	for _, d := range []string{"", "blobs", "unpacked", "refs", "locks", "tmp"} {
		dir := filepath.Join(root, d)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create cache: %w", err)
		}
		mode := os.FileMode(0o700)
		if d == "tmp" {
			mode = sharedDirMode
		}
		if err := private(dir, mode); err != nil {
			return nil, fmt.Errorf("create cache: %w", err)
		}
	}
	blobs, err := oci.NewStorage(root)
	if err != nil {
		return nil, fmt.Errorf("open cache blobs: %w", err)
	}
	return &Cache{root: root, blobs: blobs}, nil
}

// sharedDirMode is the mode of a directory that a user namespace's root
// may search but not list, in a tree only root may enter.
const sharedDirMode = 0o711

// private gives dir, a directory, mode (0700, reachable by its owner only,
// or sharedDirMode).
func private(dir string, mode os.FileMode) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s is owned by uid %d, not by this process's user (%d): the cache holds the donors' memory", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() == mode {
		return nil
	}
	return os.Chmod(dir, mode)
}

// Root is the cache's directory.
func (c *Cache) Root() string { return c.root }

// BlobPath is where a verified blob is stored.
func (c *Cache) BlobPath(d digest.Digest) string {
	return filepath.Join(c.root, "blobs", d.Algorithm().String(), d.Encoded())
}

// HasBlob reports whether the blob is in the cache.
func (c *Cache) HasBlob(ctx context.Context, desc ocispec.Descriptor) bool {
	ok, err := c.blobs.Exists(ctx, desc)
	return err == nil && ok
}

// FetchBlob makes sure the blob is in the cache, downloading it from src if
// not, and returns its path and whether it was downloaded. Concurrent calls
// for the same digest, from any process, share one download. The content is
// verified against the descriptor's digest and size before it is stored.
func (c *Cache) FetchBlob(ctx context.Context, src content.Fetcher, desc ocispec.Descriptor) (path string, downloaded bool, err error) {
	return c.storeBlob(ctx, desc, func() (io.ReadCloser, error) { return src.Fetch(ctx, desc) })
}

// StoreBlob is FetchBlob for content the caller has at hand already (a
// manifest fetched by its tag): it reads r only if the cache lacks the
// blob, and reports whether it stored it.
func (c *Cache) StoreBlob(ctx context.Context, desc ocispec.Descriptor, r io.Reader) (stored bool, err error) {
	_, stored, err = c.storeBlob(ctx, desc, func() (io.ReadCloser, error) { return io.NopCloser(r), nil })
	return stored, err
}

func (c *Cache) storeBlob(ctx context.Context, desc ocispec.Descriptor, open func() (io.ReadCloser, error)) (path string, stored bool, err error) {
	if err := desc.Digest.Validate(); err != nil {
		return "", false, fmt.Errorf("blob digest: %w", err)
	}
	path = c.BlobPath(desc.Digest)
	if c.HasBlob(ctx, desc) {
		return path, false, nil
	}
	unlock, err := c.lock(ctx, "blob-"+desc.Digest.Encoded())
	if err != nil {
		return "", false, err
	}
	defer unlock()
	if c.HasBlob(ctx, desc) {
		return path, false, nil // another process downloaded it while we waited
	}
	// Holding the lock, any ingest file of this digest is a leftover of a
	// process that died mid-download.
	c.removeIngest(desc.Digest)
	rc, err := open()
	if err != nil {
		return "", false, fmt.Errorf("fetch %s: %w", desc.Digest, err)
	}
	defer rc.Close()
	if err := c.blobs.Push(ctx, desc, rc); err != nil && !errors.Is(err, errdef.ErrAlreadyExists) {
		// oras-go's storage does not always remove its ingest file when
		// verification fails; never leave a partial or corrupt download.
		c.removeIngest(desc.Digest)
		return "", false, fmt.Errorf("store %s: %w", desc.Digest, err)
	}
	return path, true, nil
}

// FetchOptions say what FetchBlobTo does besides passing the content on.
type FetchOptions struct {
	// Keep stores the blob in the cache too.
	Keep bool
	// ConsumerVerifies skips hashing the whole download (when not kept):
	// the consumer checks every byte it is given against digests the
	// blob's manifest lists for its parts (a streamed layer's zstd
	// frames), and fails on any byte it cannot check. The size is still
	// enforced, and the download goes to the consumer without a goroutine
	// and a pipe in between.
	ConsumerVerifies bool
}

// FetchBlobTo passes the blob's content to consume while it downloads (or,
// when it is cached already, from the cache), and returns whether it was
// downloaded. The download is checked against the descriptor's digest (unless
// opts.ConsumerVerifies) and size as it streams; a mismatch is an error
// returned after consume has seen the content, so the consumer must write
// only where a failure can be thrown away. With opts.Keep, the blob is
// stored in the cache too; without it,
// only what consume makes of it is kept (the unpacked layer), which saves
// writing the compressed copy to disk on the restore path.
func (c *Cache) FetchBlobTo(ctx context.Context, src content.Fetcher, desc ocispec.Descriptor, opts FetchOptions, consume func(io.Reader) error) (downloaded bool, err error) {
	if err := desc.Digest.Validate(); err != nil {
		return false, fmt.Errorf("blob digest: %w", err)
	}
	fromCache := func() (bool, error) {
		rc, err := c.blobs.Fetch(ctx, desc)
		if err != nil {
			return false, err
		}
		defer rc.Close()
		return false, consume(rc)
	}
	if c.HasBlob(ctx, desc) {
		return fromCache()
	}
	if opts.Keep {
		// One download stores it; the others wait, then read the cache.
		// Without Keep nothing is stored, and downloads of the same blob
		// need not wait for each other (a restore that unpacks a copy of
		// its own, beside another's, would wait for its whole download).
		unlock, err := c.lock(ctx, "blob-"+desc.Digest.Encoded())
		if err != nil {
			return false, err
		}
		defer unlock()
		if c.HasBlob(ctx, desc) {
			return fromCache()
		}
		c.removeIngest(desc.Digest)
	}
	rc, err := src.Fetch(ctx, desc)
	if err != nil {
		return false, fmt.Errorf("fetch %s: %w", desc.Digest, err)
	}
	defer rc.Close()

	if !opts.Keep && opts.ConsumerVerifies {
		// Nothing to hash or store: the consumer reads the download
		// itself, which ends with a size error instead of EOF if it is
		// not exactly desc.Size bytes.
		sr := &sizedReader{r: io.LimitReader(rc, desc.Size+1), desc: desc}
		err := consume(sr)
		if err == nil {
			_, err = io.Copy(io.Discard, sr) // the rest, and the check at its end
		}
		if err != nil {
			return true, fmt.Errorf("fetch %s: %w", desc.Digest, err)
		}
		return true, nil
	}
	pr, pw := io.Pipe()
	consumed := make(chan error, 1)
	go func() {
		err := consume(pr)
		if err == nil {
			_, err = io.Copy(io.Discard, pr) // let the download finish
		}
		pr.CloseWithError(err) // a failed consumer stops the download
		consumed <- err
	}()
	if opts.Keep {
		err = c.blobs.Push(ctx, desc, io.TeeReader(rc, pw))
		if errors.Is(err, errdef.ErrAlreadyExists) {
			err = nil
		}
	} else {
		err = verifiedCopy(pw, rc, desc)
	}
	if err != nil {
		pw.CloseWithError(err)
		c.removeIngest(desc.Digest)
		if cerr := <-consumed; cerr != nil && !errors.Is(cerr, err) {
			return true, fmt.Errorf("store %s: %w (while unpacking: %w)", desc.Digest, err, cerr)
		}
		return true, fmt.Errorf("store %s: %w", desc.Digest, err)
	}
	pw.Close()
	if err := <-consumed; err != nil {
		return true, err
	}
	return true, nil
}

// verifiedCopy copies exactly desc.Size bytes of r to w and checks them
// against desc.Digest.
func verifiedCopy(w io.Writer, r io.Reader, desc ocispec.Descriptor) error {
	v := desc.Digest.Verifier()
	n, err := io.CopyBuffer(io.MultiWriter(w, v), io.LimitReader(r, desc.Size+1), make([]byte, 1<<20))
	switch {
	case err != nil:
		return err
	case n != desc.Size:
		return fmt.Errorf("%s: %d bytes, want %d: %w", desc.Digest, n, desc.Size, errdef.ErrSizeExceedsLimit)
	case !v.Verified():
		return fmt.Errorf("%s: mismatched digest", desc.Digest)
	}
	return nil
}

// sizedReader passes on a download that must be exactly desc.Size bytes,
// and fails at its end, or past desc.Size, if it is not.
type sizedReader struct {
	r    io.Reader
	desc ocispec.Descriptor
	n    int64
	err  error
}

func (r *sizedReader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	n, err := r.r.Read(p)
	r.n += int64(n)
	switch {
	case r.n > r.desc.Size:
		n, err = 0, fmt.Errorf("%s: more than %d bytes: %w", r.desc.Digest, r.desc.Size, errdef.ErrSizeExceedsLimit)
	case err == io.EOF && r.n != r.desc.Size:
		err = fmt.Errorf("%s: %d bytes, want %d: %w", r.desc.Digest, r.n, r.desc.Size, io.ErrUnexpectedEOF)
	}
	if err != nil {
		r.err = err
	}
	return n, err
}

// removeIngest removes the temporary download files of one digest. Call it
// only while holding that digest's blob lock.
func (c *Cache) removeIngest(d digest.Digest) {
	matches, _ := filepath.Glob(filepath.Join(c.root, "ingest", d.Encoded()+"_*"))
	for _, m := range matches {
		os.Remove(m)
	}
}

// ReadBlob reads a small cached blob, verifying it again.
func (c *Cache) ReadBlob(ctx context.Context, desc ocispec.Descriptor) ([]byte, error) {
	rc, err := c.blobs.Fetch(ctx, desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return content.ReadAll(rc, desc)
}

// OpenBlob opens a cached blob for reading.
func (c *Cache) OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return c.blobs.Fetch(ctx, desc)
}

type refRecord struct {
	Reference  string             `json:"reference"`
	Descriptor ocispec.Descriptor `json:"descriptor"`
	Resolved   time.Time          `json:"resolved"`
}

func (c *Cache) refPath(ref string) string {
	h := sha256.Sum256([]byte(ref))
	return filepath.Join(c.root, "refs", hex.EncodeToString(h[:])+".json")
}

// sourcePath is where RememberSource records that source served d.
func (c *Cache) sourcePath(source string, d digest.Digest) string {
	h := sha256.Sum256([]byte(source + "\x00" + d.String()))
	return filepath.Join(c.root, "refs", hex.EncodeToString(h[:])+".source")
}

// RememberSource records that source (a registry repository, as one node
// configuration reaches it) served the manifest with digest d. The cache
// holds content by digest, whatever repository it came from: a cached
// checkpoint is restored for a reference only from a source that served
// it (SourceServed).
func (c *Cache) RememberSource(source string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return err
	}
	path := c.sourcePath(source, d)
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return writeFileAtomic(path, []byte(source+" "+d.String()+"\n"))
}

// SourceServed reports whether RememberSource recorded that source served
// the manifest with digest d.
func (c *Cache) SourceServed(source string, d digest.Digest) bool {
	if d.Validate() != nil {
		return false
	}
	data, err := os.ReadFile(c.sourcePath(source, d))
	return err == nil && string(data) == source+" "+d.String()+"\n"
}

// RememberRef records what a tag resolved to.
func (c *Cache) RememberRef(ref string, desc ocispec.Descriptor) error {
	data, err := json.Marshal(refRecord{Reference: ref, Descriptor: desc, Resolved: time.Now().UTC()})
	if err != nil {
		return err
	}
	return writeFileAtomic(c.refPath(ref), data)
}

// LookupRef returns what a tag last resolved to, if it was ever resolved here.
func (c *Cache) LookupRef(ref string) (ocispec.Descriptor, time.Time, bool) {
	data, err := os.ReadFile(c.refPath(ref))
	if err != nil {
		return ocispec.Descriptor{}, time.Time{}, false
	}
	var r refRecord
	if json.Unmarshal(data, &r) != nil || r.Reference != ref || r.Descriptor.Digest.Validate() != nil {
		return ocispec.Descriptor{}, time.Time{}, false
	}
	return r.Descriptor, r.Resolved, true
}

func writeFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

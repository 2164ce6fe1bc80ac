package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// countingSource serves blobs from memory and counts fetches.
type countingSource struct {
	blobs   map[digest.Digest][]byte
	fetches atomic.Int32
	corrupt bool
}

func (s *countingSource) Fetch(_ context.Context, d ocispec.Descriptor) (io.ReadCloser, error) {
	s.fetches.Add(1)
	b, ok := s.blobs[d.Digest]
	if !ok {
		return nil, os.ErrNotExist
	}
	if s.corrupt {
		b = append([]byte("x"), b[1:]...)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}

func newSource(contents ...string) (*countingSource, []ocispec.Descriptor) {
	s := &countingSource{blobs: map[digest.Digest][]byte{}}
	var ds []ocispec.Descriptor
	for _, c := range contents {
		d := ocispec.Descriptor{MediaType: "application/octet-stream", Digest: digest.FromString(c), Size: int64(len(c))}
		s.blobs[d.Digest] = []byte(c)
		ds = append(ds, d)
	}
	return s, ds
}

func TestFetchBlobOnceAndShared(t *testing.T) {
	c, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	src, ds := newSource("checkpoint layer")
	ctx := context.Background()

	var wg sync.WaitGroup
	var downloads atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			path, downloaded, err := c.FetchBlob(ctx, src, ds[0])
			if err != nil {
				t.Error(err)
				return
			}
			if downloaded {
				downloads.Add(1)
			}
			if b, _ := os.ReadFile(path); string(b) != "checkpoint layer" {
				t.Errorf("blob content %q", b)
			}
		}()
	}
	wg.Wait()
	if downloads.Load() != 1 || src.fetches.Load() != 1 {
		t.Fatalf("downloads=%d fetches=%d, want one of each", downloads.Load(), src.fetches.Load())
	}
	if _, downloaded, _ := c.FetchBlob(ctx, src, ds[0]); downloaded {
		t.Fatal("second fetch downloaded again")
	}
}

func TestFetchBlobRejectsCorruption(t *testing.T) {
	root := t.TempDir()
	c, _ := Open(root)
	src, ds := newSource("good content")
	src.corrupt = true
	if _, _, err := c.FetchBlob(context.Background(), src, ds[0]); err == nil {
		t.Fatal("corrupted blob accepted")
	}
	if c.HasBlob(context.Background(), ds[0]) {
		t.Fatal("corrupted blob stored")
	}
	if entries, _ := os.ReadDir(filepath.Join(root, "ingest")); len(entries) != 0 {
		t.Fatalf("ingest leftovers: %v", entries)
	}
}

func TestUnpackOnceAtomically(t *testing.T) {
	c, _ := Open(t.TempDir())
	key := digest.FromString("manifest")
	ctx := context.Background()

	boom := errors.New("boom")
	_, err := c.Unpack(ctx, key, func(dir string) error {
		os.WriteFile(filepath.Join(dir, "partial"), []byte("x"), 0o600)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Join(c.Root(), "unpacked", key.Encoded())); !os.IsNotExist(err) {
		t.Fatal("a failed unpack left a directory in unpacked/")
	}
	if entries, _ := os.ReadDir(filepath.Join(c.Root(), "tmp")); len(entries) != 0 {
		t.Fatalf("tmp leftovers: %v", entries)
	}

	var fills atomic.Int32
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := c.Unpack(ctx, key, func(dir string) error {
				fills.Add(1)
				return os.WriteFile(filepath.Join(dir, "criu"), []byte("images"), 0o600)
			})
			if err != nil {
				t.Error(err)
				return
			}
			defer u.Release()
			if b, _ := os.ReadFile(filepath.Join(u.Dir, "criu")); string(b) != "images" {
				t.Errorf("unpacked content %q", b)
			}
		}()
	}
	wg.Wait()
	if fills.Load() != 1 {
		t.Fatalf("filled %d times, want 1", fills.Load())
	}
}

func TestRefs(t *testing.T) {
	c, _ := Open(t.TempDir())
	d := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromString("m"), Size: 1}
	if _, _, ok := c.LookupRef("r/a:v1"); ok {
		t.Fatal("unknown ref found")
	}
	if err := c.RememberRef("r/a:v1", d); err != nil {
		t.Fatal(err)
	}
	got, _, ok := c.LookupRef("r/a:v1")
	if !ok || got.Digest != d.Digest {
		t.Fatalf("LookupRef = %v %v", got, ok)
	}
	if _, _, ok := c.LookupRef("r/a:v2"); ok {
		t.Fatal("other tag found")
	}
}

func TestOpenRejectsRelativeRoot(t *testing.T) {
	if _, err := Open("relative/path"); err == nil {
		t.Fatal("want an error")
	}
}

func TestFetchBlobToStreams(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	src, ds := newSource(strings.Repeat("layer bytes ", 100000))
	var got []byte
	consume := func(r io.Reader) error {
		var err error
		got, err = io.ReadAll(r)
		return err
	}
	downloaded, err := c.FetchBlobTo(ctx, src, ds[0], FetchOptions{Keep: true}, consume)
	if err != nil || !downloaded || string(got) != strings.Repeat("layer bytes ", 100000) || !c.HasBlob(ctx, ds[0]) {
		t.Fatalf("download: %v %v, %d bytes", downloaded, err, len(got))
	}
	got = nil
	downloaded, err = c.FetchBlobTo(ctx, src, ds[0], FetchOptions{Keep: true}, consume)
	if err != nil || downloaded || len(got) != len("layer bytes ")*100000 || src.fetches.Load() != 1 {
		t.Fatalf("from cache: %v %v, %d bytes, %d fetches", downloaded, err, len(got), src.fetches.Load())
	}

	// A corrupt download is an error after the consumer saw it, and is not stored.
	bad, bds := newSource("other content")
	bad.corrupt = true
	if _, err := c.FetchBlobTo(ctx, bad, bds[0], FetchOptions{Keep: true}, consume); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("corrupt blob: %v", err)
	}
	if c.HasBlob(ctx, bds[0]) {
		t.Fatal("corrupt blob stored")
	}
	// A failing consumer fails the fetch and leaves nothing behind.
	_, fds := newSource("third")
	good := &countingSource{blobs: map[digest.Digest][]byte{fds[0].Digest: []byte("third")}}
	boom := errors.New("extraction failed")
	if _, err := c.FetchBlobTo(ctx, good, fds[0], FetchOptions{Keep: true}, func(io.Reader) error { return boom }); !errors.Is(err, boom) && (err == nil || !strings.Contains(err.Error(), boom.Error())) {
		t.Fatalf("failing consumer: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(c.Root(), "ingest")); len(entries) != 0 {
		t.Fatalf("ingest leftovers: %v", entries)
	}
}

func TestFetchBlobToWithoutKeeping(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	src, ds := newSource("streamed, not kept")
	var got []byte
	consume := func(r io.Reader) (err error) { got, err = io.ReadAll(r); return err }
	if downloaded, err := c.FetchBlobTo(ctx, src, ds[0], FetchOptions{}, consume); err != nil || !downloaded || string(got) != "streamed, not kept" {
		t.Fatalf("%v %v %q", downloaded, err, got)
	}
	if c.HasBlob(ctx, ds[0]) {
		t.Fatal("blob stored without keep")
	}
	src.corrupt = true
	if _, err := c.FetchBlobTo(ctx, src, ds[0], FetchOptions{}, consume); err == nil || !strings.Contains(err.Error(), "digest") {
		t.Fatalf("corrupt stream: %v", err)
	}
	short := ds[0]
	short.Size++
	src.corrupt = false
	if _, err := c.FetchBlobTo(ctx, src, short, FetchOptions{}, consume); err == nil {
		t.Fatal("short stream accepted")
	}
	// A consumer that verifies the content itself gets it unhashed: the
	// corrupt stream reaches it (it is the one to refuse it), the wrong
	// size is still refused.
	src.corrupt = true
	if _, err := c.FetchBlobTo(ctx, src, ds[0], FetchOptions{ConsumerVerifies: true}, consume); err != nil || string(got) == "streamed, not kept" || len(got) != len("streamed, not kept") {
		t.Fatalf("corrupt stream to a verifying consumer: %v, %q", err, got)
	}
	src.corrupt = false
	if _, err := c.FetchBlobTo(ctx, src, short, FetchOptions{ConsumerVerifies: true}, consume); err == nil {
		t.Fatal("short stream accepted by a verifying consumer")
	}
	long := ds[0]
	long.Size--
	if _, err := c.FetchBlobTo(ctx, src, long, FetchOptions{ConsumerVerifies: true}, consume); err == nil || len(got) > int(long.Size) {
		t.Fatalf("long stream to a verifying consumer: %v, %d bytes passed on", err, len(got))
	}
}

// A cache root made by hand with wider permissions, and its directories,
// are made private: they hold the donors' memory.
func TestOpenMakesCachePrivate(t *testing.T) {
	root := filepath.Join(t.TempDir(), "cache")
	for _, d := range []string{root, filepath.Join(root, "tmp")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil { // whatever the umask
			t.Fatal(err)
		}
	}
	if _, err := Open(root); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"", "blobs", "unpacked", "refs", "locks", "tmp"} {
		fi, err := os.Stat(filepath.Join(root, d))
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o700)
		if d == "tmp" {
			want = 0o711 // searched from a user namespace (ShareDir)
		}
		if perm := fi.Mode().Perm(); perm != want {
			t.Errorf("%s/%s has mode %o, want %o", root, d, perm, want)
		}
	}
	// A directory of another user's is an error: its owner could change it.
	if os.Geteuid() == 0 {
		theirs := filepath.Join(t.TempDir(), "cache")
		if err := os.MkdirAll(filepath.Join(theirs, "tmp"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(filepath.Join(theirs, "tmp"), 1000, 1000); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(theirs); err == nil || !strings.Contains(err.Error(), "owned by uid 1000") {
			t.Errorf("a tmp/ of uid 1000's: %v", err)
		}
	}
	// A file where a directory belongs is an error, not something to chmod.
	bad := filepath.Join(t.TempDir(), "cache")
	if err := os.MkdirAll(bad, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, "tmp"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(bad); err == nil {
		t.Fatal("a file named tmp in the cache root: no error")
	}
}

// Downloads of one blob that store nothing do not wait for each other: a
// restore that unpacks a copy of its own, beside another's that holds the
// checkpoint's unpack, would otherwise wait for that one's whole download.
func TestFetchBlobToWithoutKeepingDoesNotWait(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	src, ds := newSource("the layer")
	held := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := c.FetchBlobTo(ctx, src, ds[0], FetchOptions{ConsumerVerifies: true}, func(r io.Reader) error {
			<-held // the first download, still going on
			_, err := io.Copy(io.Discard, r)
			return err
		})
		first <- err
	}()
	for src.fetches.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var got []byte
	if _, err := c.FetchBlobTo(short, src, ds[0], FetchOptions{ConsumerVerifies: true}, func(r io.Reader) (err error) { got, err = io.ReadAll(r); return err }); err != nil || string(got) != "the layer" {
		t.Fatalf("a second download while the first goes on: %q, %v", got, err)
	}
	close(held)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// Which repositories served a manifest is remembered until the checkpoint
// is removed from the cache, for that manifest only.
func TestSourcesForgottenWithTheCheckpoint(t *testing.T) {
	c, _ := Open(t.TempDir())
	ctx := context.Background()
	a, b := digest.FromString("a"), digest.FromString("b")
	for _, d := range []digest.Digest{a, b} {
		if err := c.RememberSource("config=/etc/snapboot/config.toml repository=reg.test/apps/web", d); err != nil {
			t.Fatal(err)
		}
	}
	if !c.SourceServed("config=/etc/snapboot/config.toml repository=reg.test/apps/web", a) ||
		c.SourceServed("config=/etc/snapboot/config.toml repository=reg.test/apps/other", a) ||
		c.SourceServed("config=/etc/snapboot/other.toml repository=reg.test/apps/web", a) {
		t.Fatal("a source is remembered for its repository and configuration only")
	}
	if err := c.Remove(ctx, a); err != nil {
		t.Fatal(err)
	}
	if c.SourceServed("config=/etc/snapboot/config.toml repository=reg.test/apps/web", a) {
		t.Fatal("remembered after the checkpoint was removed")
	}
	if !c.SourceServed("config=/etc/snapboot/config.toml repository=reg.test/apps/web", b) {
		t.Fatal("another checkpoint's source forgotten")
	}
}

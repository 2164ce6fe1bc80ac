package pack

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pierrec/lz4/v4"

	"github.com/snapboot/snapboot/oci"
	"github.com/snapboot/snapboot/unpack"
)

func TestRoundTrip(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "inventory.img"), []byte("inventory"), 0o600)
	os.Mkdir(filepath.Join(src, "sub"), 0o700)
	os.WriteFile(filepath.Join(src, "sub", "pages-1.img"), bytes.Repeat([]byte("page"), 100000), 0o600)

	var buf bytes.Buffer
	sz, err := TarDir(context.Background(), src, &buf, "")
	if err != nil {
		t.Fatal(err)
	}
	if sz.Compressed != int64(buf.Len()) || sz.Raw <= 400000 || sz.Compressed >= sz.Raw/10 {
		t.Fatalf("sizes %+v for %d bytes written", sz, buf.Len())
	}
	dst := t.TempDir()
	if _, err := unpack.TarCompressed(context.Background(), &buf, dst, unpack.Options{Mode: unpack.CRIUImages}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"inventory.img", "sub/pages-1.img"} {
		a, _ := os.ReadFile(filepath.Join(src, f))
		b, err := os.ReadFile(filepath.Join(dst, f))
		if err != nil || !bytes.Equal(a, b) {
			t.Fatalf("%s differs after the round trip: %v", f, err)
		}
	}
}

func TestRefusesLinks(t *testing.T) {
	src := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(src, "link"))
	_, err := TarDir(context.Background(), src, &bytes.Buffer{}, "")
	if err == nil || !strings.Contains(err.Error(), "only regular files") {
		t.Fatalf("got %v", err)
	}
}

func TestZstd(t *testing.T) {
	var buf bytes.Buffer
	sz, err := Zstd(context.Background(), strings.NewReader(strings.Repeat("x", 10000)), &buf, "")
	if err != nil || sz.Raw != 10000 || sz.Compressed != int64(buf.Len()) {
		t.Fatalf("%+v %v", sz, err)
	}
}

// Every level packs what zstd -d reads back, the levels are really
// different, and a wrong name is refused before anything is written.
func TestLevels(t *testing.T) {
	var data []byte
	for i := 0; len(data) < 8<<20; i++ { // compressible, but not trivially
		data = append(data, fmt.Sprintf("model %d: %x, ", i%5000, i*2654435761)...)
	}
	sizes := map[Level]int64{}
	for _, l := range Levels {
		var buf bytes.Buffer
		sz, err := Zstd(context.Background(), bytes.NewReader(data), &buf, l)
		if err != nil {
			t.Fatalf("%s: %v", l, err)
		}
		dec, err := zstd.NewReader(&buf)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(dec)
		dec.Close()
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back %d of %d bytes: %v", l, len(got), len(data), err)
		}
		sizes[l] = sz.Compressed
	}
	if sizes["best"] >= sizes["fastest"] {
		t.Errorf("best packs to %d bytes, fastest to %d", sizes["best"], sizes["fastest"])
	}
	if l, err := ParseLevel(""); err != nil || l != DefaultLevel {
		t.Errorf(`ParseLevel("") = %q, %v`, l, err)
	}
	var buf bytes.Buffer
	if _, err := Zstd(context.Background(), bytes.NewReader(data), &buf, "max"); err == nil || buf.Len() != 0 {
		t.Errorf("level max: %v, %d bytes written", err, buf.Len())
	}
}

// The page images come last, in the order of their numbers (CRIU's dump
// order, parents first), and the stream index describes the frames
// actually written and the page images in the order they were packed.
func TestPageImagesLastAndIndexed(t *testing.T) {
	src := t.TempDir()
	files := map[string][]byte{
		"core-1.img":    []byte("core"),
		"pages-1.img":   bytes.Repeat([]byte{1, 2, 3, 4, 5, 6, 7}, 1<<20),
		"pages-2.img":   {},
		"pages-10.img":  []byte("a child's pages"),
		"pagemap-1.img": []byte("pagemap"),
		"zz-last.img":   []byte("lexically after the pages"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(src, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	sz, err := TarDir(context.Background(), src, &buf, "")
	if err != nil {
		t.Fatal(err)
	}
	if sz.Stream == nil {
		t.Fatal("no stream index")
	}
	want := []oci.TailFile{{Name: "pages-1.img", Size: 7 << 20}, {Name: "pages-2.img", Size: 0}, {Name: "pages-10.img", Size: 15}}
	if !reflect.DeepEqual(sz.Stream.Tail, want) {
		t.Fatalf("tail %+v, want %+v", sz.Stream.Tail, want)
	}
	// The frames cover the layer, each with the digest of its bytes.
	data := buf.Bytes()
	var off int64
	for i, f := range sz.Stream.Frames {
		if off+f.Size > int64(len(data)) || digest.FromBytes(data[off:off+f.Size]) != f.Digest {
			t.Fatalf("frame %d (%d bytes at %d) does not match its digest", i, f.Size, off)
		}
		off += f.Size
	}
	if off != int64(len(data)) || len(sz.Stream.Frames) < 2 {
		t.Fatalf("%d frames cover %d of %d bytes", len(sz.Stream.Frames), off, len(data))
	}
	// The first frame holds everything before the page images and ends
	// with the first page image's header.
	var first []string
	tr0 := tar.NewReader(zstdReader(t, data[:sz.Stream.Frames[0].Size]))
	for {
		hdr, err := tr0.Next()
		if err != nil {
			t.Fatalf("first frame, after %v: %v", first, err)
		}
		first = append(first, hdr.Name)
		if hdr.Name == "pages-1.img" {
			if n, _ := io.Copy(io.Discard, tr0); n != 0 {
				t.Fatalf("the first frame holds %d bytes of pages-1.img", n)
			}
			break
		}
	}
	if got := strings.Join(first, " "); got != "core-1.img pagemap-1.img zz-last.img pages-1.img" {
		t.Fatalf("first frame: %s", got)
	}
	// It is small, so it goes in the manifest as well.
	if !bytes.Equal(sz.Stream.Head, data[:sz.Stream.Frames[0].Size]) {
		t.Fatalf("head: %d bytes, not the first frame's %d", len(sz.Stream.Head), sz.Stream.Frames[0].Size)
	}
	// The annotations decode back to the same index.
	layer := ocispec.Descriptor{Size: int64(len(data)), Digest: digest.FromBytes(data), Annotations: sz.Stream.Annotations()}
	back, err := oci.StreamOf(layer)
	if err != nil || !reflect.DeepEqual(back, sz.Stream) {
		t.Fatalf("annotations decode to %+v, %v", back, err)
	}

	if got := strings.Join(tarNames(t, zstdReader(t, data)), " "); got != "core-1.img pagemap-1.img zz-last.img pages-1.img pages-2.img pages-10.img" {
		t.Fatalf("tar order: %s", got)
	}
}

// A first frame over oci.MaxEmbeddedHead stays out of the manifest.
func TestLargeFirstFrameNotEmbedded(t *testing.T) {
	src := t.TempDir()
	noise := make([]byte, oci.MaxEmbeddedHead+1)
	rand.NewChaCha8([32]byte{1}).Read(noise)
	os.WriteFile(filepath.Join(src, "core-1.img"), noise, 0o600)
	os.WriteFile(filepath.Join(src, "pages-1.img"), []byte("pages"), 0o600)
	var buf bytes.Buffer
	sz, err := TarDir(context.Background(), src, &buf, "")
	if err != nil {
		t.Fatal(err)
	}
	if sz.Stream == nil || sz.Stream.Frames[0].Size <= oci.MaxEmbeddedHead || sz.Stream.Head != nil {
		t.Fatalf("first frame of %d bytes, head of %d", sz.Stream.Frames[0].Size, len(sz.Stream.Head))
	}
}

func TestNoPagesNoIndex(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "inventory.img"), []byte("inventory"), 0o600)
	sz, err := TarDir(context.Background(), src, &bytes.Buffer{}, "")
	if err != nil || sz.Stream != nil {
		t.Fatalf("%+v, %v", sz.Stream, err)
	}
}

// tarNames lists the names of the tar stream r's entries, in order.
func tarNames(t *testing.T, r io.Reader) []string {
	t.Helper()
	var names []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
	}
}

func zstdReader(t *testing.T, data []byte) io.Reader {
	t.Helper()
	zr, err := zstd.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(zr.Close)
	return zr
}

// At level LZ4 the CRIU images are a sequence of LZ4 frames, each listed
// and each an LZ4 frame of its own, that the LZ4 frame format's readers
// (and unpack) read back; the rootfs changes stay zstd.
func TestLZ4(t *testing.T) {
	src := t.TempDir()
	pages := bytes.Repeat([]byte("a page of a ruby heap, "), 1<<19) // 11.5 MiB: three frames
	os.WriteFile(filepath.Join(src, "inventory.img"), []byte("inventory"), 0o600)
	os.WriteFile(filepath.Join(src, "pages-1.img"), pages, 0o600)
	var buf bytes.Buffer
	sz, err := TarDir(context.Background(), src, &buf, LZ4)
	if err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	if sz.Compressed != int64(len(data)) || sz.Compressed >= sz.Raw/10 || sz.Stream == nil || len(sz.Stream.Frames) != 4 {
		t.Fatalf("sizes %+v, frames %+v", sz, sz.Stream)
	}
	var off int64
	for i, f := range sz.Stream.Frames {
		frame := data[off : off+f.Size]
		if digest.FromBytes(frame) != f.Digest {
			t.Fatalf("frame %d does not match its digest", i)
		}
		if _, err := io.Copy(io.Discard, lz4.NewReader(bytes.NewReader(frame))); err != nil {
			t.Fatalf("frame %d is not an LZ4 frame of its own: %v", i, err)
		}
		off += f.Size
	}
	if got := strings.Join(tarNames(t, lz4.NewReader(bytes.NewReader(data))), " "); got != "inventory.img pages-1.img" {
		t.Fatalf("tar read through lz4: %s", got)
	}
	if _, err := io.ReadAll(zstdReader(t, data)); err == nil {
		t.Fatal("the LZ4 layer reads as zstd")
	}
	if lz4cli, err := exec.LookPath("lz4"); err == nil {
		cmd := exec.Command(lz4cli, "-dc")
		cmd.Stdin = bytes.NewReader(data)
		out, err := cmd.Output()
		if err != nil || !bytes.Contains(out, pages[:1000]) {
			t.Fatalf("lz4 -d: %d bytes, %v", len(out), err)
		}
	}
	dst := t.TempDir()
	for _, frames := range [][]oci.Frame{nil, sz.Stream.Frames} {
		os.RemoveAll(dst)
		os.Mkdir(dst, 0o700)
		if _, err := unpack.TarCompressed(context.Background(), bytes.NewReader(data), dst, unpack.Options{Mode: unpack.CRIUImages, Codec: unpack.LZ4, Frames: frames}); err != nil {
			t.Fatal(err)
		}
		if b, _ := os.ReadFile(filepath.Join(dst, "pages-1.img")); !bytes.Equal(b, pages) {
			t.Fatalf("pages-1.img unpacked to %d bytes, not the page image", len(b))
		}
	}
	if LZ4.CRIUImagesMediaType() != oci.MediaTypeCRIUImagesLZ4 || Level("best").CRIUImagesMediaType() != oci.MediaTypeCRIUImages {
		t.Fatal("media types")
	}

	// The rootfs changes, at level LZ4, are zstd.
	buf.Reset()
	if _, err := Zstd(context.Background(), strings.NewReader(strings.Repeat("x", 10000)), &buf, LZ4); err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(zstdReader(t, buf.Bytes())); err != nil || len(got) != 10000 {
		t.Fatalf("rootfs changes at level lz4: %d bytes read as zstd, %v", len(got), err)
	}
}

// More page images than a node takes in a stream index: the checkpoint
// gets no index (it is pulled whole), not one every node refuses.
func TestTooManyPageImagesNoIndex(t *testing.T) {
	src := t.TempDir()
	for i := 1; i <= oci.MaxTail+1; i++ {
		if err := os.WriteFile(filepath.Join(src, fmt.Sprintf("pages-%d.img", i)), []byte{byte(i)}, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	sz, err := TarDir(context.Background(), src, &buf, "fastest")
	if err != nil {
		t.Fatal(err)
	}
	if sz.Stream != nil {
		t.Fatalf("a stream index of %d page images, which every node refuses", len(sz.Stream.Tail))
	}
}

// A cancelled pack stops within a file, not only between files: a page
// image may be GiBs.
func TestTarDirStopsWithinAFile(t *testing.T) {
	src := t.TempDir()
	pages := make([]byte, 32<<20) // incompressible, so that it is written as it is read
	rand.NewChaCha8([32]byte{2}).Read(pages)
	if err := os.WriteFile(filepath.Join(src, "pages-1.img"), pages, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &cancelAfter{n: 1 << 20, cancel: cancel}
	if _, err := TarDir(ctx, src, w, "fastest"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled pack: %v, want context.Canceled", err)
	}
	if w.written >= len(pages) {
		t.Fatalf("%d bytes written after the cancel", w.written)
	}
}

// cancelAfter calls cancel once n bytes are written.
type cancelAfter struct {
	n, written int
	cancel     func()
}

func (c *cancelAfter) Write(p []byte) (int, error) {
	c.written += len(p)
	if c.written >= c.n {
		c.cancel()
	}
	return len(p), nil
}

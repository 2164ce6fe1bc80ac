//go:build linux

package unpack

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/snapboot/snapboot/oci"
)

// framed splits a tar into zstd frames of about size bytes and lists them.
func framed(t *testing.T, tarData []byte, size int) ([]byte, []oci.Frame) {
	t.Helper()
	var out []byte
	var list []oci.Frame
	for off := 0; off < len(tarData); off += size {
		f := frames(t, tarData[off:min(off+size, len(tarData))])
		list = append(list, oci.Frame{Size: int64(len(f)), Digest: digest.FromBytes(f)})
		out = append(out, f...)
	}
	return out, list
}

// recorder is a FileObserver that keeps what it was told, and takes the
// content of the files it is asked to.
type recorder struct {
	started []string
	take    map[string]*bytes.Buffer
	refuse  string
}

func (r *recorder) Start(name string, size int64) (io.Writer, error) {
	if name == r.refuse {
		return nil, errors.New("refused")
	}
	r.started = append(r.started, name)
	if b, ok := r.take[name]; ok {
		return b, nil
	}
	return nil, nil
}

// adopter is a FileObserver whose writers take the content's buffers
// (Adopter) and keep them until told to let go.
type adopter struct {
	files    map[string]*adopted
	released int
}

type adopted struct {
	a        *adopter
	bufs     [][]byte
	releases []func()
}

func (a *adopter) Start(name string, size int64) (io.Writer, error) {
	f, ok := a.files[name]
	if !ok {
		return nil, nil
	}
	f.a = a
	return f, nil
}

func (f *adopted) Write(p []byte) (int, error) { // the copying path
	f.bufs = append(f.bufs, bytes.Clone(p))
	f.releases = append(f.releases, func() {})
	return len(p), nil
}

func (f *adopted) Adopt(b []byte, release func()) error {
	f.bufs = append(f.bufs, b)
	f.releases = append(f.releases, func() { f.a.released++; release() })
	return nil
}

func (f *adopted) content() []byte { return bytes.Join(f.bufs, nil) }

// Files handed over as slices of the decoded frames: what the adopter holds
// is the content, unchanged while the frames after it are decoded into
// reused buffers, and the tar stream goes on at the next header.
func TestAdoptedFiles(t *testing.T) {
	pages1, pages2 := randomish(3<<20+100, 1), randomish(1<<20+7, 2)
	tarData := archive(t, reg("core-1.img", "core"), reg("pages-1.img", string(pages1)), reg("pages-2.img", string(pages2)), reg("zz-after.img", "after"))
	big := make([]byte, 17<<20) // one frame larger than maxParallelFrame: decoded as a stream
	rand.New(rand.NewSource(3)).Read(big)
	for _, c := range []struct {
		name   string
		data   []byte
		frames []oci.Frame
		want   map[string][]byte
	}{
		{name: "frames", want: map[string][]byte{"pages-1.img": pages1, "pages-2.img": pages2}},
		{name: "one large frame", data: frames(t, archive(t, reg("pages-1.img", string(big)), reg("zz-after.img", "after"))),
			want: map[string][]byte{"pages-1.img": big}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.data == nil {
				c.data, c.frames = framed(t, tarData, 700_000) // frames cut across entries and blocks
			}
			ad := &adopter{files: map[string]*adopted{}}
			for name := range c.want {
				ad.files[name] = &adopted{}
			}
			out := t.TempDir()
			if _, err := TarCompressed(context.Background(), bytes.NewReader(c.data), out, Options{Mode: CRIUImages, Frames: c.frames, Files: ad, Workers: 2}); err != nil {
				t.Fatal(err)
			}
			for name, want := range c.want {
				f := ad.files[name]
				if got := f.content(); !bytes.Equal(got, want) {
					t.Fatalf("%s: the adopter holds %d bytes in %d buffers, differing from the %d of the file", name, len(got), len(f.bufs), len(want))
				}
				for _, release := range f.releases {
					release()
				}
			}
			if b, err := os.ReadFile(filepath.Join(out, "zz-after.img")); err != nil || string(b) != "after" {
				t.Fatalf("the entry after the adopted files: %q, %v", b, err)
			}
			if c.frames != nil && ad.released < 3 {
				t.Fatalf("%d buffers were lent", ad.released)
			}
		})
	}
}

func streamArchive(t *testing.T) []byte {
	return archive(t, reg("core-1.img", "core"), reg("pages-1.img", string(randomish(3<<20, 1))), reg("pages-2.img", "tail"))
}

func TestVerifiedFrames(t *testing.T) {
	data, list := framed(t, streamArchive(t), 1<<20)
	rec := &recorder{take: map[string]*bytes.Buffer{"pages-1.img": {}}}
	out := t.TempDir()
	if _, err := TarCompressed(context.Background(), bytes.NewReader(data), out, Options{Mode: CRIUImages, Frames: list, Files: rec, Workers: 2}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rec.started, " "); got != "core-1.img pages-1.img pages-2.img" {
		t.Fatalf("started %s", got)
	}
	// pages-1.img went to the observer's writer, and its file stayed empty.
	if !bytes.Equal(rec.take["pages-1.img"].Bytes(), randomish(3<<20, 1)) {
		t.Fatalf("the observer got %d bytes of pages-1.img", rec.take["pages-1.img"].Len())
	}
	if fi, err := os.Stat(filepath.Join(out, "pages-1.img")); err != nil || fi.Size() != 0 {
		t.Fatalf("pages-1.img on disk: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(filepath.Join(out, "pages-2.img")); string(b) != "tail" {
		t.Fatalf("pages-2.img: %q", b)
	}
}

func TestVerifiedFramesRejects(t *testing.T) {
	good, list := framed(t, streamArchive(t), 1<<20)
	if len(list) < 3 {
		t.Fatalf("%d frames", len(list))
	}
	// Another stream of the same length but different content in frame 1:
	// what an attacker who controls the registry could serve.
	other, otherList := framed(t, archive(t, reg("core-1.img", "CORE"), reg("pages-1.img", string(randomish(3<<20, 2))), reg("pages-2.img", "tail")), 1<<20)
	swapped := append(append(append([]byte{}, good[:list[0].Size]...), other[otherList[0].Size:otherList[0].Size+otherList[1].Size]...), good[list[0].Size+list[1].Size:]...)
	listSwapped := append([]oci.Frame{}, list...)
	listSwapped[1].Size = otherList[1].Size // same size, wrong digest

	for _, c := range []struct {
		name   string
		data   []byte
		frames []oci.Frame
	}{
		{"frame with another digest", swapped, listSwapped},
		{"missing last frame", good[:len(good)-int(list[len(list)-1].Size)], list},
		{"last frame cut short", good[:len(good)-10], list},
		{"no frames listed", good, []oci.Frame{}},
		{"extra frame", append(append([]byte{}, good...), frames(t, make([]byte, 1024))...), list},
		{"frame of another size", good, append([]oci.Frame{{Size: list[0].Size + 1, Digest: list[0].Digest}}, list[1:]...)},
		{"skippable frame", append([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}, good...), list},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{take: map[string]*bytes.Buffer{"pages-1.img": {}}}
			out := t.TempDir()
			_, err := TarCompressed(context.Background(), bytes.NewReader(c.data), out, Options{Mode: CRIUImages, Frames: c.frames, Files: rec})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			if cut := strings.HasPrefix(c.name, "missing") || strings.HasSuffix(c.name, "cut short"); cut != errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("got %v: a stream that ends early is an unexpected EOF, and only that", err)
			}
			// Nothing from the bad frame on is written.
			if c.name == "frame with another digest" && rec.take["pages-1.img"].Len() > 1<<20 {
				t.Fatalf("%d bytes of pages-1.img written past the bad frame", rec.take["pages-1.img"].Len())
			}
		})
	}
}

func TestObserverStopsExtraction(t *testing.T) {
	data, list := framed(t, streamArchive(t), 1<<20)
	rec := &recorder{refuse: "pages-2.img"}
	_, err := TarCompressed(context.Background(), bytes.NewReader(data), t.TempDir(), Options{Mode: CRIUImages, Frames: list, Files: rec})
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("got %v", err)
	}
}

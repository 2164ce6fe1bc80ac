//go:build linux

package unpack

import (
	"bytes"
	"context"
	"errors"
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

// recorder is a FileObserver that keeps what it was told.
type recorder struct {
	started []string
	wrote   map[string]int64
	refuse  string
}

func (r *recorder) Start(name string, size int64) error {
	if name == r.refuse {
		return errors.New("refused")
	}
	r.started = append(r.started, name)
	return nil
}

func (r *recorder) Wrote(name string, n int64) {
	if n < r.wrote[name] {
		panic("progress went backwards")
	}
	r.wrote[name] = n
}

func streamArchive(t *testing.T) []byte {
	return archive(t, reg("core-1.img", "core"), reg("pages-1.img", string(randomish(3<<20, 1))), reg("pages-2.img", "tail"))
}

func TestVerifiedFrames(t *testing.T) {
	data, list := framed(t, streamArchive(t), 1<<20)
	rec := &recorder{wrote: map[string]int64{}}
	out := t.TempDir()
	if _, err := TarZstd(context.Background(), bytes.NewReader(data), out, Options{Mode: CRIUImages, Frames: list, Files: rec}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(rec.started, " "); got != "core-1.img pages-1.img pages-2.img" {
		t.Fatalf("started %s", got)
	}
	if rec.wrote["pages-1.img"] != 3<<20 || rec.wrote["pages-2.img"] != 4 {
		t.Fatalf("progress %v", rec.wrote)
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
		{"extra frame", append(append([]byte{}, good...), frames(t, make([]byte, 1024))...), list},
		{"frame of another size", good, append([]oci.Frame{{Size: list[0].Size + 1, Digest: list[0].Digest}}, list[1:]...)},
		{"skippable frame", append([]byte{0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4}, good...), list},
	} {
		t.Run(c.name, func(t *testing.T) {
			rec := &recorder{wrote: map[string]int64{}}
			out := t.TempDir()
			_, err := TarZstd(context.Background(), bytes.NewReader(c.data), out, Options{Mode: CRIUImages, Frames: c.frames, Files: rec})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("got %v, want ErrCorrupt", err)
			}
			// Nothing from the bad frame on is written.
			if c.name == "frame with another digest" && rec.wrote["pages-1.img"] > int64(1<<20) {
				t.Fatalf("%d bytes of pages-1.img written past the bad frame", rec.wrote["pages-1.img"])
			}
		})
	}
}

func TestObserverStopsExtraction(t *testing.T) {
	data, list := framed(t, streamArchive(t), 1<<20)
	rec := &recorder{wrote: map[string]int64{}, refuse: "pages-2.img"}
	_, err := TarZstd(context.Background(), bytes.NewReader(data), t.TempDir(), Options{Mode: CRIUImages, Frames: list, Files: rec})
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("got %v", err)
	}
}

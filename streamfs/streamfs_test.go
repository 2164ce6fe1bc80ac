//go:build linux

package streamfs

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// mount mounts files in a temporary directory, or skips the test where FUSE
// can't be mounted (not root, no /dev/fuse).
func mount(t testing.TB, files ...File) *FS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	s, err := Mount(t.TempDir(), files)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// backing makes a backing file with content and attaches it, nothing written yet.
func backing(t testing.TB, s *FS, name string) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	w, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Attach(name, r); err != nil {
		t.Fatal(err)
	}
	return w
}

func TestReadWaitsForWrites(t *testing.T) {
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(rand.IntN(256))
	}
	s := mount(t, File{Name: "pages-1.img", Size: int64(len(data))})
	w := backing(t, s, "pages-1.img")

	got := make(chan []byte, 1)
	readErr := make(chan error, 1)
	go func() {
		b, err := os.ReadFile(filepath.Join(s.Mountpoint, "pages-1.img"))
		got <- b
		readErr <- err
	}()
	// Written in pieces, with pauses: the reader must wait, not see EOF.
	for off := 0; off < len(data); {
		n := min(700<<10, len(data)-off)
		if _, err := w.Write(data[off : off+n]); err != nil {
			t.Fatal(err)
		}
		off += n
		s.Written("pages-1.img", int64(off))
		select {
		case b := <-got:
			if off < len(data) {
				t.Fatalf("read returned %d bytes after only %d of %d were written", len(b), off, len(data))
			}
			got <- b
		case <-time.After(20 * time.Millisecond):
		}
	}
	select {
	case b := <-got:
		if err := <-readErr; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("read %d bytes, not the %d written", len(b), len(data))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("read did not finish once everything was written")
	}
}

func TestFailMakesWaitingReadsFail(t *testing.T) {
	s := mount(t, File{Name: "pages-1.img", Size: 1 << 20})
	w := backing(t, s, "pages-1.img")
	if _, err := w.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	s.Written("pages-1.img", 4096)

	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n, err := f.ReadAt(make([]byte, 4096), 0); err != nil || n != 4096 {
		t.Fatalf("reading written bytes: %d, %v", n, err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := f.ReadAt(make([]byte, 4096), 8192)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("read of unwritten bytes returned early: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	s.Fail(errors.New("digest mismatch"))
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("waiting read: %v, want EIO", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiting read not woken by Fail")
	}
	if _, err := f.ReadAt(make([]byte, 10), 0); err != nil {
		t.Fatalf("bytes written before the failure: %v", err)
	}
}

func TestOnlyListedFilesAndReadOnly(t *testing.T) {
	s := mount(t, File{Name: "pages-1.img", Size: 10})
	if _, err := os.Stat(filepath.Join(s.Mountpoint, "pages-2.img")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("unlisted file: %v", err)
	}
	fi, err := os.Stat(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil || fi.Size() != 10 {
		t.Fatalf("listed file: %v, %v", fi, err)
	}
	if _, err := os.OpenFile(filepath.Join(s.Mountpoint, "pages-1.img"), os.O_WRONLY, 0); err == nil {
		t.Fatal("opened for writing")
	}
	if err := os.WriteFile(filepath.Join(s.Mountpoint, "new"), nil, 0o600); err == nil {
		t.Fatal("created a file")
	}
}

func TestMountRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "..", "a/b", "."} {
		if _, err := Mount(t.TempDir(), []File{{Name: name, Size: 1}}); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := Mount(t.TempDir(), []File{{Name: "a", Size: 1}, {Name: "a", Size: 1}}); err == nil {
		t.Error("duplicate name accepted")
	}
}

// BenchmarkRead reads a fully written 256 MiB file through the mount in
// 4 MiB preads, as CRIU's restorer reads page images.
func BenchmarkRead(b *testing.B) {
	const size = 256 << 20
	s := mount(b, File{Name: "pages-1.img", Size: size})
	w := backing(b, s, "pages-1.img")
	if _, err := w.Write(make([]byte, size)); err != nil {
		b.Fatal(err)
	}
	s.Written("pages-1.img", size)
	buf := make([]byte, 4<<20)
	b.SetBytes(size)
	for b.Loop() {
		f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
		if err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < size; off += int64(len(buf)) {
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		f.Close()
	}
}

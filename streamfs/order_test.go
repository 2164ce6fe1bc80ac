//go:build linux

package streamfs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// unmounted is a file system that is not mounted, for tests that call read
// directly, as the FUSE server does.
func unmounted(spillDir string, files ...File) *FS {
	now := time.Now()
	s := &FS{files: map[string]*file{}, changed: make(chan struct{}), mounted: now, lastRead: now, spillDir: spillDir}
	for _, f := range files {
		s.files[f.Name] = &file{name: f.Name, size: f.Size}
	}
	return s
}

// readDirect reads [off, off+n) of f as a FUSE request would, checks the
// bytes against want, and lets go of the reply.
func readDirect(t *testing.T, s *FS, f *file, off, n int64, want []byte) {
	t.Helper()
	out, done, errno := s.read(f, make([]byte, n), off)
	if errno != 0 {
		t.Fatalf("read [%d, %d): %v", off, off+n, errno)
	}
	if !bytes.Equal(out, want[off:off+n]) {
		t.Fatalf("read [%d, %d): the bytes differ from those written", off, off+n)
	}
	if done != nil {
		done()
	}
}

// allDropped fails unless every chunk of f is let go of within a few
// seconds (a reply's Done may come just after its reader has its bytes).
func allDropped(t *testing.T, s *FS, f *file) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		dropped, chunks, held := f.dropped, len(f.chunks), s.held
		s.mu.Unlock()
		if dropped == chunks && held == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d chunks dropped, %d bytes held, once every byte was read", dropped, chunks, held)
		}
	}
}

// A read of chunks before one already read and dropped: the dropped
// chunk keeps its place (a review found its entry zeroed, and the read
// then released a chunk twice), whether the chunks are adopted buffers or
// runs of the spill file.
func TestReadBeforeADroppedChunk(t *testing.T) {
	t.Run("adopted", func(t *testing.T) {
		const q = 256 << 10
		data := randomBytes(3 * q)
		s := unmounted("", File{Name: "pages-1.img", Size: 3 * q})
		w, err := s.Writer("pages-1.img")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if err := w.(*writer).Adopt(data[i*q:(i+1)*q], func() {}); err != nil {
				t.Fatal(err)
			}
		}
		f := s.files["pages-1.img"]
		readDirect(t, s, f, 2*q, q, data)
		readDirect(t, s, f, 0, 2*q, data)
		allDropped(t, s, f)
	})
	t.Run("spilled", func(t *testing.T) {
		prev := maxInMemory
		maxInMemory = 0
		t.Cleanup(func() { maxInMemory = prev })
		data := randomBytes(2 << 20)
		s := unmounted(t.TempDir(), File{Name: "pages-1.img", Size: 2 << 20})
		w, err := s.Writer("pages-1.img")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
		defer s.spill.Close()
		f := s.files["pages-1.img"]
		readDirect(t, s, f, 1<<20, 1<<20, data)
		readDirect(t, s, f, 0, 1<<20, data)
		allDropped(t, s, f)
	})
}

// Each byte read once, in any order, by concurrent reads, while the writer
// writes and adopts pieces of any size, sometimes spilling: every read gets
// its bytes, still intact when its reply has been written (adopted buffers
// are overwritten once let go of, as a reused frame would be), and nothing
// is held at the end.
func TestReadsInAnyOrder(t *testing.T) {
	setWindow(t, 64<<20, time.Minute)
	prev := maxInMemory
	t.Cleanup(func() { maxInMemory = prev })
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 1))
		dir := ""
		maxInMemory = prev
		if seed%3 == 0 {
			dir, maxInMemory = t.TempDir(), 3<<20
		}
		size := int64(rng.IntN(12<<20) + 1)
		data := randomBytes(int(size))
		s := unmounted(dir, File{Name: "pages-1.img", Size: size})
		f := s.files["pages-1.img"]
		w, err := s.Writer("pages-1.img")
		if err != nil {
			t.Fatal(err)
		}
		wrote := make(chan error, 1)
		go func(rng *rand.Rand) {
			for p := int64(0); p < size; {
				n := min(int64(rng.IntN(3<<20)+1), size-p)
				var err error
				if rng.IntN(2) == 0 {
					_, err = w.Write(data[p : p+n])
				} else {
					b := bytes.Clone(data[p : p+n])
					err = w.(*writer).Adopt(b, func() {
						for i := range b {
							b[i] = 0xEE
						}
					})
				}
				if err != nil {
					wrote <- err
					return
				}
				p += n
			}
			wrote <- nil
		}(rand.New(rand.NewPCG(seed, 2)))
		type run struct{ off, n int64 }
		var runs []run
		for p := int64(0); p < size; {
			n := min(int64(rng.IntN(1<<20)+1), size-p)
			runs = append(runs, run{p, n})
			p += n
		}
		rng.Shuffle(len(runs), func(i, j int) { runs[i], runs[j] = runs[j], runs[i] })
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		var mu sync.Mutex
		var failed []string
		for _, r := range runs {
			wg.Add(1)
			sem <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				out, done, errno := s.read(f, make([]byte, r.n), r.off)
				ok := errno == 0
				if ok {
					time.Sleep(time.Duration(r.n%3) * time.Millisecond) // the reply on its way
					ok = bytes.Equal(out, data[r.off:r.off+r.n])
				}
				if done != nil {
					done()
				}
				if !ok {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("[%d, %d): errno %d", r.off, r.off+r.n, errno))
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err := <-wrote; err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		if len(failed) > 0 {
			t.Fatalf("seed %d: reads failed or got other bytes: %v", seed, failed)
		}
		allDropped(t, s, f)
		if s.spill != nil {
			s.spill.Close()
		}
	}
}

// A read that skips more than the window past the furthest read (CRIU
// leaving pages for the restorer) waits for bytes only the writer can
// write: the writer goes on at once, and does not count a stall.
func TestWriterGoesOnForASkipAheadRead(t *testing.T) {
	setWindow(t, 2<<20, time.Minute)
	data := randomBytes(16 << 20)
	s, f, done := streamOne(t, data)
	buf := make([]byte, 1<<20)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, data[:len(buf)]) {
		t.Fatalf("first MiB: %v, or it differs", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		written := s.files["pages-1.img"].written
		s.mu.Unlock()
		if written >= int64(len(buf))+maxAhead {
			break // the writer is at the window
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writer wrote only %d bytes", written)
		}
	}
	began := time.Now()
	if _, err := f.ReadAt(buf, 10<<20); err != nil || !bytes.Equal(buf, data[10<<20:11<<20]) {
		t.Fatalf("a MiB at 10 MiB: %v, or it differs", err)
	}
	if took := time.Since(began); took > readerStall/4 {
		t.Fatalf("the read 10 MiB on took %v: the writer held back for the window", took)
	}
	if n := s.Stalls(); n != 0 {
		t.Fatalf("%d stalls counted", n)
	}
	s.Fail(errors.New("test over")) // the writer stops, its rest unread
	<-done
}

// A file read through the page cache gets few requests for many one-page
// reads (the kernel reads ahead), and every byte right; the kernel asks for
// each byte once, so the content is dropped all the same.
func TestReadThroughPageCache(t *testing.T) {
	data := randomBytes(8 << 20)
	s := mount(t, File{Name: "pages-2.img", Size: int64(len(data))})
	if err := s.ReadThroughPageCache([]string{"pages-2.img"}); err != nil {
		t.Fatal(err)
	}
	if err := s.ReadThroughPageCache([]string{"pages-9.img"}); err == nil {
		t.Fatal("a file the mount does not serve: no error")
	}
	w, err := s.Writer("pages-2.img")
	if err != nil {
		t.Fatal(err)
	}
	go w.Write(data)
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-2.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { f.Close() }() // f is opened again below
	page := make([]byte, 4096)
	pages := len(data) / len(page)
	// The second half page by page, then the first: as CRIU compares a
	// child's shared maps page by page, and its restorer reads the rest,
	// behind.
	for h, half := range [][2]int{{pages / 2, pages}, {0, pages / 2}} {
		if h == 1 {
			// Opened again, as by another process: what the page cache
			// holds stays (the kernel would ask again for the second
			// half, dropped here).
			f.Close()
			if f, err = os.Open(filepath.Join(s.Mountpoint, "pages-2.img")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.ReadAt(page, int64(pages-1)*int64(len(page))); err != nil {
				t.Fatalf("the last page again: %v", err)
			}
		}
		for i := half[0]; i < half[1]; i++ {
			if _, err := f.ReadAt(page, int64(i*len(page))); err != nil || !bytes.Equal(page, data[i*len(page):(i+1)*len(page)]) {
				t.Fatalf("page %d: %v, or it differs", i, err)
			}
		}
	}
	s.mu.Lock()
	requests := s.requests
	s.mu.Unlock()
	if requests > pages/8 {
		t.Fatalf("%d requests for %d one-page reads: not read through the page cache", requests, pages)
	}
	allDropped(t, s, s.files["pages-2.img"])
}

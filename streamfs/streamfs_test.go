//go:build linux

package streamfs

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"
)

// mount mounts files in a temporary directory, or skips the test where FUSE
// can't be mounted (not root, no /dev/fuse).
func mount(t testing.TB, files ...File) *FS {
	t.Helper()
	return mountSpilling(t, "", files...)
}

// mountSpilling is mount with a spill directory.
func mountSpilling(t testing.TB, spillDir string, files ...File) *FS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse")
	}
	s, err := Mount(t.TempDir(), files, spillDir)
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

func randomBytes(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rand.IntN(256))
	}
	return b
}

func TestReadWaitsForWrites(t *testing.T) {
	data := randomBytes(3<<20 + 123)
	s := mount(t, File{Name: "pages-1.img", Size: int64(len(data))})
	w, err := s.Writer("pages-1.img")
	if err != nil {
		t.Fatal(err)
	}
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
	if _, err := w.Write([]byte{1}); err == nil {
		t.Fatal("wrote past the file's size")
	}
}

// A file far bigger than what is kept: the reader reads it in order as it
// arrives, through ReadFrom, and blocks it has passed are reused.
func TestLargeFileReadInOrder(t *testing.T) {
	data := randomBytes(48<<20 + 4096*3)
	s, f, done := streamOne(t, data)
	got := readInSteps(t, f, 3<<20+4096, nil) // reads that span blocks
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, differing from the %d written", len(got), len(data))
	}
	// Every block read is dropped, once its last reply has been written
	// (just after the read returns).
	var dropped, blocks int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		dropped, blocks = s.files["pages-1.img"].dropped, len(s.files["pages-1.img"].chunks)
		s.mu.Unlock()
		if dropped == blocks || time.Now().After(deadline) {
			break
		}
	}
	if dropped != blocks {
		t.Fatalf("only %d of %d blocks dropped once all were read", dropped, blocks)
	}
	// What was dropped can't be read again.
	if _, err := f.ReadAt(make([]byte, 10), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read of a dropped block: %v, want EIO", err)
	}
}

// CRIU reads a page image in two passes: first the pages of the mappings
// it sets up before forking the process's children, in order, then (in
// the restorer) the others, behind the first pass. Nothing a read has
// not asked for yet is dropped, and everything is once it has been read.
func TestTwoPassRead(t *testing.T) {
	setWindow(t, 4<<20, 30*time.Second)
	data := randomBytes(40<<20 + 777)
	s, f, done := streamOne(t, data)
	const run = 3<<20 + 4096 // runs that end inside blocks
	got := make([]byte, len(data))
	pass := func(second bool) {
		for off, i := 0, 0; off < len(data); off, i = off+run, i+1 {
			if (i%2 == 1) != second {
				continue
			}
			n := min(run, len(data)-off)
			// In pieces, as the restorer's preadv of several mappings.
			for p := off; p < off+n; {
				k := min(700<<10, off+n-p)
				if _, err := f.ReadAt(got[p:p+k], int64(p)); err != nil {
					t.Fatalf("pass %v: read [%d, %d): %v", second, p, p+k, err)
				}
				p += k
			}
		}
	}
	pass(false)
	pass(true)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the bytes read differ from those written")
	}
	var held int64
	var dropped, blocks int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		s.mu.Lock()
		held, dropped, blocks = s.held, s.files["pages-1.img"].dropped, len(s.files["pages-1.img"].chunks)
		s.mu.Unlock()
		if held == 0 || time.Now().After(deadline) {
			break
		}
	}
	if held != 0 || dropped != blocks {
		t.Fatalf("%d bytes still held, %d of %d blocks dropped, once every byte was read", held, dropped, blocks)
	}
}

// Adopted buffers are served as they are, between blocks filled part way,
// and each is released once, only when the reader has read it whole.
func TestAdoptedContent(t *testing.T) {
	data := randomBytes(40<<20 + 12345)
	const step = 1<<20 + 513
	s := mount(t, File{Name: "pages-1.img", Size: int64(len(data))})
	w, err := s.Writer("pages-1.img")
	if err != nil {
		t.Fatal(err)
	}
	a := w.(interface {
		Adopt(b []byte, release func()) error
	})
	var (
		mu       sync.Mutex
		released = map[int]int{} // adopted buffer (its start) -> releases
		readTo   int64           // where the reader has read up to
		early    []string
	)
	done := make(chan error, 1)
	go func() {
		off := 0
		for i := 0; off < len(data); i++ {
			n := min(len(data)-off, []int{3 << 20, 700_000, 4 << 20, 1}[i%4])
			if i%3 == 2 { // some through the copying path: a block filled part way
				if _, err := w.Write(data[off : off+n]); err != nil {
					done <- err
					return
				}
				off += n
				continue
			}
			start, b := off, bytes.Clone(data[off:off+n])
			err := a.Adopt(b, func() {
				mu.Lock()
				defer mu.Unlock()
				released[start]++
				// The read in flight ends at most one step past readTo.
				if int64(start+len(b)) > readTo+step {
					early = append(early, fmt.Sprintf("[%d,%d) released with the reader at %d", start, start+len(b), readTo))
				}
				for k := range b {
					b[k] = 0xEE // as a buffer reused for another frame would be
				}
			})
			if err != nil {
				done <- err
				return
			}
			off += n
		}
		done <- nil
	}()
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := readInSteps(t, f, step, func(read int64) {
		mu.Lock()
		readTo = read
		mu.Unlock()
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, differing from the %d written", len(got), len(data))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(early) > 0 {
		t.Fatalf("adopted buffers released before the reader had read them: %v", early)
	}
	if len(released) == 0 {
		t.Fatal("no adopted buffer released")
	}
	for start, n := range released {
		if n != 1 {
			t.Fatalf("buffer at %d released %d times", start, n)
		}
	}
	// Past the end: refused, and not taken.
	if err := a.Adopt([]byte{1}, func() { t.Error("a refused buffer was released") }); err == nil {
		t.Fatal("adopting past the file's size succeeded")
	}
}

func TestReadFromRejectsExtra(t *testing.T) {
	s := mount(t, File{Name: "pages-1.img", Size: 10})
	w, _ := s.Writer("pages-1.img")
	_, err := io.Copy(w, strings.NewReader("0123456789!"))
	if err == nil {
		t.Fatal("ReadFrom took more than the file's size")
	}
	if _, err := s.Writer("pages-1.img"); err == nil {
		t.Fatal("a second writer")
	}
}

func TestFailMakesWaitingReadsFail(t *testing.T) {
	s := mount(t, File{Name: "pages-1.img", Size: 1 << 20})
	w, _ := s.Writer("pages-1.img")
	if _, err := w.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
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
	if _, err := w.Write([]byte{1}); err == nil {
		t.Fatal("write after Fail")
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
	// Nothing can take the file away: a cleaner's RemoveAll once did.
	if err := os.RemoveAll(s.Mountpoint); err == nil {
		t.Fatal("RemoveAll of the mount succeeded")
	}
	if err := os.Rename(filepath.Join(s.Mountpoint, "pages-1.img"), filepath.Join(s.Mountpoint, "x")); err == nil {
		t.Fatal("renamed a file")
	}
	if err := os.Truncate(filepath.Join(s.Mountpoint, "pages-1.img"), 0); err == nil {
		t.Fatal("truncated a file")
	}
	if fi, err := os.Stat(filepath.Join(s.Mountpoint, "pages-1.img")); err != nil || fi.Size() != 10 {
		t.Fatalf("after the attempts to remove it: %v, %v", fi, err)
	}
	// The mount looks as old as it is, not like a leftover from 1970.
	if fi, err := os.Stat(s.Mountpoint); err != nil || time.Since(fi.ModTime()) > time.Minute {
		t.Fatalf("mount point's time: %v, %v", fi, err)
	}
	if _, err := s.Writer("pages-2.img"); err == nil {
		t.Fatal("writer for an unlisted file")
	}
}

func TestMountRejectsBadNames(t *testing.T) {
	for _, name := range []string{"", "..", "a/b", "."} {
		if _, err := Mount(t.TempDir(), []File{{Name: name, Size: 1}}, ""); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := Mount(t.TempDir(), []File{{Name: "a", Size: 1}, {Name: "a", Size: 1}}, ""); err == nil {
		t.Error("duplicate name accepted")
	}
}

// A signal to a reader that waits for bytes must not fail its read: CRIU
// gets SIGCHLD while it restores and gives up on a read that fails.
func TestSignalledReadKeepsWaiting(t *testing.T) {
	s := mount(t, File{Name: "pages-1.img", Size: 4096})
	w, _ := s.Writer("pages-1.img")
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGUSR1)
	defer signal.Stop(sigs)

	type result struct {
		n   int
		err error
	}
	tids, res := make(chan int, 1), make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		buf := make([]byte, 4096)
		n, err := unix.Pread(int(f.Fd()), buf, 0) // no retry on EINTR, as in CRIU
		res <- result{n, err}
	}()
	tid := <-tids
	// The signal must come while the read waits in the kernel for the file
	// system's answer, not before the read has started.
	deadline := time.Now().Add(5 * time.Second)
	for !blockedInSyscall(tid, unix.SYS_PREAD64) {
		select {
		case r := <-res:
			t.Fatalf("the read ended before the bytes were written: %d, %v", r.n, r.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the read never waited in pread64: thread %d's syscall file says %q, wchan %q", tid, taskFile(tid, "syscall"), taskFile(tid, "wchan"))
		}
		time.Sleep(time.Millisecond)
	}
	if err := unix.Tgkill(unix.Getpid(), tid, unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	// The kernel asks the file system to give up on the read; it must not.
	select {
	case r := <-res:
		t.Fatalf("the read ended before the bytes were written: %d, %v", r.n, r.err)
	case <-time.After(200 * time.Millisecond):
	}
	if _, err := w.Write(bytes.Repeat([]byte{7}, 4096)); err != nil {
		t.Fatal(err)
	}
	if r := <-res; r.err != nil || r.n != 4096 {
		t.Fatalf("signalled read: %d bytes, %v", r.n, r.err)
	}
	select {
	case <-sigs: // delivered once the read returned
	case <-time.After(5 * time.Second):
		t.Fatal("the signal was never delivered")
	}
}

// blockedInSyscall reports whether thread tid of this process is blocked
// in system call nr: the first field of /proc/self/task/<tid>/syscall is
// the call's number while the thread sleeps in it ("running" while it runs,
// -1 when it sleeps outside a system call).
func blockedInSyscall(tid int, nr uintptr) bool {
	f := strings.Fields(taskFile(tid, "syscall"))
	return len(f) > 0 && f[0] == fmt.Sprint(nr)
}

// taskFile is /proc/self/task/<tid>/<name>, "" if unreadable.
func taskFile(tid int, name string) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/%s", tid, name))
	return strings.TrimSpace(string(b))
}

// streamOne mounts pages-1.img, writes data into it in the background
// (through ReadFrom) and opens it for reading. done gets the write's error.
func streamOne(t *testing.T, data []byte) (s *FS, f *os.File, done chan error) {
	t.Helper()
	s = mount(t, File{Name: "pages-1.img", Size: int64(len(data))})
	w, err := s.Writer("pages-1.img")
	if err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() {
		_, err := io.Copy(w, bytes.NewReader(data))
		done <- err
	}()
	f, err = os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return s, f, done
}

// readInSteps reads f to its end, step bytes at a time, calling before (if
// set) with the bytes read so far ahead of each read.
func readInSteps(t *testing.T, f *os.File, step int, before func(read int64)) []byte {
	t.Helper()
	buf := make([]byte, step)
	var got []byte
	for {
		if before != nil {
			before(int64(len(got)))
		}
		n, err := f.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF || n == 0 {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// setWindow shrinks the write-ahead window and the reader stall for a test.
func setWindow(t *testing.T, ahead int64, stall time.Duration) {
	t.Helper()
	prevAhead, prevStall := maxAhead, readerStall
	maxAhead, readerStall = ahead, stall
	t.Cleanup(func() { maxAhead, readerStall = prevAhead, prevStall })
}

// A writer stays within maxAhead of a slow reader, and the reader gets
// every byte.
func TestWriterWaitsForReader(t *testing.T) {
	setWindow(t, 4<<20, 30*time.Second)
	data := randomBytes(32 << 20)
	s, f, done := streamOne(t, data)
	var furthest int64
	got := readInSteps(t, f, 1<<20, func(read int64) {
		time.Sleep(5 * time.Millisecond) // slower than the writer
		s.mu.Lock()
		furthest = max(furthest, s.files["pages-1.img"].written-read)
		s.mu.Unlock()
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, differing from the %d written", len(got), len(data))
	}
	if furthest > maxAhead+blockSize {
		t.Fatalf("the writer got %d bytes ahead of the reader, want at most %d", furthest, maxAhead+blockSize)
	}
	if furthest < maxAhead {
		t.Fatalf("the writer was never more than %d bytes ahead: the test did not test the window", furthest)
	}
}

// With no read for readerStall, a writer does not wait for a reader that
// may be waiting for something else first.
func TestWriterGoesOnWhenReadsStall(t *testing.T) {
	setWindow(t, 2<<20, 200*time.Millisecond)
	data := randomBytes(8 << 20)
	s := mount(t, File{Name: "pages-1.img", Size: int64(len(data))}, File{Name: "pages-2.img", Size: 10})
	w, err := s.Writer("pages-1.img")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if _, err := io.Copy(w, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if took < readerStall/2 || took > 10*readerStall {
		t.Fatalf("writing with no reader took %v, want about the reader stall, %v", took, readerStall)
	}
	if n := s.Stalls(); n != 1 {
		t.Fatalf("%d stalls counted, want 1", n)
	}
}

// A writer does not hold back for its file's reader while a read of a
// later file waits for its bytes (a child's page image, while the rest of
// the parent's is for CRIU's restorer, later): it goes on at once, not
// after readerStall. The read begins after the writer has begun to wait,
// and wakes it.
func TestWriterGoesOnForAWaitingReadOfALaterFile(t *testing.T) {
	setWindow(t, 2<<20, time.Minute)
	first, later := randomBytes(8<<20), randomBytes(1<<20)
	s := mount(t, File{Name: "pages-10.img", Size: int64(len(first))}, File{Name: "pages-2.img", Size: int64(len(later))})
	wrote := make(chan error, 1)
	go func() {
		for _, p := range []struct {
			name string
			data []byte
		}{{"pages-10.img", first}, {"pages-2.img", later}} {
			w, err := s.Writer(p.name)
			if err == nil {
				_, err = io.Copy(w, bytes.NewReader(p.data))
			}
			if err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	// The writer waits once it is the window ahead of pages-10's reader.
	for deadline := time.Now().Add(10 * time.Second); ; {
		s.mu.Lock()
		ahead := s.files["pages-10.img"].written
		s.mu.Unlock()
		if ahead >= maxAhead {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writer wrote only %d bytes", ahead)
		}
		time.Sleep(time.Millisecond)
	}
	// pages-10.img's reader reads a little, and stops for now (as CRIU
	// does where the rest of a process's pages are for its restorer).
	g, err := os.Open(filepath.Join(s.Mountpoint, "pages-10.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	head := make([]byte, 1<<20)
	if _, err := io.ReadFull(g, head); err != nil || !bytes.Equal(head, first[:len(head)]) {
		t.Fatalf("pages-10.img's first MiB: %v, or it differs", err)
	}
	time.Sleep(50 * time.Millisecond)
	select {
	case err := <-wrote:
		t.Fatalf("the writer finished without waiting for a reader (%v): the test did not test the wait", err)
	default:
	}
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-2.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	began := time.Now()
	got := readInSteps(t, f, 256<<10, nil)
	if took := time.Since(began); took > readerStall/4 {
		t.Fatalf("reading pages-2.img took %v: the writer held back for pages-10.img's reader", took)
	}
	if !bytes.Equal(got, later) {
		t.Fatalf("read %d bytes, differing from the %d written", len(got), len(later))
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if got := readInSteps(t, g, 1<<20, nil); !bytes.Equal(got, first[len(head):]) {
		t.Fatalf("pages-10.img: read %d bytes more, differing from the %d written", len(got), len(first)-len(head))
	}
	if n := s.Stalls(); n != 0 {
		t.Fatalf("%d stalls counted", n)
	}
}

// A writer that went on past a stalled reader puts what memory cannot hold
// (maxInMemory) in the spill file, written (ReadFrom) or adopted, and the
// reader gets every byte. The spill file leaves nothing in its directory.
func TestStalledWriterSpills(t *testing.T) {
	setWindow(t, 2<<20, 50*time.Millisecond)
	prev := maxInMemory
	maxInMemory = 4 << 20
	t.Cleanup(func() { maxInMemory = prev })
	written, adopted := randomBytes(20<<20+123), randomBytes(12<<20)
	spillDir := t.TempDir()
	s := mountSpilling(t, spillDir, File{Name: "pages-1.img", Size: int64(len(written))}, File{Name: "pages-2.img", Size: int64(len(adopted))})
	w1, err := s.Writer("pages-1.img")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w1, bytes.NewReader(written)); err != nil {
		t.Fatal(err)
	}
	w2, err := s.Writer("pages-2.img")
	if err != nil {
		t.Fatal(err)
	}
	var released atomic.Int32
	const piece = 1 << 20
	for off := 0; off < len(adopted); off += piece {
		b := append([]byte(nil), adopted[off:off+piece]...)
		if err := w2.(interface{ Adopt([]byte, func()) error }).Adopt(b, func() { released.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	s.mu.Lock()
	held := s.held
	s.mu.Unlock()
	if held > maxInMemory {
		t.Fatalf("%d bytes held in memory, more than %d", held, maxInMemory)
	}
	if sp := s.Spilled(); sp < int64(len(written)+len(adopted))-2*maxInMemory {
		t.Fatalf("spilled %d bytes, want most of the %d written", sp, len(written)+len(adopted))
	}
	if released.Load() == 0 {
		t.Fatal("no spilled buffer given back at once")
	}
	if ents, _ := os.ReadDir(spillDir); len(ents) != 0 {
		t.Fatalf("the spill file is visible in its directory: %v", ents)
	}
	for name, want := range map[string][]byte{"pages-1.img": written, "pages-2.img": adopted} {
		f, err := os.Open(filepath.Join(s.Mountpoint, name))
		if err != nil {
			t.Fatal(err)
		}
		got := readInSteps(t, f, 300<<10, nil)
		f.Close()
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: read %d bytes, differing from the %d written", name, len(got), len(want))
		}
	}
}

// A process started while a stream is mounted does not hold its FUSE
// connection: runc, CRIU and the restored tasks would otherwise keep it
// open past the shim's death, and a read waiting for a page would wait
// past SIGKILL.
func TestConnectionNotInherited(t *testing.T) {
	mount(t, File{Name: "pages-1.img", Size: 1})
	out, err := exec.Command("ls", "-l", "/proc/self/fd/").CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("a child holds the FUSE connection:\n%s", out)
	}
}

// A file with a backing file is served from it, whole, at any offset and
// more than once, and takes no writer.
func TestBackedFile(t *testing.T) {
	data := randomBytes(9<<20 + 123)
	path := filepath.Join(t.TempDir(), "pages-1.img")
	if err := os.WriteFile(path, append(data, "beyond the size"...), 0o600); err != nil {
		t.Fatal(err)
	}
	backing, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s := mount(t, File{Name: "pages-1.img", Size: int64(len(data)), Backing: backing})
	backing.Close() // the mount serves its own duplicate
	if _, err := s.Writer("pages-1.img"); err == nil {
		t.Fatal("a backed file took a writer")
	}
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for pass := 0; pass < 2; pass++ {
		got, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("pass %d: read %d bytes, differing from the file's first %d", pass, len(got), len(data))
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			t.Fatal(err)
		}
	}
	got := make([]byte, 5000)
	n, err := f.ReadAt(got, 4<<20-17)
	if err != nil || n != len(got) || !bytes.Equal(got, data[4<<20-17:4<<20-17+5000]) {
		t.Fatalf("read at an offset: %d bytes, %v", n, err)
	}
}

// Full-size reads of a backed file are spliced: go-fuse logs each reply
// it could not splice and copied instead (with 1 MiB requests and 1 MiB
// pipes, every full-size one).
func TestBackedFileReadsSplice(t *testing.T) {
	if !splice.Resizable() {
		t.Skip("go-fuse splices nothing here: its pipes cannot be resized")
	}
	if 16+splicedRequest(splice.MaxPipeSize())+os.Getpagesize() > splice.MaxPipeSize() {
		t.Skipf("pipes of at most %d bytes: replies are copied", splice.MaxPipeSize())
	}
	var logged syncBuffer
	fuseLog = &logged
	defer func() { fuseLog = io.Discard }()
	data := randomBytes(9<<20 + 123)
	path := filepath.Join(t.TempDir(), "pages-1.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	backing, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s := mount(t, File{Name: "pages-1.img", Size: int64(len(data)), Backing: backing})
	backing.Close()
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Reads as CRIU makes them: large, into new memory, from a page
	// boundary that is not the file's start.
	got := make([]byte, len(data)-4096)
	if n, err := io.ReadFull(f, make([]byte, 4096)); err != nil || n != 4096 {
		t.Fatalf("first page: %d bytes, %v", n, err)
	}
	if n, err := io.ReadFull(f, got); err != nil || !bytes.Equal(got[:n], data[4096:]) {
		t.Fatalf("read %d bytes, %v, or they differ from the file's", n, err)
	}
	if strings.Contains(logged.String(), "trySplice") {
		t.Fatalf("replies were copied, not spliced:\n%s", logged.String())
	}
}

func TestSplicedRequest(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range []struct{ pipe, want int }{
		{1 << 20, 1<<20 - 2*page}, // the kernel's default pipe-max-size
		{1<<20 + 2*page, maxRequest},
		{4 << 20, maxRequest},
		{64 << 10, maxRequest}, // too small to be worth it: copied
	} {
		if got := splicedRequest(c.pipe); got != c.want {
			t.Errorf("splicedRequest(%d) = %d, want %d", c.pipe, got, c.want)
		}
		// Header (16 bytes) + data + a page must fit, as go-fuse asks,
		// unless the pipes are too small to be worth it.
		if got := splicedRequest(c.pipe); c.pipe >= 256<<10 && 16+got+page > c.pipe {
			t.Errorf("splicedRequest(%d) = %d: a reply does not fit the pipe", c.pipe, got)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for go-fuse's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// A backed file's reads fail once the file system is closed, even through
// a file opened before (the mount is then detached, not gone), and its
// descriptor is closed once the last such file is.
func TestBackedFileAfterClose(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting FUSE needs root")
	}
	path := filepath.Join(t.TempDir(), "pages-1.img")
	if err := os.WriteFile(path, randomBytes(1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	backing, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Mount(t.TempDir(), []File{{Name: "pages-1.img", Size: 1 << 20, Backing: backing}}, "")
	backing.Close()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(s.Mountpoint, "pages-1.img"))
	if err != nil {
		t.Fatal(err)
	}
	// Closed before the test's end in any case: a file of this process's
	// own mount left open at its exit would wait on a server gone with it.
	defer f.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read after Close: %v, want EIO", err)
	}
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		open := len(s.backing)
		s.mu.Unlock()
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the backing descriptor is still open after the connection ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

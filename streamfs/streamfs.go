//go:build linux

// Package streamfs serves, through FUSE, files whose content is still
// arriving: a read of bytes that are not there yet waits until they are.
// snapboot uses it so that CRIU reads a checkpoint's page images while they
// are still downloading, instead of after.
//
// Content lives in memory. Each file is written once, in order (Writer),
// into blocks of the file system's own or by handing over buffers that it
// serves as they are (Adopt, which saves a copy of every page), and each
// byte is read once, as CRIU reads a page image: mostly in order, but in
// two passes for a process whose children share some of its memory (the
// pages it maps before it forks them, then the restorer's, behind). What
// has been read is dropped, and a writer that is maxAhead ahead of its
// file's furthest read waits for it, so memory holds a bounded window of
// each file. A writer stops waiting when reads stall (the reader may need
// another file first) or when a read of another file waits for bytes;
// past maxInMemory, what it writes then goes to a spill file on disk, in
// the directory Mount was given, instead of memory.
// If the writer gives up, it says why (Fail): every read waiting then, and
// every later one, gets EIO.
//
// A file may instead be served whole from a file on disk (File.Backing):
// snapboot serves a cached checkpoint's page images so, since a FUSE read
// fills the reader's new memory more cheaply than a read from the file.
package streamfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"
)

// File is one file the file system serves: its name in the mount's root
// directory and its final size. A file with Backing is served from that
// file (its first Size bytes, read again as often as asked), spliced into
// the replies, and has no Writer. Mount serves a duplicate of Backing's
// descriptor, closed once the kernel's connection has ended: the caller
// may close Backing once Mount returns.
type File struct {
	Name    string
	Size    int64
	Backing *os.File
}

// FS is a mounted stream file system.
type FS struct {
	Mountpoint string

	server *fuse.Server
	mu     sync.Mutex
	files  map[string]*file
	// changed is closed, and replaced, whenever a file grows or the
	// writer fails: waiting readers look again.
	changed chan struct{}
	err     error
	free    [][]byte // blocks dropped, for reuse
	held    int64    // bytes of content in memory, free blocks aside
	mounted time.Time
	// spillDir holds the spill file, made at the first spill; "" keeps
	// everything in memory.
	spillDir string
	spill    *os.File
	spillEnd int64 // the spill file's size: where the next spill goes
	spilled  int64 // bytes spilled, in all
	// lastRead is when a read last got its bytes, from any file.
	lastRead time.Time
	// waiting is how many reads wait for bytes not written yet, of any
	// file.
	waiting int
	// stalls counts the times a writer went on because reads had stalled
	// (the last at stalledAt, the lastRead then).
	stalls    int
	stalledAt time.Time
	requests  int // read requests served, for tests
	// backing is the duplicates of the backed files' descriptors.
	backing []*os.File
}

type file struct {
	name    string
	size    int64
	written int64
	chunks  []chunk // the content in order; chunks[:dropped] are gone
	dropped int
	// read is the runs of the file read so far, in order, merged, from
	// the first chunk not gone on.
	read    []span
	gone    bool  // Close let go of the content
	writer  bool  // Writer was called
	readTo  int64 // the end of the furthest read so far
	waiting int   // reads waiting for bytes of this file not written yet
	backing *os.File
	// buffered: read through the page cache (ReadThroughPageCache).
	buffered bool
}

// A chunk is a run of a file's content: a block of the file system's own
// that a writer fills (Write, ReadFrom), a buffer the file adopted
// (Adopt), or a run of the spill file. The last one may be filled only up
// to the file's written.
type chunk struct {
	start   int64
	size    int64
	data    []byte // nil for a chunk in the spill file
	diskOff int64  // where a spilled chunk is in the spill file
	release func() // called under FS.mu once the chunk is dropped
	unread  int64  // bytes no read has asked for yet
	// replies is how many replies are being written from data.
	replies int
	dropped bool // released: a read of it fails
}

func (c *chunk) end() int64 { return c.start + c.size }

// A span is the bytes [from, to) of a file.
type span struct{ from, to int64 }

const (
	// maxRequest is the largest read the kernel sends in one request to
	// a mount of files without a backing file: their replies are written
	// from memory, not spliced, so they keep 1 MiB requests whatever the
	// pipes' size (splicedRequest is for backed files).
	maxRequest = 1 << 20
	// blockSize is the unit content is kept and dropped in.
	blockSize = 1 << 20
)

// splicedRequest is the largest read request whose reply go-fuse can
// splice from a backing file: it does so only when the reply's header,
// the data and one page more fit in a pipe of the node's largest size
// (/proc/sys/fs/pipe-max-size, 1 MiB by default), and copies the data
// through the shim otherwise (a pread and a writev). With 1 MiB requests,
// every full-size read of a cached page image was copied so: on session
// 26's machine that was 55 ms of the shim's CPU per warm restore of the
// demo app, on the restore's path. Where the pipes are too small for
// requests of a useful size (under 256 KiB), the requests stay at 1 MiB
// and are copied.
func splicedRequest(maxPipe int) int {
	page := os.Getpagesize()
	n := (maxPipe - 2*page) &^ (page - 1)
	if n < 256<<10 {
		return maxRequest
	}
	return min(n, maxRequest)
}

// fuseLog is where go-fuse's own messages go (a test reads them).
var fuseLog io.Writer = io.Discard

// A writer waits while it is maxAhead ahead of its file's reader, so that
// decoders faster than CRIU (many cores, a fast registry) do not hold a
// whole page image in memory. The wait ends as soon as the reader moves.
// What the decoders write ahead is new memory, and new memory is dear on
// some VMs: on session 26's (about 1 ms a MiB, zeroing huge pages the host
// backs anew) a 256 MiB window let them decode far ahead while
// CRIU set up, and the demo app's empty-cache restore took 1.20 s and 2.16
// CPU-s against 1.13 s and 1.89 CPU-s with 32 MiB (8 rounds; faster in 7).
// (Before the decoded frames had huge pages, 64 MiB had been 0.04 s slower
// than 256.) Through the bench's 1 Gbit/s link to the registry it was
// faster too: 1.34 against 1.49 s, 2.33 against 2.70 CPU-s (faster in 7
// of 8). Over a slower link the download waits while CRIU sets up once
// this window and the frames in flight are full.
// It never lasts longer than readerStall without any read on the file
// system: a reader may be waiting for another file, or for something else
// first, and must not wait for this writer in turn.
var (
	maxAhead    int64 = 32 << 20
	readerStall       = time.Second
	// maxInMemory bounds the content held in memory when Mount was given a
	// spill directory, well above the window, so that only a writer that
	// outran a stalled reader spills, or one that went on while CRIU left
	// the pages for a process's restorer behind (its first pass over a
	// process tree's page images holds those until the restorers run).
	// (It was twice the window when that was 256 MiB.)
	maxInMemory int64 = MaxInMemory
)

// MaxInMemory is the most content a mount given a spill directory holds
// in memory (tests lower it).
const MaxInMemory = 512 << 20

// Mount serves files, all empty so far, in mountpoint (an empty
// directory). The mount lets other users than the caller's in (CRIU may
// read it from a container's user namespace) and the kernel does not check
// the files' modes: the caller keeps mountpoint where only root can reach
// it (snapboot: under the cache's private tmp/). Content that would take
// more than maxInMemory goes to an unlinked file in spillDir, if not "".
func Mount(mountpoint string, files []File, spillDir string) (*FS, error) {
	now := time.Now()
	s := &FS{Mountpoint: mountpoint, files: map[string]*file{}, changed: make(chan struct{}), mounted: now, lastRead: now, spillDir: spillDir}
	for _, f := range files {
		if f.Name == "" || f.Name != path.Base(f.Name) || f.Name == "." || f.Name == ".." || f.Size < 0 {
			s.closeBacking()
			return nil, fmt.Errorf("streamfs: bad file %q (%d bytes)", f.Name, f.Size)
		}
		if _, dup := s.files[f.Name]; dup {
			s.closeBacking()
			return nil, fmt.Errorf("streamfs: file %q listed twice", f.Name)
		}
		nf := &file{name: f.Name, size: f.Size}
		if f.Backing != nil {
			fd, err := unix.FcntlInt(f.Backing.Fd(), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				s.closeBacking()
				return nil, fmt.Errorf("streamfs: %s: %w", f.Name, err)
			}
			nf.backing = os.NewFile(uintptr(fd), f.Backing.Name())
			s.backing = append(s.backing, nf.backing)
			nf.written, nf.writer = f.Size, true
		}
		s.files[f.Name] = nf
	}
	request := maxRequest
	for _, f := range files {
		if f.Backing != nil {
			request = splicedRequest(splice.MaxPipeSize())
		}
	}
	root := &rootNode{s: s}
	timeout := time.Hour // nothing changes but content, and sizes are known
	// go-fuse's direct mount opens /dev/fuse without O_CLOEXEC (v2.12.1):
	// runc, CRIU and the tasks CRIU restores would inherit it, and a
	// shim that died mid-stream would then leave the connection open, its
	// readers waiting for pages no one sends, past SIGKILL. No process
	// starts between the open and the flag set below.
	syscall.ForkLock.RLock()
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			FsName:            "snapboot-stream",
			Name:              "snapboot",
			DirectMountStrict: true, // root, no fusermount
			AllowOther:        true, // CRIU's restored tasks may be in a user namespace
			MaxWrite:          request,
			DisableXAttrs:     true,
			Logger:            log.New(fuseLog, "", 0),
		},
	})
	cloexecErr := closeFuseOnExec()
	syscall.ForkLock.RUnlock()
	if err != nil {
		// go-fuse returns a failed handshake without unmounting: the
		// mount may be there, served by no one.
		_ = unix.Unmount(mountpoint, unix.MNT_FORCE|unix.MNT_DETACH)
		s.closeBacking()
		return nil, fmt.Errorf("streamfs: mount %s: %w", mountpoint, err)
	}
	s.server = server
	go func() {
		// Until the connection ends, a reply may still splice from them.
		server.Wait()
		s.closeBacking()
	}()
	if cloexecErr != nil {
		s.Close()
		return nil, fmt.Errorf("streamfs: mount %s: %w", mountpoint, cloexecErr)
	}
	// Out of mount propagation. Under a shared mount (systemd makes / one)
	// the new mount joins its parent's peer group, and a CRIU restoring
	// another container clones the host's mounts into a new namespace and
	// unmounts them there: the unmount then comes back here, and the page
	// images vanish under a restore that is about to read them.
	if err := unix.Mount("", mountpoint, "", unix.MS_PRIVATE, ""); err != nil {
		s.Close()
		return nil, fmt.Errorf("streamfs: make %s private: %w", mountpoint, err)
	}
	return s, nil
}

// closeBacking closes the duplicated descriptors of backed files.
func (s *FS) closeBacking() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.backing {
		f.Close()
	}
	s.backing = nil
}

// closeFuseOnExec sets close-on-exec on every /dev/fuse descriptor of the
// process: each is a streamfs mount's connection, which only this process
// may hold.
func closeFuseOnExec() error {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("list descriptors: %w", err)
	}
	for _, d := range fds {
		fd, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + d.Name()); err != nil || target != "/dev/fuse" {
			continue
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && !errors.Is(err, unix.EBADF) {
			return fmt.Errorf("close-on-exec on /dev/fuse (%d): %w", fd, err)
		}
	}
	return nil
}

// Writer returns the writer of name's content. Its writes append, and
// together must come to the file's size.
func (s *FS) Writer(name string) (io.Writer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[name]
	switch {
	case f == nil:
		return nil, fmt.Errorf("streamfs: no file %q", name)
	case f.backing != nil:
		return nil, fmt.Errorf("streamfs: file %q is served from a file", name)
	case f.writer:
		return nil, fmt.Errorf("streamfs: file %q written twice", name)
	}
	f.writer = true
	return &writer{s: s, f: f}, nil
}

type writer struct {
	s   *FS
	f   *file
	buf []byte // on the way to the spill file
}

func (w *writer) Write(p []byte) (int, error) {
	n, err := w.ReadFrom(bytes.NewReader(p))
	return int(n), err
}

// ReadFrom reads r until EOF straight into the file's blocks, saving the
// copy through a caller's buffer.
func (w *writer) ReadFrom(r io.Reader) (int64, error) {
	s, f := w.s, w.f
	var total int64
	for {
		s.mu.Lock()
		if s.err != nil {
			s.mu.Unlock()
			return total, s.err
		}
		if f.written == f.size {
			s.mu.Unlock()
			// Nothing more may come: check that r has ended.
			var one [1]byte
			n, err := r.Read(one[:])
			if n > 0 {
				return total, fmt.Errorf("streamfs: %s is %d bytes, more written", f.name, f.size)
			}
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		if n := len(f.chunks); n == 0 || f.chunks[n-1].end() == f.written {
			if s.waitForReader(f) {
				s.mu.Unlock()
				continue // the error, or the reader has moved
			}
			size := min(blockSize, f.size-f.written)
			if s.mustSpill(size) {
				c, err := s.spillChunk(f.written, size)
				if err != nil {
					s.mu.Unlock()
					return total, err
				}
				f.chunks = append(f.chunks, c)
			} else {
				blk := s.block()
				s.held += blockSize
				f.chunks = append(f.chunks, chunk{start: f.written, size: size, data: blk[:size], unread: size,
					release: func() { s.free = append(s.free, blk); s.held -= blockSize }})
			}
		}
		// Readers only look at bytes below written, so the rest of the
		// chunk can be filled without the lock.
		c := &f.chunks[len(f.chunks)-1]
		var n int
		var err error
		if c.data != nil {
			dst := c.data[f.written-c.start:]
			s.mu.Unlock()
			n, err = r.Read(dst)
		} else {
			if w.buf == nil {
				w.buf = make([]byte, blockSize)
			}
			at, buf, spill := c.diskOff+f.written-c.start, w.buf[:c.end()-f.written], s.spill
			s.mu.Unlock()
			if n, err = r.Read(buf); n > 0 {
				if _, werr := spill.WriteAt(buf[:n], at); werr != nil {
					return total, fmt.Errorf("streamfs: spill %s: %w", f.name, werr)
				}
			}
		}
		if n > 0 {
			s.mu.Lock()
			f.written += int64(n)
			total += int64(n)
			s.notify()
			s.mu.Unlock()
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Adopt appends b to the file's content without copying it, and calls
// release once no read needs b any more. Like a write, it waits while the
// writer is far ahead of the reader. If it fails, b was not taken.
func (w *writer) Adopt(b []byte, release func()) error {
	s, f := w.s, w.f
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.err == nil && s.waitForReader(f) {
		// waited for the reader (or a failure): look again
	}
	switch {
	case s.err != nil:
		return s.err
	case f.written+int64(len(b)) > f.size:
		return fmt.Errorf("streamfs: %s is %d bytes, more written", f.name, f.size)
	case len(b) == 0:
		release()
		return nil
	}
	if n := len(f.chunks); n > 0 {
		// A block filled part way ends where the adopted content starts.
		c := &f.chunks[n-1]
		c.unread -= c.end() - f.written // never written, so never read
		c.size = f.written - c.start
		if c.data != nil && !c.dropped {
			c.data = c.data[:c.size]
		}
		if c.size == 0 && !c.dropped {
			// Empty (ReadFrom makes a block before it finds its reader
			// at EOF): gone, or a read's range would run into it.
			c.release()
			f.chunks = f.chunks[:n-1]
			f.dropped = min(f.dropped, n-1)
		} else {
			s.dropIfRead(f, n-1)
		}
	}
	size := int64(len(b))
	if s.mustSpill(size) {
		c, err := s.spillChunk(f.written, size)
		if err != nil {
			return fmt.Errorf("streamfs: spill %s: %w", f.name, err)
		}
		// The file has one writer: nothing else appends to it meanwhile,
		// and readers wait for written.
		spill := s.spill
		s.mu.Unlock()
		_, err = spill.WriteAt(b, c.diskOff)
		s.mu.Lock()
		if err == nil {
			err = s.err
		}
		if err != nil {
			return fmt.Errorf("streamfs: spill %s: %w", f.name, err)
		}
		release()
		f.chunks = append(f.chunks, c)
	} else {
		s.held += size
		f.chunks = append(f.chunks, chunk{start: f.written, size: size, data: b, unread: size, release: func() { s.held -= size; release() }})
	}
	f.written += size
	s.notify()
	return nil
}

// mustSpill reports whether n more bytes go to the spill file: memory
// holds maxInMemory already, and Mount was given somewhere to spill.
// Called with s.mu held.
func (s *FS) mustSpill(n int64) bool {
	return s.spillDir != "" && s.held+n > maxInMemory
}

// spillChunk makes room for size bytes at the end of the spill file,
// making the file at the first spill. Called with s.mu held.
func (s *FS) spillChunk(start, size int64) (chunk, error) {
	if s.spill == nil {
		f, err := os.CreateTemp(s.spillDir, ".streamfs-spill-")
		if err != nil {
			return chunk{}, fmt.Errorf("streamfs: spill file: %w", err)
		}
		// Unlinked at once: nothing is left behind whatever happens.
		if err := os.Remove(f.Name()); err != nil {
			f.Close()
			return chunk{}, fmt.Errorf("streamfs: spill file: %w", err)
		}
		s.spill = f
	}
	off := s.spillEnd
	s.spillEnd += size
	s.spilled += size
	spill := s.spill
	return chunk{start: start, size: size, diskOff: off, unread: size, release: func() {
		// Give the disk space back.
		_ = unix.Fallocate(int(spill.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, size)
	}}, nil
}

// Spilled is how many bytes went to the spill file.
func (s *FS) Spilled() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spilled
}

// waitForReader waits, if f's writer is maxAhead ahead of its reader and
// reads are happening, until a read or a failure, or until reads have
// stalled for readerStall. It reports whether it waited. Called with s.mu
// held; it lets go of it while it waits.
//
// It does not wait while any read waits for bytes: one of f's needs bytes
// only this writer can write (CRIU skipped ahead, leaving pages for the
// restorer), and snapboot writes the page images one after another, so
// another file's come after f's, and f's reader may not read on before
// they come. CRIU maps a
// process's memory before it forks the children, which then read their own
// page images; the pages it does not map then are read by the restorer,
// once every process is mapped. So a reader may not even exist yet, or may
// have stopped part way for now. Holding back then would stall the restore
// for readerStall, and the window bounds memory no longer: past
// maxInMemory, the writer spills.
func (s *FS) waitForReader(f *file) bool {
	if f.written-f.readTo < maxAhead || s.err != nil || s.waiting > 0 {
		return false
	}
	stalled := readerStall - time.Since(s.lastRead)
	if stalled <= 0 {
		s.countStall()
		return false
	}
	changed := s.changed
	s.mu.Unlock()
	t := time.NewTimer(stalled)
	select {
	case <-changed:
		t.Stop()
		s.mu.Lock()
	case <-t.C:
		s.mu.Lock()
		if time.Since(s.lastRead) >= readerStall {
			s.countStall()
		}
	}
	return true
}

// countStall counts a writer going on because reads stalled, once for
// each stall. Called with s.mu held.
func (s *FS) countStall() {
	if !s.stalledAt.Equal(s.lastRead) {
		s.stalledAt = s.lastRead
		s.stalls++
	}
}

// ReadThroughPageCache makes the named files, when opened from now on, read
// through the kernel's page cache, not with direct I/O: for a reader that
// reads a page at a time (CRIU comparing a child's pages with its
// parent's, package cowpages), each read is otherwise a request to this
// server. Their content is still dropped once the kernel has asked for
// it: a page the kernel let go of from its page cache before the reader
// read it would then fail with EIO.
func (s *FS) ReadThroughPageCache(names []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range names {
		f, ok := s.files[name]
		if !ok {
			return fmt.Errorf("streamfs: no file %q", name)
		}
		f.buffered = true
	}
	return nil
}

// Stalls is how many times a writer went on past its window because no
// read came for readerStall.
func (s *FS) Stalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stalls
}

// block returns a block, reused if one was dropped. Called with s.mu held.
func (s *FS) block() []byte {
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free = s.free[:n-1]
		return b
	}
	return make([]byte, blockSize)
}

// Fail makes every read waiting for bytes, and every later read of bytes
// not written yet, fail with EIO. The first error is kept.
func (s *FS) Fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
		s.notify()
	}
}

func (s *FS) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Close fails waiting reads, unmounts the file system and lets go of the
// content.
func (s *FS) Close() error {
	s.Fail(errors.New("streamfs: closed"))
	err := s.server.Unmount()
	if err != nil {
		// A reader still has a file open: detach the mount now, the
		// kernel ends it when the last file is closed (reads fail with
		// EIO until then).
		if derr := unix.Unmount(s.Mountpoint, unix.MNT_DETACH); derr == nil {
			err = nil
		}
	}
	s.mu.Lock()
	for _, f := range s.files {
		// Not released: a reply may still be on its way from a chunk.
		f.chunks, f.gone = nil, true
	}
	s.free = nil
	if s.spill != nil {
		s.spill.Close()
		s.spill = nil
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("streamfs: unmount %s: %w", s.Mountpoint, err)
	}
	return nil
}

// read returns f's bytes [off, off+len(dest)) once they are written, in
// dest or in place, and drops the blocks the read has moved well past.
func (s *FS) read(f *file, dest []byte, off int64) (out []byte, done func(), errno syscall.Errno) {
	end := min(off+int64(len(dest)), f.size)
	s.mu.Lock()
	counted := false
	for f.written < end {
		if s.err != nil {
			if counted {
				f.waiting--
				s.waiting--
			}
			s.mu.Unlock()
			return nil, nil, syscall.EIO
		}
		if !counted {
			// Counted until the bytes come, and a writer holding back for
			// its own file's reader looks again: this read may need bytes
			// that come after that file.
			f.waiting++
			s.waiting++
			counted = true
			s.notify()
		}
		changed := s.changed
		s.mu.Unlock()
		// Not ctx: the kernel interrupts a read when the reader gets any
		// signal, and CRIU, which gets SIGCHLD while it restores, takes a
		// failed read as a failed restore. A reader that is killed stops
		// waiting by itself; this waits until the bytes come or the
		// writer fails.
		<-changed
		s.mu.Lock()
	}
	if counted {
		f.waiting--
		s.waiting--
	}
	defer s.mu.Unlock()
	if f.gone {
		return nil, nil, syscall.EIO // closed
	}
	live := f.chunks[f.dropped:]
	if len(live) == 0 || off < live[0].start {
		return nil, nil, syscall.EIO // read again: the content is gone
	}
	first := f.dropped + sort.Search(len(live), func(i int) bool { return live[i].end() > off })
	for i, p := first, off; p < end; i++ {
		if f.chunks[i].dropped {
			return nil, nil, syscall.EIO // read again: the content is gone
		}
		p = f.chunks[i].end()
	}
	if c := &f.chunks[first]; end <= c.end() && c.data != nil {
		// Within one chunk: the reply is written from it directly, and
		// the chunk is kept until it has been.
		out = c.data[off-c.start : end-c.start]
		c.replies++
		done = func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if !f.gone {
				f.chunks[first].replies--
				s.dropIfRead(f, first)
			}
		}
	} else {
		out = dest[:end-off]
		for i, p := first, off; p < end; i++ {
			c := &f.chunks[i]
			to := out[p-off : min(end, c.end())-off]
			if c.data != nil {
				copy(to, c.data[p-c.start:])
			} else if _, err := s.spill.ReadAt(to, c.diskOff+p-c.start); err != nil {
				return nil, nil, syscall.EIO
			}
			p += int64(len(to))
		}
	}
	s.markRead(f, first, off, end)
	s.requests++
	s.lastRead = time.Now()
	if end > f.readTo {
		f.readTo = end
		if f.written-f.readTo < maxAhead+blockSize {
			s.notify() // a writer waiting for this reader may go on
		}
	}
	return out, done, 0
}

// markRead counts the bytes [off, end) as read, from f.chunks[first] on,
// and drops every chunk that has then been read whole. A byte read again
// counts once. Called with s.mu held.
func (s *FS) markRead(f *file, first int, off, end int64) {
	// The runs of [off, end) not read before.
	var fresh []span
	i := sort.Search(len(f.read), func(i int) bool { return f.read[i].to >= off })
	j := i
	p := off
	for ; j < len(f.read) && f.read[j].from <= end; j++ {
		if f.read[j].from > p {
			fresh = append(fresh, span{p, f.read[j].from})
		}
		p = max(p, f.read[j].to)
	}
	if p < end {
		fresh = append(fresh, span{p, end})
	}
	// [off, end) and the runs it touches become one.
	merged := span{off, end}
	if i < j {
		merged = span{min(off, f.read[i].from), max(end, f.read[j-1].to)}
	}
	f.read = append(f.read[:i], append([]span{merged}, f.read[j:]...)...)
	k := first
	for _, r := range fresh {
		for k < len(f.chunks) && f.chunks[k].end() <= r.from {
			k++
		}
		for ; k < len(f.chunks) && f.chunks[k].start < r.to; k++ {
			c := &f.chunks[k]
			c.unread -= min(r.to, c.end()) - max(r.from, c.start)
			s.dropIfRead(f, k)
			if c.end() > r.to {
				break
			}
		}
	}
}

// dropIfRead lets go of f.chunks[i] once every byte of it has been read
// and no reply is being written from it. CRIU reads each byte of a page
// image once, but not in order: it reads the pages it maps before it forks
// a process's children, and then the restorer reads the rest, behind.
// Called with s.mu held.
func (s *FS) dropIfRead(f *file, i int) {
	c := &f.chunks[i]
	if c.dropped || c.unread > 0 || c.replies > 0 || c.end() > f.written {
		return
	}
	c.release()
	// Its place kept, and not zeroed: markRead and Adopt look at the
	// chunks by index, and at their starts and sizes.
	f.chunks[i] = chunk{start: c.start, size: c.size, dropped: true}
	for f.dropped < len(f.chunks) && f.chunks[f.dropped].dropped {
		f.dropped++
	}
	// The runs read before the first chunk left matter no more.
	if f.dropped < len(f.chunks) {
		front := f.chunks[f.dropped].start
		n := 0
		for n < len(f.read) && f.read[n].to <= front {
			n++
		}
		f.read = f.read[n:]
	} else {
		f.read = nil
	}
}

type rootNode struct {
	fs.Inode
	s *FS
}

var (
	_ = (fs.NodeOnAdder)((*rootNode)(nil))
	_ = (fs.NodeGetattrer)((*rootNode)(nil))
	_ = (fs.NodeUnlinker)((*rootNode)(nil))
	_ = (fs.NodeRmdirer)((*rootNode)(nil))
	_ = (fs.NodeRenamer)((*rootNode)(nil))
)

// Getattr gives the directory the mount's time: a cleaner that removes old
// leftovers must not take it for one (go-fuse would say 1970).
func (r *rootNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFDIR | 0o500
	out.SetTimes(nil, &r.s.mounted, &r.s.mounted)
	return 0
}

// The file system is read-only. Without these, go-fuse would report an
// unlink or a rename as done and drop the file from the tree.

func (r *rootNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (r *rootNode) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (r *rootNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (r *rootNode) OnAdd(ctx context.Context) {
	for name, f := range r.s.files {
		child := r.NewPersistentInode(ctx, &fileNode{s: r.s, f: f}, fs.StableAttr{Mode: fuse.S_IFREG})
		r.AddChild(name, child, false)
	}
}

type fileNode struct {
	fs.Inode
	s *FS
	f *file
}

var (
	_ = (fs.NodeGetattrer)((*fileNode)(nil))
	_ = (fs.NodeSetattrer)((*fileNode)(nil))
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeReader)((*fileNode)(nil))
)

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0o400
	out.Size = uint64(n.f.size)
	out.Nlink = 1
	out.SetTimes(nil, &n.s.mounted, &n.s.mounted)
	return 0
}

func (n *fileNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	n.s.mu.Lock()
	buffered := n.f.buffered
	n.s.mu.Unlock()
	if buffered {
		// Through the page cache: the kernel asks for runs of the file
		// ahead of the reads (readahead), each once, and answers a read of
		// a page from what it holds. Kept when the file is opened again
		// (by default the kernel drops it then, and asks anew for content
		// that is gone).
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	// Direct I/O: reads come straight to Read, in the reader's order, and
	// nothing is kept in the page cache.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= n.f.size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	if b := n.f.backing; b != nil {
		n.s.mu.Lock()
		failed := n.s.err != nil || n.f.gone
		n.s.mu.Unlock()
		if failed {
			return nil, syscall.EIO // closed
		}
		// Spliced from the file: its pages go from the page cache into
		// the reader's pages, which the kernel pins before the copy. The
		// descriptor stays open until the connection has ended.
		return fuse.ReadResultFd(b.Fd(), off, int(min(int64(len(dest)), n.f.size-off))), 0
	}
	data, done, errno := n.s.read(n.f, dest, off)
	if errno != 0 {
		return nil, errno
	}
	return &reply{data: data, done: done}, 0
}

// A reply is a read's bytes, written to the kernel as they are (one
// writev: go-fuse's Slices path, with no attempt to splice them), and done,
// if set, is called once they have been.
type reply struct {
	data []byte
	done func()
}

func (r *reply) Bytes([]byte) ([]byte, fuse.Status) { return r.data, fuse.OK }
func (r *reply) Size() int                          { return len(r.data) }
func (r *reply) Slices() ([][]byte, fuse.Status)    { return [][]byte{r.data}, fuse.OK }

func (r *reply) Done() {
	if r.done != nil {
		r.done()
		r.done = nil
	}
}

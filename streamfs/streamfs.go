//go:build linux

// Package streamfs serves, through FUSE, files that are still being
// written: a read of bytes that are not there yet waits until they are.
// snapboot uses it so that CRIU reads a checkpoint's page images while they
// are still downloading, instead of after.
//
// The writer owns the backing files. It tells the file system how far each
// one is written (Written) and, if it gives up, why (Fail): every read
// waiting then, and every later one, gets EIO.
package streamfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// File is one file the file system serves: its name in the mount's root
// directory and its final size.
type File struct {
	Name string
	Size int64
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
	closed  bool
}

type file struct {
	size    int64
	written int64
	backing *os.File // nil until Attach
}

// maxRequest is the largest read the kernel sends in one request. CRIU
// reads page images in runs of megabytes. 512 KiB replies are spliced from
// the backing file to the FUSE device without a copy (a 1 MiB one and its
// header would not fit a pipe): measured, 3.5 GB/s against 2.2 GB/s at 1 MiB.
const maxRequest = 512 << 10

// Mount serves files, all empty so far, in mountpoint (an empty
// directory). Only root can reach them.
func Mount(mountpoint string, files []File) (*FS, error) {
	s := &FS{Mountpoint: mountpoint, files: map[string]*file{}, changed: make(chan struct{})}
	for _, f := range files {
		if f.Name == "" || f.Name != path.Base(f.Name) || f.Name == "." || f.Name == ".." || f.Size < 0 {
			return nil, fmt.Errorf("streamfs: bad file %q (%d bytes)", f.Name, f.Size)
		}
		if _, dup := s.files[f.Name]; dup {
			return nil, fmt.Errorf("streamfs: file %q listed twice", f.Name)
		}
		s.files[f.Name] = &file{size: f.Size}
	}
	root := &rootNode{s: s}
	timeout := time.Hour // nothing changes but sizes, and those are known
	server, err := fs.Mount(mountpoint, root, &fs.Options{
		EntryTimeout: &timeout,
		AttrTimeout:  &timeout,
		MountOptions: fuse.MountOptions{
			FsName:            "snapboot-stream",
			Name:              "snapboot",
			DirectMountStrict: true, // root, no fusermount
			AllowOther:        true, // CRIU's restored tasks may be in a user namespace
			MaxWrite:          maxRequest,
			MaxReadAhead:      maxRequest,
			DisableXAttrs:     true,
			Logger:            log.New(io.Discard, "", 0),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("streamfs: mount %s: %w", mountpoint, err)
	}
	s.server = server
	return s, nil
}

// Attach gives the file system the backing file of name, open for reading;
// the file system closes it.
func (s *FS) Attach(name string, backing *os.File) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[name]
	switch {
	case f == nil:
		return fmt.Errorf("streamfs: no file %q", name)
	case f.backing != nil:
		return fmt.Errorf("streamfs: file %q attached twice", name)
	case s.closed:
		return errors.New("streamfs: closed")
	}
	f.backing = backing
	return nil
}

// Written records that the first n bytes of name are in its backing file.
func (s *FS) Written(name string, n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if f := s.files[name]; f != nil && n > f.written {
		f.written = min(n, f.size)
		s.notify()
	}
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

// Err is the error Fail recorded, if any.
func (s *FS) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

func (s *FS) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Close fails waiting reads, unmounts the file system and closes the
// backing files.
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
	defer s.mu.Unlock()
	s.closed = true
	for _, f := range s.files {
		if f.backing != nil {
			f.backing.Close()
			f.backing = nil
		}
	}
	if err != nil {
		return fmt.Errorf("streamfs: unmount %s: %w", s.Mountpoint, err)
	}
	return nil
}

// await waits until f holds bytes [0, end), and returns its backing file.
func (s *FS) await(ctx context.Context, f *file, end int64) (*os.File, syscall.Errno) {
	for {
		s.mu.Lock()
		written, backing, err, changed := f.written, f.backing, s.err, s.changed
		s.mu.Unlock()
		if written >= end && backing != nil {
			return backing, 0
		}
		if err != nil {
			return nil, syscall.EIO
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, syscall.EINTR
		}
	}
}

type rootNode struct {
	fs.Inode
	s *FS
}

var _ = (fs.NodeOnAdder)((*rootNode)(nil))

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
	_ = (fs.NodeOpener)((*fileNode)(nil))
	_ = (fs.NodeReader)((*fileNode)(nil))
)

func (n *fileNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = fuse.S_IFREG | 0o400
	out.Size = uint64(n.f.size)
	out.Nlink = 1
	return 0
}

func (n *fileNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR) != 0 {
		return nil, 0, syscall.EROFS
	}
	// Direct I/O: reads go straight to Read, no second copy of the pages
	// in the page cache.
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *fileNode) Read(ctx context.Context, fh fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= n.f.size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), n.f.size)
	backing, errno := n.s.await(ctx, n.f, end)
	if errno != 0 {
		return nil, errno
	}
	return fuse.ReadResultFd(backing.Fd(), off, int(end-off)), 0
}

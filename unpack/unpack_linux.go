//go:build linux

package unpack

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/snapboot/snapboot/oci"
)

// Mode selects which kinds of entries an archive may hold and how they are
// written.
type Mode int

const (
	// CRIUImages: a directory of CRIU image files. Only regular files and
	// directories are allowed; any symlink, hard link, device, fifo or
	// whiteout is rejected. Setuid, setgid and sticky bits are dropped.
	CRIUImages Mode = iota
	// RootfsDiff: a container rootfs diff in containerd/OCI layer format.
	// Regular files, dirs, symlinks and hard links are allowed; OCI
	// whiteouts (".wh.NAME" and ".wh..wh..opq") are converted to overlayfs
	// whiteouts (a 0/0 character device named NAME, and the xattr
	// trusted.overlay.opaque="y" on the directory) so the result can be used
	// directly as an overlayfs lowerdir.
	RootfsDiff
)

// String returns the name of the mode.
func (m Mode) String() string {
	switch m {
	case CRIUImages:
		return "CRIUImages"
	case RootfsDiff:
		return "RootfsDiff"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Options configure an extraction.
type Options struct {
	// Mode selects the entry types accepted.
	Mode Mode
	// MaxBytes bounds the total bytes of file content written; 0 means 64 GiB.
	MaxBytes int64
	// Budget, when set, also bounds them, together with the other
	// extractions that share it.
	Budget *Budget
	// MaxEntries bounds the number of tar entries; 0 means 1,000,000.
	MaxEntries int
	// Codec is how the stream is compressed (TarCompressed); zstd unless
	// set.
	Codec Codec
	// SkipFrameChecksums skips checking zstd frames' content checksums, for
	// a caller that verifies the digest of the whole compressed stream and
	// discards the result on a mismatch (see cache.FetchBlobTo). LZ4 frames'
	// checksums, where a frame has one, are always checked (pierrec/lz4 has
	// no way to skip them; snapboot packs its LZ4 frames without).
	SkipFrameChecksums bool
	// Frames, when not nil, are the frames the stream must consist of
	// (TarCompressed only): each is checked against its size and digest before it
	// is decoded, so every byte written has been verified.
	Frames []oci.Frame
	// Files, when set, follows regular files as they are written.
	Files FileObserver
	// Workers is how many frames are decoded at once; 0 means
	// GOMAXPROCS, at most 8.
	Workers int
	// Nice, when positive, is the nice value of the threads that decode
	// frames: below the rest of the process, so that they use the CPU time
	// nothing else on the machine wants.
	Nice int
	// NiceFrom, when set, keeps the decoding at the process's priority
	// until it is closed (until then, what is decoded is what the rest of
	// the process waits for), and lowers it to Nice after.
	NiceFrom <-chan struct{}
}

// FileObserver follows the writing of regular files.
type FileObserver interface {
	// Start is called when name (cleaned, relative to the extraction
	// directory) is created, before its size bytes of content are written.
	// If it returns a writer, the content goes there instead, and the file
	// is left empty. An error stops the extraction.
	Start(name string, size int64) (io.Writer, error)
}

// An Adopter is a writer that takes the content's buffers instead of a
// copy of them. When a FileObserver's writer is one, and the archive comes
// from TarCompressed, a regular file's content is handed over as slices of the
// decoded frames: b stays as it is until release is called, which the
// adopter does once, when it no longer reads b (or never, leaving b to the
// garbage collector). If Adopt fails, b was not taken. This saves copying
// a page image once on its way to CRIU.
type Adopter interface {
	Adopt(b []byte, release func()) error
}

// borrower lends its output instead of copying it (frameReader.Borrow).
type borrower interface {
	Borrow(n int) ([]byte, func(), error)
}

// Stats reports what an extraction did. On error it counts what was done
// before the error.
type Stats struct {
	// Entries is the number of tar entries processed, including skipped
	// metadata entries such as PAX global headers.
	Entries int
	// Bytes is the number of bytes of file content written.
	Bytes int64
}

// ErrUnsafe is wrapped by every rejection of an entry that could write
// outside the extraction directory or that the mode does not allow.
var ErrUnsafe = errors.New("unsafe archive entry")

// ErrCorrupt is wrapped when the compressed stream does not match the
// frames it must consist of (Options.Frames).
var ErrCorrupt = errors.New("archive does not match its digests")

// A Budget bounds the bytes of file content that several extractions
// write together, such as the layers of one checkpoint unpacking at once:
// each takes a file's size from it before writing the file.
type Budget struct {
	limit int64
	left  atomic.Int64
}

// NewBudget returns a budget of limit bytes.
func NewBudget(limit int64) *Budget {
	b := &Budget{limit: limit}
	b.left.Store(limit)
	return b
}

// take takes n bytes from the budget, if it has them.
func (b *Budget) take(n int64) bool {
	for {
		left := b.left.Load()
		if n > left {
			return false
		}
		if b.left.CompareAndSwap(left, left-n) {
			return true
		}
	}
}

// ErrTooLarge is wrapped by every rejection of an archive that exceeds
// Options.MaxBytes, Options.MaxEntries or another built-in bound.
var ErrTooLarge = errors.New("archive exceeds limit")

const (
	defaultMaxBytes   = 64 << 30
	defaultMaxEntries = 1_000_000

	// zstdMaxWindow bounds the decoder's window and so its memory. It covers
	// every standard compression level and "zstd --long" up to 28.
	zstdMaxWindow = 256 << 20
	// maxTrailing bounds the decompressed data read after the tar
	// end-of-archive marker (tar writers pad to their record size).
	maxTrailing = 1 << 20

	copyBufSize = 1 << 20
	blockSize   = 512
)

// Tar extracts an uncompressed tar stream into dir (which must exist and
// should be empty). The stream must end with a tar end-of-archive marker;
// one cut short is an error. On error dir holds a partial result that the
// caller should remove.
func Tar(ctx context.Context, r io.Reader, dir string, opts Options) (Stats, error) {
	x, err := newExtractor(dir, opts)
	if err != nil {
		return Stats{}, err
	}
	defer x.root.Close()

	src := &stream{ctx: ctx, r: r}
	if b, ok := r.(borrower); ok {
		x.lender = &lender{src: src, b: b}
	}
	tr := tar.NewReader(src)
	for {
		if err := ctx.Err(); err != nil {
			return x.st, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return x.st, fmt.Errorf("reading tar: %w", err)
		}
		if x.st.Entries >= x.maxEntries {
			return x.st, fmt.Errorf("more than %d entries: %w", x.maxEntries, ErrTooLarge)
		}
		if err := x.entry(hdr, tr); err != nil {
			return x.st, err
		}
		x.st.Entries++
		if x.lender != nil && x.lender.passed {
			// The content was lent past the tar reader, which would skip
			// it again: read on with a new one, at the next header.
			x.lender.passed = false
			tr = tar.NewReader(src)
		}
	}
	if !src.complete() {
		return x.st, fmt.Errorf("reading tar: no end-of-archive marker: %w", io.ErrUnexpectedEOF)
	}
	return x.st, x.finishDirs()
}

// TarCompressed decompresses r (compressed with opts.Codec, zstd unless
// set) and extracts the tar stream inside as Tar does. The whole
// compressed stream is read and checked, so a truncated or corrupt stream
// is an error even when the damage lies after the tar end marker.
func TarCompressed(ctx context.Context, r io.Reader, dir string, opts Options) (Stats, error) {
	zr := newFrameReader(r, opts)
	defer zr.Close()

	st, err := Tar(ctx, zr, dir, opts)
	if err != nil {
		return st, err
	}
	n, err := io.Copy(io.Discard, io.LimitReader(zr, maxTrailing+1))
	if err != nil {
		return st, fmt.Errorf("%v: %w", opts.Codec, err)
	}
	if n > maxTrailing {
		return st, fmt.Errorf("more than %d bytes after the tar end-of-archive marker: %w", maxTrailing, ErrTooLarge)
	}
	return st, nil
}

// stream passes the archive to the tar reader, fails once ctx is done, and
// remembers enough to tell whether the tar reader stopped at an
// end-of-archive marker or at the end of the input.
type stream struct {
	ctx   context.Context
	r     io.Reader
	zeros int64 // length of the run of zero bytes that ends what was read
	eof   bool
}

func (s *stream) Read(p []byte) (int, error) {
	if err := s.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := s.r.Read(p)
	s.saw(p[:n], err)
	return n, err
}

// saw notes what was read from the archive.
func (s *stream) saw(p []byte, err error) {
	i := len(p)
	for i > 0 && p[i-1] == 0 {
		i--
	}
	if i == 0 {
		s.zeros += int64(len(p))
	} else {
		s.zeros = int64(len(p) - i)
	}
	if err == io.EOF {
		s.eof = true
	}
}

// lender hands a regular file's content to an Adopter as slices of the
// decoded stream, past the tar reader; passed says it did.
type lender struct {
	src    *stream
	b      borrower
	passed bool
}

// lend hands the next size bytes of the archive to a, then skips the
// padding to the next header.
func (l *lender) lend(a Adopter, size int64) (int64, error) {
	var n int64
	for n < size {
		if err := l.src.ctx.Err(); err != nil {
			return n, err
		}
		b, release, err := l.b.Borrow(int(min(size-n, 1<<30)))
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return n, err
		}
		l.src.saw(b, nil)
		n += int64(len(b))
		if err := a.Adopt(b, release); err != nil {
			release() // not taken
			return n, err
		}
	}
	l.passed = true
	pad := (blockSize - size%blockSize) % blockSize
	if _, err := io.CopyN(io.Discard, l.src, pad); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, err
	}
	return n, nil
}

// complete reports whether the archive read so far ended with the two zero
// blocks of an end-of-archive marker. The tar reader reads nothing past the
// marker, so if it hit the end of the input without one having been read
// last, the input was cut short.
func (s *stream) complete() bool {
	return !s.eof || s.zeros >= 2*blockSize
}

func newExtractor(dir string, opts Options) (*extractor, error) {
	if opts.Mode != CRIUImages && opts.Mode != RootfsDiff {
		return nil, fmt.Errorf("unpack: unknown mode %v", opts.Mode)
	}
	if opts.MaxBytes < 0 || opts.MaxEntries < 0 {
		return nil, errors.New("unpack: negative limit in options")
	}
	x := &extractor{
		mode:       opts.Mode,
		maxBytes:   opts.MaxBytes,
		budget:     opts.Budget,
		maxEntries: opts.MaxEntries,
		files:      opts.Files,
		dirIndex:   map[string]int{},
	}
	if x.maxBytes == 0 {
		x.maxBytes = defaultMaxBytes
	}
	if x.maxEntries == 0 {
		x.maxEntries = defaultMaxEntries
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("unpack: %w", err)
	}
	x.root = root
	return x, nil
}

package unpack

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/opencontainers/go-digest"

	"github.com/snapboot/snapboot/oci"
)

// A zstd stream may hold many independent frames. snapboot writes its
// layers as frames of a few MiB each, so that they decode in parallel on
// every core while the download streams in. frameReader cuts the stream
// into frames by reading their headers (RFC 8878, section 3.1) without
// decompressing them, decodes up to `workers` frames at once, and returns
// their output in order. A stream of few, large frames (the zstd CLI makes
// one) is decoded by a single streaming decoder instead.
//
// An LZ4 layer (Codec LZ4) is cut into frames only where the layer lists
// them (Options.Frames), as snapboot's own do; otherwise one streaming
// decoder reads it.

const (
	frameMagic         = 0xFD2FB528
	skippableMagicMask = 0xFFFFFFF0
	skippableMagic     = 0x184D2A50
	maxBlockSize       = 128 << 10
	// maxParallelFrame is the largest compressed frame decoded in parallel;
	// a larger one switches to the streaming decoder.
	maxParallelFrame = 16 << 20
	// maxFrameOutput bounds one frame's decompressed size in parallel mode.
	maxFrameOutput = 64 << 20
	// outBufSize is the size of a decoded frame's buffer: what one of
	// snapboot's frames holds (pack.FrameSize). A larger frame grows it.
	outBufSize = 4 << 20
	// maxLent is how many decoded frames, beyond those in flight, go back
	// to the free list once a consumer that borrowed them (Borrow) lets
	// them go, instead of to the GC. A streamed restore holds some of them
	// ahead of CRIU and just behind it (about 50 MiB with streamfs's 32
	// MiB window, up to its spill threshold past a stalled CRIU); when
	// the free list kept only 8 of those it let go of (with a 256 MiB
	// window then), the next frames were decoded into new buffers (72 of
	// the 91 MB a restoring shim allocated). The list keeps only frames
	// that were lent, so a small window keeps it small too.
	maxLent = 64
	// maxDefaultWorkers bounds the decoders when Options.Workers is 0:
	// each holds up to three frames in memory (of up to maxFrameOutput
	// decoded), and eight decode (about 1 GB/s each) faster than a layer
	// downloads or is written.
	maxDefaultWorkers = 8
)

// newOutBuf makes a decoded frame's buffer, carved from s; tests count the
// calls.
var newOutBuf = func(s *bufSlab) *[]byte {
	b := s.take()
	return &b
}

// A bufSlab carves decoded frames' buffers from slabs aligned to 2 MiB,
// each advised to be backed by huge pages while it lives (see
// hugePagesWhileAlive). A buffer allocated on its own is rarely aligned:
// only its one 2 MiB page that falls whole inside it can be a huge page,
// the rest stays in 4 KiB pages. Writing 30 new 4 MiB buffers took
// 260–415 ms that way (half of them in huge pages), 21–22 ms carved from
// aligned slabs (all of them), on the bench's VM. A reader's first buffer
// is allocated on its own, unadvised, so that a layer of one frame holds
// one buffer; the later ones come in slabs of a few frames. A slab's
// memory goes when the last frame carved from it does. Each frame reader
// has its own.
type bufSlab struct {
	mu    sync.Mutex
	rest  []byte
	taken int
}

const (
	hugePageSize = 2 << 20
	// slabFrames is how many frames' buffers a slab holds: the 2 MiB
	// spent aligning it is an eighth of its size.
	slabFrames = 4
)

// take returns a new buffer of capacity outBufSize and length 0.
func (s *bufSlab) take() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.taken++
	if s.taken == 1 {
		return make([]byte, 0, outBufSize)
	}
	if cap(s.rest) < outBufSize {
		raw := make([]byte, slabFrames*outBufSize+hugePageSize)
		off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(raw))) & (hugePageSize - 1))
		s.rest = raw[off : off+slabFrames*outBufSize : off+slabFrames*outBufSize]
		hugePagesWhileAlive(raw, s.rest)
	}
	b := s.rest[:0:outBufSize]
	s.rest = s.rest[outBufSize:]
	return b
}

var errFrameTooLarge = errors.New("frame too large for parallel decoding")

// Frame buffers are reused: a large layer is hundreds of frames. Not
// through a sync.Pool: a shim runs with a low GC percentage, every GC
// empties a pool, and a profile of a streamed restore then showed the
// buffers growing again from nothing, frame after frame (allocating,
// clearing and copying about as much as the frames themselves).
type freeList[T any] struct {
	free  chan T
	alloc func() T
}

func newFreeList[T any](n int, alloc func() T) *freeList[T] {
	return &freeList[T]{free: make(chan T, n), alloc: alloc}
}

func (l *freeList[T]) get() T {
	select {
	case x := <-l.free:
		return x
	default:
		return l.alloc()
	}
}

func (l *freeList[T]) put(x T) {
	select {
	case l.free <- x:
	default:
	}
}

// readFrame reads one frame (or skippable frame) from br, whole, into buf.
// With errFrameTooLarge it returns the bytes read so far.
func readFrame(br *bufio.Reader, limit int, buf *[]byte) (frame []byte, skippable bool, err error) {
	*buf = (*buf)[:0]
	defer func() {
		if errors.Is(err, errFrameTooLarge) {
			frame = *buf
		}
	}()
	take := func(n int) ([]byte, error) {
		start := len(*buf)
		if start+n > limit {
			return nil, errFrameTooLarge
		}
		*buf = slices.Grow(*buf, n)[:start+n]
		if got, err := io.ReadFull(br, (*buf)[start:]); err != nil {
			*buf = (*buf)[:start+got] // a cut stream is not a clean end
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		return (*buf)[start:], nil
	}
	magicBytes, err := take(4)
	if err != nil {
		if err == io.ErrUnexpectedEOF && len(*buf) == 0 {
			return nil, false, io.EOF
		}
		return nil, false, err
	}
	magic := binary.LittleEndian.Uint32(magicBytes)
	if magic&skippableMagicMask == skippableMagic {
		sz, err := take(4)
		if err != nil {
			return nil, false, err
		}
		n := binary.LittleEndian.Uint32(sz)
		if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
			return nil, false, io.ErrUnexpectedEOF
		}
		return nil, true, nil
	}
	if magic != frameMagic {
		return nil, false, fmt.Errorf("zstd: bad frame magic %#x", magic)
	}
	fhd, err := take(1)
	if err != nil {
		return nil, false, err
	}
	d := fhd[0]
	if d&0x08 != 0 {
		return nil, false, errors.New("zstd: reserved bit set in frame header")
	}
	single := d&0x20 != 0
	n := 0
	if !single {
		n++ // window descriptor
	}
	n += []int{0, 1, 2, 4}[d&0x03] // dictionary ID
	switch fcs := d >> 6; {
	case fcs == 0 && single:
		n++
	case fcs == 1:
		n += 2
	case fcs == 2:
		n += 4
	case fcs == 3:
		n += 8
	}
	if _, err := take(n); err != nil {
		return nil, false, err
	}
	for {
		h, err := take(3)
		if err != nil {
			return nil, false, err
		}
		hdr := uint32(h[0]) | uint32(h[1])<<8 | uint32(h[2])<<16
		last, typ, size := hdr&1 != 0, (hdr>>1)&3, int(hdr>>3)
		switch typ {
		case 0, 2: // raw, compressed
			if size > maxBlockSize {
				return nil, false, fmt.Errorf("zstd: block of %d bytes", size)
			}
		case 1: // RLE: one byte, repeated size times
			size = 1
		default:
			return nil, false, errors.New("zstd: reserved block type")
		}
		if _, err := take(size); err != nil {
			return nil, false, err
		}
		if last {
			break
		}
	}
	if d&0x04 != 0 {
		if _, err := take(4); err != nil {
			return nil, false, err
		}
	}
	return *buf, false, nil
}

// readListed reads frame i of the frames the stream must be, exactly its
// listed size, straight into buf; its digest is checked before it is
// decoded. After the last one the stream must end.
func readListed(r io.Reader, frames []oci.Frame, i int, buf *[]byte) ([]byte, error) {
	if i == len(frames) {
		if n, _ := io.ReadFull(r, make([]byte, 1)); n > 0 {
			return nil, fmt.Errorf("more after the %d frames the layer lists: %w", len(frames), ErrCorrupt)
		}
		return nil, io.EOF
	}
	size := frames[i].Size
	if size <= 0 || size > maxParallelFrame {
		return nil, fmt.Errorf("frame %d is listed with %d bytes: %w", i, size, ErrCorrupt)
	}
	*buf = slices.Grow((*buf)[:0], int(size))[:size]
	// A stream that ends early says so as a cut download does (unexpected
	// EOF), whichever of the layer's bytes the cut falls in.
	switch n, err := io.ReadFull(r, *buf); {
	case err == io.EOF:
		return nil, fmt.Errorf("stream ends after %d of its %d frames: %w: %w", i, len(frames), io.ErrUnexpectedEOF, ErrCorrupt)
	case err == io.ErrUnexpectedEOF:
		return nil, fmt.Errorf("stream ends %d bytes into frame %d of %d: %w: %w", n, i, len(frames), io.ErrUnexpectedEOF, ErrCorrupt)
	case err != nil:
		return nil, err
	}
	return *buf, nil
}

// newFrameReader returns the decompressed content of the stream r,
// compressed with opts.Codec.
// Frames are decoded by opts.Workers goroutines and read in order straight
// from their decoded buffers. Frames' content checksums are checked unless
// opts.SkipFrameChecksums is set (the caller verifies a digest of the whole
// stream). When opts.Frames is not nil the stream must be exactly those
// frames: each one is checked against its size and digest before it is
// decoded. A positive opts.Nice runs the decoding on threads of that nice
// value (once opts.NiceFrom is closed, if it is set).
func newFrameReader(r io.Reader, opts Options) io.ReadCloser {
	workers := defaultWorkers(opts.Workers)
	// Every frame in flight holds a buffer of each kind.
	inflight := workers*3 + 2
	slab := new(bufSlab)
	fr := &frameReader{
		// Its capacity bounds the frames in flight, and so the memory.
		results:  make(chan chan piece, workers*2),
		inBufs:   newFreeList(inflight, func() *[]byte { return new([]byte) }),
		outBufs:  newFreeList(inflight+maxLent, func() *[]byte { return newOutBuf(slab) }),
		stop:     make(chan struct{}),
		frames:   opts.Frames,
		nice:     opts.Nice,
		niceFrom: opts.NiceFrom,
	}
	go fr.split(r, workers, opts.Codec, !opts.SkipFrameChecksums)
	return fr
}

// defaultWorkers is the number of decoders for Options.Workers n: n if it
// is positive, else GOMAXPROCS, at most maxDefaultWorkers.
func defaultWorkers(n int) int {
	if n > 0 {
		return n
	}
	return min(runtime.GOMAXPROCS(0), maxDefaultWorkers)
}

// piece is the next part of the output: a decoded frame, the rest of the
// stream to decode sequentially, or an error.
type piece struct {
	out    *[]byte
	stream streamDecoder
	err    error
}

type frameReader struct {
	results  chan chan piece
	stop     chan struct{}
	once     sync.Once
	frames   []oci.Frame // the frames the stream must be, or nil
	nice     int
	niceFrom <-chan struct{}
	inBufs   *freeList[*[]byte]
	outBufs  *freeList[*[]byte]

	cur    *outBuf
	off    int
	stream streamDecoder
	err    error
}

// outBuf is a decoded frame, shared by the reader and the slices of it
// that Borrow lends; it goes back to the free list once all are done.
type outBuf struct {
	b    *[]byte
	refs atomic.Int32
	free *freeList[*[]byte]
}

func (o *outBuf) release() {
	if o.refs.Add(-1) == 0 {
		o.free.put(o.b)
	}
}

func (f *frameReader) Read(p []byte) (int, error) {
	for {
		switch {
		case f.err != nil:
			return 0, f.err
		case f.stream != nil:
			return f.stream.Read(p)
		case f.cur != nil && f.off < len(*f.cur.b):
			n := copy(p, (*f.cur.b)[f.off:])
			f.off += n
			return n, nil
		}
		f.next()
	}
}

// Borrow returns up to n bytes of the output, without copying them where
// they are most of a decoded frame's buffer, and a function to call once
// they are no longer used: until then they stay as they are. What a
// borrower holds is thus at most 4/3 of the bytes it was lent, counted in
// frames' buffers; a buffer carved from a slab keeps the slab's memory
// (four frames) until the slab's other frames are let go of too. It
// returns bytes or an error, not both.
func (f *frameReader) Borrow(n int) ([]byte, func(), error) {
	for {
		switch {
		case f.err != nil:
			return nil, nil, f.err
		case f.stream != nil:
			// Few large frames, decoded as one stream: lent from a copy.
			b := make([]byte, min(n, copyBufSize))
			k, err := f.stream.Read(b)
			if k > 0 {
				return b[:k], func() {}, nil
			}
			return nil, nil, err
		case f.cur != nil && f.off < len(*f.cur.b):
			k := min(n, len(*f.cur.b)-f.off)
			b := (*f.cur.b)[f.off : f.off+k : f.off+k]
			f.off += k
			if 4*k < 3*cap(*f.cur.b) {
				// A small part of its buffer: lent as a copy. A borrower
				// counts what it holds by the bytes it was lent, and a
				// frame's buffer is up to maxFrameOutput: a crafted
				// archive of 1-byte files, each at the end of a large
				// frame, would otherwise hold a buffer per byte counted.
				// Whole frames (pack.FrameSize, the buffers' size) are
				// lent; a file's first and last part are copied.
				return bytes.Clone(b), func() {}, nil
			}
			o := f.cur
			o.refs.Add(1)
			var once sync.Once
			return b, func() { once.Do(o.release) }, nil
		}
		f.next()
	}
}

// next lets go of the current frame and takes the next piece of output.
func (f *frameReader) next() {
	if f.cur != nil {
		f.cur.release()
		f.cur = nil
	}
	res, ok := <-f.results
	if !ok {
		f.err = io.EOF
		return
	}
	pc := <-res
	switch {
	case pc.err != nil:
		f.err = pc.err
	case pc.stream != nil:
		f.stream = pc.stream
	default:
		f.cur, f.off = &outBuf{b: pc.out, free: f.outBufs}, 0
		f.cur.refs.Store(1)
	}
}

// Close stops the decoding; it is safe to call before the end.
func (f *frameReader) Close() error {
	f.once.Do(func() {
		close(f.stop)
		go func() { // release the frames still in flight
			for res := range f.results {
				if pc := <-res; pc.out != nil {
					f.outBufs.put(pc.out)
				} else if pc.stream != nil {
					pc.stream.close()
				}
			}
		}()
		if f.stream != nil {
			f.stream.close()
		}
		if f.cur != nil {
			f.cur.release()
			f.cur = nil
		}
	})
	return nil
}

// split cuts the stream into frames and hands them to the decoders, in
// order; it ends the results when the stream ends, fails, or the reader is
// closed.
func (f *frameReader) split(r io.Reader, workers int, codec Codec, checksums bool) {
	defer close(f.results)
	var inflight sync.WaitGroup
	decoders := make(chan frameDecoder, workers)
	defer func() {
		inflight.Wait()
		for len(decoders) > 0 {
			(<-decoders).close()
		}
	}()
	for i := 0; i < workers; i++ {
		d, err := codec.newFrameDecoder(checksums)
		if err != nil {
			f.send(piece{err: err})
			return
		}
		decoders <- d
	}
	verify := f.frames != nil
	var br *bufio.Reader
	if !verify {
		br = bufio.NewReaderSize(r, 1<<20)
	}
	for i := 0; ; i++ {
		in := f.inBufs.get()
		var (
			frame     []byte
			skippable bool
			err       error
		)
		if verify {
			frame, err = readListed(r, f.frames, i, in)
		} else {
			frame, skippable, err = codec.splitFrame(br, maxParallelFrame, in)
		}
		switch {
		case err == io.EOF:
			return
		case errors.Is(err, errFrameTooLarge):
			// Few large frames: the rest is one stream, decoded by the
			// reader once the frames in flight are read.
			zr, zerr := codec.newStreamDecoder(io.MultiReader(bytes.NewReader(frame), br), checksums)
			if zerr != nil {
				f.send(piece{err: zerr})
				return
			}
			if !f.send(piece{stream: zr}) {
				zr.close()
			}
			return
		case err != nil:
			f.send(piece{err: err})
			return
		case skippable:
			f.inBufs.put(in)
			continue
		}
		res := make(chan piece, 1)
		select {
		case f.results <- res:
		case <-f.stop:
			return
		}
		dec := <-decoders
		inflight.Add(1)
		var want digest.Digest
		if verify {
			want = f.frames[i].Digest
		}
		go func() {
			defer inflight.Done()
			if f.lowered() {
				defer LowerPriority(f.nice)()
			}
			out := f.outBufs.get()
			var err error
			if want != "" && digest.SHA256.FromBytes(frame) != want {
				err = fmt.Errorf("frame %d does not match its digest %s: %w", i, want, ErrCorrupt)
			} else {
				*out, err = dec.decode(*out, frame)
			}
			decoders <- dec
			f.inBufs.put(in)
			res <- piece{out: out, err: err}
		}()
	}
}

// lowered reports whether a frame is to be decoded at f.nice.
func (f *frameReader) lowered() bool {
	if f.nice <= 0 || f.niceFrom == nil {
		return f.nice > 0
	}
	select {
	case <-f.niceFrom:
		return true
	default:
		return false
	}
}

// send queues one last piece; false when the reader was closed.
func (f *frameReader) send(pc piece) bool {
	res := make(chan piece, 1)
	res <- pc
	select {
	case f.results <- res:
		return true
	case <-f.stop:
		return false
	}
}

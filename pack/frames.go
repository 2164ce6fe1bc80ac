package pack

import (
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/snapboot/snapboot/oci"
)

// FrameSize is how much uncompressed data each zstd frame holds. Layers are
// written as a sequence of independent frames so that the restoring node
// decodes them in parallel (see package unpack); the result is an ordinary
// zstd stream that `zstd -d` reads too.
const FrameSize = 4 << 20

// maxPackers bounds the frames packed at once, and so the memory: packing
// the demo's page image at the best level peaked at 217 MiB of RSS with 2
// packers and 743 MiB with 8.
const maxPackers = 4

// frameWriter compresses what is written to it into independent frames of
// FrameSize, several at once, and writes them to w in order.
type compressed struct {
	data   []byte
	digest digest.Digest
}

type frameWriter struct {
	w       io.Writer
	enc     *zstd.Encoder
	buf     []byte
	pending chan chan compressed // frames, in order
	frames  []oci.Frame          // what drain wrote
	done    chan struct{}
	err     error
	mu      sync.Mutex
	slots   chan struct{}
}

func newFrameWriter(w io.Writer, level Level) (*frameWriter, error) {
	zl, err := level.zstd()
	if err != nil {
		return nil, err
	}
	// EncodeAll takes one of the encoder's n states: frames pack on up to
	// maxPackers CPUs at once.
	n := min(runtime.GOMAXPROCS(0), maxPackers)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zl), zstd.WithEncoderConcurrency(n))
	if err != nil {
		return nil, err
	}
	fw := &frameWriter{w: w, enc: enc, pending: make(chan chan compressed, n*2), done: make(chan struct{}), slots: make(chan struct{}, n)}
	go fw.drain()
	return fw, nil
}

func (fw *frameWriter) drain() {
	defer close(fw.done)
	for ch := range fw.pending {
		frame := <-ch
		fw.mu.Lock()
		if fw.err == nil {
			if _, err := fw.w.Write(frame.data); err != nil {
				fw.err = err
			}
			fw.frames = append(fw.frames, oci.Frame{Size: int64(len(frame.data)), Digest: frame.digest})
		}
		fw.mu.Unlock()
	}
}

func (fw *frameWriter) failed() error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.err
}

func (fw *frameWriter) Write(p []byte) (int, error) {
	if err := fw.failed(); err != nil {
		return 0, err
	}
	n := len(p)
	for len(p) > 0 {
		if fw.buf == nil {
			fw.buf = make([]byte, 0, FrameSize)
		}
		k := min(FrameSize-len(fw.buf), len(p))
		fw.buf = append(fw.buf, p[:k]...)
		p = p[k:]
		if len(fw.buf) == FrameSize {
			fw.flush()
		}
	}
	return n, nil
}

func (fw *frameWriter) flush() {
	if len(fw.buf) == 0 {
		return
	}
	chunk := fw.buf
	fw.buf = nil
	ch := make(chan compressed, 1)
	fw.slots <- struct{}{}
	fw.pending <- ch
	go func() {
		data := fw.enc.EncodeAll(chunk, make([]byte, 0, len(chunk)/4))
		ch <- compressed{data: data, digest: digest.FromBytes(data)}
		<-fw.slots
	}()
}

// Frames are the frames written, in order; call it after Close.
func (fw *frameWriter) Frames() []oci.Frame { return fw.frames }

// Close writes the last frame and waits for every frame to be written.
func (fw *frameWriter) Close() error {
	fw.flush()
	close(fw.pending)
	<-fw.done
	fw.enc.Close()
	return fw.failed()
}

package pack

import (
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/pierrec/lz4/v4"

	"github.com/snapboot/snapboot/oci"
)

// FrameSize is how much uncompressed data each frame holds. Layers are
// written as a sequence of independent frames so that the restoring node
// decodes them in parallel (see package unpack); the result is an ordinary
// zstd stream that `zstd -d` reads too (or, packed with LZ4, a sequence of
// LZ4 frames that `lz4 -d` reads).
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
	err    error
}

type frameWriter struct {
	w       io.Writer
	encode  func(frame []byte) ([]byte, error) // safe to call from several goroutines
	close   func()
	buf     []byte
	pending chan chan compressed // frames, in order
	frames  []oci.Frame          // what drain wrote
	done    chan struct{}
	err     error
	mu      sync.Mutex
	slots   chan struct{}
}

func newFrameWriter(w io.Writer, level Level) (*frameWriter, error) {
	n := min(runtime.GOMAXPROCS(0), maxPackers)
	fw := &frameWriter{w: w, pending: make(chan chan compressed, n*2), done: make(chan struct{}), slots: make(chan struct{}, n)}
	if level == LZ4 {
		fw.encode, fw.close = encodeLZ4, func() {}
	} else {
		zl, err := level.zstd()
		if err != nil {
			return nil, err
		}
		// EncodeAll takes one of the encoder's n states: frames pack on up
		// to maxPackers CPUs at once.
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zl), zstd.WithEncoderConcurrency(n))
		if err != nil {
			return nil, err
		}
		fw.encode = func(frame []byte) ([]byte, error) { return enc.EncodeAll(frame, make([]byte, 0, len(frame)/4)), nil }
		fw.close = func() { enc.Close() }
	}
	go fw.drain()
	return fw, nil
}

// encodeLZ4 packs frame as one LZ4 frame of one block, at the high
// compression level that compressed the demo app's page image best for its
// packing time (level 1: 83 MiB in 17 s on one core; level 9, 82 MiB in
// 160 s). No content checksum: the checkpoint's manifest lists every
// frame's digest, which a streamed restore checks before it decodes the
// frame, and the layer's digest covers the rest.
func encodeLZ4(frame []byte) ([]byte, error) {
	var buf bytes.Buffer
	buf.Grow(lz4.CompressBlockBound(len(frame)) + 32)
	zw := lz4.NewWriter(&buf)
	err := zw.Apply(lz4.BlockSizeOption(lz4.Block4Mb), lz4.CompressionLevelOption(lz4.Level1),
		lz4.ChecksumOption(false), lz4.ConcurrencyOption(1), lz4.SizeOption(uint64(len(frame))))
	if err == nil {
		_, err = zw.Write(frame)
	}
	if err == nil {
		err = zw.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("lz4: %w", err)
	}
	return buf.Bytes(), nil
}

func (fw *frameWriter) drain() {
	defer close(fw.done)
	for ch := range fw.pending {
		frame := <-ch
		fw.mu.Lock()
		if fw.err == nil && frame.err != nil {
			fw.err = frame.err
		}
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
		data, err := fw.encode(chunk)
		ch <- compressed{data: data, digest: digest.FromBytes(data), err: err}
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
	fw.close()
	return fw.failed()
}

package unpack

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
)

// Codec is how a layer's tar stream is compressed.
type Codec int

const (
	// Zstd: a zstd stream (RFC 8878), snapboot's default. The zero value.
	Zstd Codec = iota
	// LZ4: a sequence of LZ4 frames (the LZ4 frame format, as the lz4 CLI
	// writes it). Larger than zstd, and decoded about three times faster.
	LZ4
)

// String returns the codec's name.
func (c Codec) String() string {
	switch c {
	case Zstd:
		return "zstd"
	case LZ4:
		return "lz4"
	}
	return fmt.Sprintf("Codec(%d)", int(c))
}

// frameDecoder decodes one whole frame at a time; each decoding worker has
// its own.
type frameDecoder interface {
	// decode appends src's content to dst[:0].
	decode(dst, src []byte) ([]byte, error)
	close()
}

// streamDecoder decodes a stream of frames in order, for a stream that
// can't be cut into frames up front.
type streamDecoder interface {
	io.Reader
	close()
}

func (c Codec) newFrameDecoder(checksums bool) (frameDecoder, error) {
	switch c {
	case Zstd:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderMaxMemory(maxFrameOutput), zstd.IgnoreChecksum(!checksums))
		if err != nil {
			return nil, err
		}
		return zstdFrameDecoder{d}, nil
	case LZ4:
		return &lz4FrameDecoder{r: lz4.NewReader(nil)}, nil
	}
	return nil, fmt.Errorf("unknown codec %v", c)
}

func (c Codec) newStreamDecoder(r io.Reader, checksums bool) (streamDecoder, error) {
	switch c {
	case Zstd:
		d, err := zstd.NewReader(r, zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderMaxMemory(zstdMaxWindow), zstd.IgnoreChecksum(!checksums))
		if err != nil {
			return nil, err
		}
		return zstdStreamDecoder{d}, nil
	case LZ4:
		// Its frames' blocks are at most 4 MiB; the reader holds one.
		return lz4StreamDecoder{lz4.NewReader(r)}, nil
	}
	return nil, fmt.Errorf("unknown codec %v", c)
}

// splitFrame reads the next frame of a stream in codec c from br, whole,
// into buf, without decoding it (see readFrame). A codec whose frames
// can't be told apart that way says errFrameTooLarge at once, with nothing
// read: the stream is then decoded by one streamDecoder.
func (c Codec) splitFrame(br *bufio.Reader, limit int, buf *[]byte) (frame []byte, skippable bool, err error) {
	if c == Zstd {
		return readFrame(br, limit, buf)
	}
	*buf = (*buf)[:0]
	// LZ4 decodes sequentially at well over 1 GB/s on one core: a stream
	// without a list of its frames is not worth parsing for them.
	return nil, false, errFrameTooLarge
}

type zstdFrameDecoder struct{ d *zstd.Decoder }

func (z zstdFrameDecoder) decode(dst, src []byte) ([]byte, error) { return z.d.DecodeAll(src, dst[:0]) }
func (z zstdFrameDecoder) close()                                 { z.d.Close() }

type zstdStreamDecoder struct{ *zstd.Decoder }

func (z zstdStreamDecoder) close() { z.Close() }

type lz4StreamDecoder struct{ *lz4.Reader }

func (lz4StreamDecoder) close() {}

// lz4FrameDecoder decodes an LZ4 frame (or several, back to back) into a
// buffer. pierrec/lz4's reader decodes a block straight into the buffer
// it is given when there is room for the frame's block size, so the
// content is not copied.
type lz4FrameDecoder struct {
	r   *lz4.Reader
	src bytes.Reader
}

func (l *lz4FrameDecoder) decode(dst, src []byte) ([]byte, error) {
	l.src.Reset(src)
	l.r.Reset(&l.src)
	dst = dst[:0]
	var probe [1]byte
	for {
		var (
			n   int
			err error
		)
		if len(dst) < cap(dst) {
			n, err = l.r.Read(dst[len(dst):cap(dst)])
			dst = dst[:len(dst)+n]
		} else {
			// Full: more content, or the end?
			n, err = l.r.Read(probe[:])
			dst = append(dst, probe[:n]...)
		}
		if len(dst) > maxFrameOutput {
			return nil, fmt.Errorf("lz4: frame decodes to more than %d bytes: %w", maxFrameOutput, ErrTooLarge)
		}
		switch {
		case errors.Is(err, io.EOF):
			return dst, nil
		case err != nil:
			return nil, fmt.Errorf("lz4: %w", err)
		}
	}
}

func (l *lz4FrameDecoder) close() {}

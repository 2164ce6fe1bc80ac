package unpack

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/pierrec/lz4/v4"

	"github.com/snapboot/snapboot/oci"
)

// lz4Frames compresses each chunk as its own LZ4 frame, as snapboot packs
// a CRIU images layer with LZ4, and lists the frames.
func lz4Frames(t testing.TB, chunks ...[]byte) ([]byte, []oci.Frame) {
	t.Helper()
	var out []byte
	var list []oci.Frame
	for _, c := range chunks {
		var buf bytes.Buffer
		zw := lz4.NewWriter(&buf)
		if err := zw.Apply(lz4.BlockSizeOption(lz4.Block4Mb), lz4.ChecksumOption(false)); err != nil {
			t.Fatal(err)
		}
		if _, err := zw.Write(c); err != nil {
			t.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		out = append(out, buf.Bytes()...)
		list = append(list, oci.Frame{Size: int64(buf.Len()), Digest: digest.FromBytes(buf.Bytes())})
	}
	return out, list
}

func readLZ4(t *testing.T, data []byte, opts Options) ([]byte, error) {
	t.Helper()
	opts.Codec = LZ4
	rc := newFrameReader(bytes.NewReader(data), opts)
	defer rc.Close()
	return io.ReadAll(rc)
}

// An LZ4 stream decodes the same whether its frames are listed (decoded in
// parallel, each checked against its digest first) or not (one sequential
// decoder), with frames smaller than, as large as, and larger than one
// decoded buffer.
func TestLZ4FrameReader(t *testing.T) {
	var chunks [][]byte
	var want []byte
	for i, n := range []int{300_000, outBufSize, 5_000, outBufSize + 123_456, 1} {
		c := randomish(n, int64(i))
		chunks = append(chunks, c)
		want = append(want, c...)
	}
	stream, list := lz4Frames(t, chunks...)
	for _, workers := range []int{1, 3} {
		got, err := readLZ4(t, stream, Options{Workers: workers, Frames: list})
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("listed frames, %d workers: %d of %d bytes, %v", workers, len(got), len(want), err)
		}
		got, err = readLZ4(t, stream, Options{Workers: workers})
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("unlisted frames, %d workers: %d of %d bytes, %v", workers, len(got), len(want), err)
		}
	}
	// Two frames listed as one (what a packer may do) still decode.
	joined := []oci.Frame{{Size: list[0].Size + list[1].Size, Digest: digest.FromBytes(stream[:list[0].Size+list[1].Size])}}
	joined = append(joined, list[2:]...)
	if got, err := readLZ4(t, stream, Options{Workers: 2, Frames: joined}); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("two frames listed as one: %d bytes, %v", len(got), err)
	}
}

func TestLZ4FrameReaderErrors(t *testing.T) {
	stream, list := lz4Frames(t, randomish(200_000, 1), randomish(200_000, 2))
	for _, cut := range []int{1, 5, len(stream)/2 + 7, len(stream) - 1} {
		if _, err := readLZ4(t, stream[:cut], Options{Workers: 2}); err == nil {
			t.Errorf("stream cut at %d/%d: want an error", cut, len(stream))
		}
	}
	bad := append([]byte{}, stream...)
	bad[len(bad)-100] ^= 0xff
	if _, err := readLZ4(t, bad, Options{Workers: 2, Frames: list}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("a listed frame changed: %v, want ErrCorrupt", err)
	}
	if _, err := readLZ4(t, []byte("definitely not lz4"), Options{Workers: 2}); err == nil {
		t.Error("not lz4: want an error")
	}
	// A listed frame that is not LZ4, though its digest matches.
	junk := []byte("definitely not lz4")
	if _, err := readLZ4(t, junk, Options{Workers: 2, Frames: []oci.Frame{{Size: int64(len(junk)), Digest: digest.FromBytes(junk)}}}); err == nil {
		t.Error("a listed frame that is not lz4: want an error")
	}
	// A small frame that decodes to more than one frame may: a bomb.
	bomb, bombList := lz4Frames(t, make([]byte, maxFrameOutput+1))
	if _, err := readLZ4(t, bomb, Options{Workers: 1, Frames: bombList}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a frame of %d bytes decoding to %d: %v, want ErrTooLarge", len(bomb), maxFrameOutput+1, err)
	}
}

// Borrowed LZ4 frames are the decoded buffers themselves.
func TestLZ4Borrow(t *testing.T) {
	want := randomish(2*outBufSize, 9)
	stream, list := lz4Frames(t, want[:outBufSize], want[outBufSize:])
	fr := newFrameReader(bytes.NewReader(stream), Options{Codec: LZ4, Workers: 2, Frames: list}).(*frameReader)
	defer fr.Close()
	var got []byte
	for len(got) < len(want) {
		b, release, err := fr.Borrow(outBufSize)
		if err != nil {
			t.Fatal(err)
		}
		if &b[0] != &(*fr.cur.b)[fr.off-len(b)] {
			t.Fatal("borrowed a copy, not the decoded frame")
		}
		got = append(got, b...)
		release()
	}
	if !bytes.Equal(got, want) {
		t.Fatal("borrowed bytes differ")
	}
}

// Whatever the frame decoder makes of one listed frame, the LZ4 frame
// format's reader agrees with, and it never decodes more than a frame may.
func FuzzLZ4Frame(f *testing.F) {
	one, _ := lz4Frames(f, []byte("hello, hello, hello"))
	f.Add(one)
	two, _ := lz4Frames(f, randomish(5000, 1), []byte("world"))
	f.Add(two)
	f.Add([]byte{0x04, 0x22, 0x4d, 0x18, 0x60, 0x70, 0x73})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		got, err := readLZ4(t, data, Options{Workers: 1, Frames: []oci.Frame{{Size: int64(len(data)), Digest: digest.FromBytes(data)}}})
		if err != nil {
			return
		}
		if len(got) > maxFrameOutput {
			t.Fatalf("decoded %d bytes from one frame", len(got))
		}
		want, werr := io.ReadAll(lz4.NewReader(bytes.NewReader(data)))
		if werr != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame decoder gave %d bytes, the reader %d bytes (%v)", len(got), len(want), werr)
		}
	})
}

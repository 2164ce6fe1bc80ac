package unpack

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// frames compresses each chunk as its own zstd frame.
func frames(t testing.TB, chunks ...[]byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	var out []byte
	for _, c := range chunks {
		out = enc.EncodeAll(c, out)
	}
	return out
}

func randomish(n int, seed int64) []byte {
	r := rand.New(rand.NewSource(seed))
	b := make([]byte, n)
	for i := range b {
		if i%7 == 0 {
			b[i] = byte(r.Intn(256))
		}
	}
	return b
}

func readAllFrames(t *testing.T, data []byte, workers int) ([]byte, error) {
	t.Helper()
	rc := newFrameReader(bytes.NewReader(data), Options{Workers: workers})
	defer rc.Close()
	return io.ReadAll(rc)
}

func TestFrameReader(t *testing.T) {
	var chunks [][]byte
	var want []byte
	for i := 0; i < 9; i++ {
		c := randomish(300_000+i*1000, int64(i))
		chunks = append(chunks, c)
		want = append(want, c...)
	}
	stream := frames(t, chunks...)
	// A skippable frame in the middle, as the seekable format writes them.
	skippable := binary.LittleEndian.AppendUint32(nil, 0x184D2A5E)
	skippable = binary.LittleEndian.AppendUint32(skippable, 5)
	skippable = append(skippable, "index"...)
	withSkip := append(append(frames(t, chunks[:4]...), skippable...), frames(t, chunks[4:]...)...)

	for name, in := range map[string][]byte{"many frames": stream, "skippable frame": withSkip} {
		for _, workers := range []int{1, 2, 4} {
			got, err := readAllFrames(t, in, workers)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s, %d workers: %d bytes, %v", name, workers, len(got), err)
			}
		}
	}

	// One frame larger than maxParallelFrame: the streaming decoder takes over.
	big := randomish(maxParallelFrame*3, 42)
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest))
	one := enc.EncodeAll(big, nil)
	enc.Close()
	in := append(frames(t, chunks[0]), one...)
	got, err := readAllFrames(t, in, 2)
	if err != nil || !bytes.Equal(got, append(append([]byte{}, chunks[0]...), big...)) {
		t.Fatalf("large frame: %d bytes, %v (compressed frame %d bytes)", len(got), err, len(one))
	}
}

func TestFrameReaderErrors(t *testing.T) {
	stream := frames(t, randomish(200_000, 1), randomish(200_000, 2))
	for _, cut := range []int{1, 3, 5, len(stream)/2 + 7, len(stream) - 1} {
		if _, err := readAllFrames(t, stream[:cut], 2); err == nil {
			t.Errorf("stream cut at %d/%d: want an error", cut, len(stream))
		}
	}
	bad := append([]byte{}, stream...)
	bad[len(bad)/2] ^= 0xff
	if _, err := readAllFrames(t, bad, 2); err == nil {
		t.Error("corrupted frame: want an error")
	}
	if _, err := readAllFrames(t, []byte("definitely not zstd"), 2); err == nil {
		t.Error("not zstd: want an error")
	}
	if got, err := readAllFrames(t, nil, 2); err != nil || len(got) != 0 {
		t.Errorf("empty stream: %d bytes, %v", len(got), err)
	}
}

func FuzzFrameReader(f *testing.F) {
	f.Add(frames(f, []byte("hello"), []byte("world")))
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := readAllFrames(t, data, 2)
		if err != nil {
			return
		}
		// Whatever the parallel path accepts, the reference decoder agrees with.
		zr, zerr := zstd.NewReader(bytes.NewReader(data))
		if zerr != nil {
			t.Fatal(zerr)
		}
		defer zr.Close()
		want, werr := io.ReadAll(zr)
		if werr != nil || !bytes.Equal(got, want) {
			t.Fatalf("frame reader gave %d bytes, reference decoder %d bytes (%v)", len(got), len(want), werr)
		}
	})
}

// A frame whose content checksum is wrong fails, unless the caller has
// asked to skip checksums because it verifies the stream's digest itself.
func TestFrameChecksums(t *testing.T) {
	want := randomish(200_000, 42)
	stream := frames(t, want[:100_000], want[100_000:])
	stream[len(stream)-1] ^= 0xff // the last frame's checksum
	for _, workers := range []int{1, 3} {
		rc := newFrameReader(bytes.NewReader(stream), Options{Workers: workers})
		if _, err := io.ReadAll(rc); err == nil {
			t.Errorf("workers=%d: a wrong frame checksum was accepted", workers)
		}
		rc.Close()
		rc = newFrameReader(bytes.NewReader(stream), Options{Workers: workers, SkipFrameChecksums: true})
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("workers=%d, checksums skipped: %d bytes, %v", workers, len(got), err)
		}
	}
}

// Frames a consumer borrowed and let go of are decoded into again, not
// dropped for new buffers, even when it held many at once.
func TestBorrowedFramesReused(t *testing.T) {
	var allocs atomic.Int32
	prev := newOutBuf
	newOutBuf = func(s *bufSlab) *[]byte { allocs.Add(1); return prev(s) }
	t.Cleanup(func() { newOutBuf = prev })

	const held = 30
	var chunks [][]byte
	var want []byte
	for i := 0; i < 2*held; i++ {
		c := randomish(50_000, int64(i))
		chunks = append(chunks, c)
		want = append(want, c...)
	}
	const workers = 2
	fr := newFrameReader(bytes.NewReader(frames(t, chunks...)), Options{Workers: workers}).(*frameReader)
	defer fr.Close()
	// Twice: borrow held frames and keep them all, then let them all go.
	var got []byte
	for round := 1; round <= 2; round++ {
		var releases []func()
		for len(got) < round*held*50_000 {
			b, release, err := fr.Borrow(50_000)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, b...)
			releases = append(releases, release)
		}
		for _, release := range releases {
			release()
		}
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%d bytes borrowed, not the content", len(got))
	}
	// Each frame held at once needs a buffer, and so does each in flight;
	// the second round should need none of its own.
	if n, most := allocs.Load(), int32(held+workers*3+2); n > most {
		t.Fatalf("%d frame buffers made for %d frames, %d held at once: want at most %d", n, 2*held, held, most)
	}
}

// A loan of a small part of a frame is a copy: a borrower counts what it
// holds by the bytes lent, and each 1-byte file at the end of a frame
// held on to would otherwise hold the frame's whole buffer.
func TestSmallLoansHoldNoFrame(t *testing.T) {
	var allocs atomic.Int32
	prev := newOutBuf
	newOutBuf = func(s *bufSlab) *[]byte { allocs.Add(1); return prev(s) }
	t.Cleanup(func() { newOutBuf = prev })

	const count = 40
	var chunks [][]byte
	for i := range count {
		chunks = append(chunks, randomish(outBufSize, int64(i)))
	}
	const workers = 1
	fr := newFrameReader(bytes.NewReader(frames(t, chunks...)), Options{Workers: workers}).(*frameReader)
	defer fr.Close()
	var held [][]byte
	for i, c := range chunks {
		// Most of the frame read (a tar header, say), its last byte lent
		// and kept.
		if _, err := io.ReadFull(fr, make([]byte, len(c)-1)); err != nil {
			t.Fatal(err)
		}
		b, release, err := fr.Borrow(1)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) != 1 || b[0] != c[len(c)-1] {
			t.Fatalf("frame %d: lent %v, want its last byte", i, b)
		}
		if (*fr.cur.b)[len(c)-1] = ^b[0]; b[0] != c[len(c)-1] {
			t.Fatalf("frame %d: the loan is the frame's buffer, not a copy", i)
		}
		defer release()
		held = append(held, b)
	}
	if n, most := allocs.Load(), int32(workers*3+2+1); n > most {
		t.Fatalf("%d frame buffers made for %d frames, 1 byte of each held: want at most %d", n, count, most)
	}
	// A whole frame is lent as it is.
	fr2 := newFrameReader(bytes.NewReader(frames(t, chunks[0])), Options{Workers: workers}).(*frameReader)
	defer fr2.Close()
	b, release, err := fr2.Borrow(outBufSize)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if &b[0] != &(*fr2.cur.b)[0] {
		t.Fatal("a whole frame was lent as a copy")
	}
}

// Without a number of decoders, a large node still runs at most eight
// (their frames are held in memory); a small one runs one per CPU.
func TestDefaultWorkers(t *testing.T) {
	prev := runtime.GOMAXPROCS(64)
	defer runtime.GOMAXPROCS(prev)
	if n := defaultWorkers(0); n != maxDefaultWorkers {
		t.Errorf("GOMAXPROCS 64: %d decoders, want %d", n, maxDefaultWorkers)
	}
	runtime.GOMAXPROCS(2)
	if n := defaultWorkers(0); n != 2 {
		t.Errorf("GOMAXPROCS 2: %d decoders, want 2", n)
	}
	if n := defaultWorkers(12); n != 12 {
		t.Errorf("asked for 12: %d decoders", n)
	}
}

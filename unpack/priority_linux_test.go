//go:build linux

package unpack

import (
	"bytes"
	"io"
	"os"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// threadNice is the nice value of thread tid (getpriority(2) returns
// 20-nice).
func threadNice(t *testing.T, tid int) int {
	t.Helper()
	p, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
	if err != nil {
		t.Fatal(err)
	}
	return 20 - p
}

// A lowered thread is at the asked priority until restored, and then back
// at the process's, still alive.
func TestLowerPriority(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising the priority back needs CAP_SYS_NICE")
	}
	before := threadNice(t, unix.Gettid())
	restore := LowerPriority(before + 7)
	tid := unix.Gettid()
	if got := threadNice(t, tid); got != before+7 {
		t.Fatalf("nice %d while lowered, want %d", got, before+7)
	}
	restore()
	if got := threadNice(t, tid); got != before {
		t.Fatalf("nice %d after, want %d as before", got, before)
	}
}

// Frames decoded on lowered threads read the same, and are decoded at the
// nice value asked for: a decoding goroutine takes its frame's output
// buffer on the thread it decodes on, right before decoding, so the
// buffers it makes record that thread's nice value.
func TestFrameReaderLowered(t *testing.T) {
	nice := threadNice(t, unix.Gettid()) + 5 // unlike the process's, whatever that is
	if nice > 19 {
		t.Skipf("the test runs at nice %d: no lower priority to ask for", nice-5)
	}
	var mu sync.Mutex
	var decoderNices []int
	var niceErr error
	prev := newOutBuf
	newOutBuf = func(s *bufSlab) *[]byte {
		p, err := unix.Getpriority(unix.PRIO_PROCESS, unix.Gettid()) // 20-nice, as in threadNice
		mu.Lock()
		if err != nil {
			niceErr = err
		} else {
			decoderNices = append(decoderNices, 20-p)
		}
		mu.Unlock()
		return prev(s)
	}
	t.Cleanup(func() { newOutBuf = prev })

	var chunks [][]byte
	var want []byte
	for i := 0; i < 6; i++ {
		c := randomish(200_000, int64(i))
		chunks = append(chunks, c)
		want = append(want, c...)
	}
	rc := newFrameReader(bytes.NewReader(frames(t, chunks...)), Options{Workers: 2, Nice: nice})
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("decoded %d bytes (err %v), want the %d written", len(got), err, len(want))
	}
	mu.Lock()
	defer mu.Unlock()
	if niceErr != nil {
		t.Fatal(niceErr)
	}
	if len(decoderNices) == 0 {
		t.Fatal("no frame buffer was made: nothing tells at what priority the frames were decoded")
	}
	for _, n := range decoderNices {
		if n != nice {
			t.Fatalf("frames decoded on threads at nice %v, want all at %d", decoderNices, nice)
		}
	}
}

// With NiceFrom, frames keep the process's priority until it is closed.
func TestLoweredFrom(t *testing.T) {
	from := make(chan struct{})
	for _, c := range []struct {
		f    *frameReader
		want bool
	}{
		{&frameReader{}, false},
		{&frameReader{nice: 10}, true},
		{&frameReader{nice: 10, niceFrom: from}, false},
		{&frameReader{niceFrom: from}, false},
	} {
		if got := c.f.lowered(); got != c.want {
			t.Errorf("nice %d, niceFrom set %v: lowered %v, want %v", c.f.nice, c.f.niceFrom != nil, got, c.want)
		}
	}
	close(from)
	if f := (&frameReader{nice: 10, niceFrom: from}); !f.lowered() {
		t.Error("nice 10 once niceFrom is closed: not lowered")
	}
}

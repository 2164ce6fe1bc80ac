//go:build linux

package unpack

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"
)

// vmFlags returns the VmFlags /proc/self/smaps gives the mapping that
// holds addr.
func vmFlags(t *testing.T, addr uintptr) []string {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if lo, hi, ok := strings.Cut(strings.Fields(line)[0], "-"); ok && !strings.HasSuffix(line, ":") {
			a, err1 := strconv.ParseUint(lo, 16, 64)
			b, err2 := strconv.ParseUint(hi, 16, 64)
			if err1 == nil && err2 == nil {
				in = uint64(addr) >= a && uint64(addr) < b
				continue
			}
		}
		if rest, ok := strings.CutPrefix(line, "VmFlags:"); ok && in {
			return strings.Fields(rest)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	t.Fatalf("no mapping in /proc/self/smaps holds %#x", addr)
	return nil
}

// Decoded frames' buffers, after a reader's first, are carved from
// 2 MiB-aligned slabs advised to be backed by huge pages (VmFlags "hg"):
// each starts on a 2 MiB boundary, right after the one before it in its
// slab, and is advised whole. (It checks the advice, not that the kernel
// follows it.)
func TestOutBufHugePages(t *testing.T) {
	requireTHPMadvise(t)
	slab := new(bufSlab)
	if first := *newOutBuf(slab); cap(first) != outBufSize {
		t.Fatalf("the first buffer's capacity is %d, want %d", cap(first), outBufSize)
	}
	var prevEnd uintptr
	for i := range 2*slabFrames + 1 { // three slabs
		b := *newOutBuf(slab)
		if len(b) != 0 || cap(b) != outBufSize {
			t.Fatalf("buffer %d: length %d, capacity %d; want 0 and %d", i, len(b), cap(b), outBufSize)
		}
		start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
		if start%hugePageSize != 0 {
			t.Errorf("buffer %d starts at %#x, not on a 2 MiB boundary", i, start)
		}
		if i%slabFrames != 0 && start != prevEnd {
			t.Errorf("buffer %d starts at %#x, not where the one before it in its slab ended (%#x)", i, start, prevEnd)
		}
		prevEnd = start + uintptr(cap(b))
		for _, addr := range []uintptr{start, prevEnd - 1} {
			if flags := vmFlags(t, addr); !slices.Contains(flags, "hg") {
				t.Errorf("buffer %d: the mapping at %s has VmFlags %v, without hg", i, fmt.Sprintf("%#x", addr), flags)
			}
		}
	}
}

// A frame that decodes to more than a buffer holds goes to a buffer of its
// own: the next buffer in the slab keeps its bytes, whichever codec.
func TestOutBufLargerFrame(t *testing.T) {
	big := randomish(outBufSize+outBufSize/2, 7)
	lz, _ := lz4Frames(t, big)
	for _, c := range []struct {
		codec Codec
		frame []byte
	}{{Zstd, frames(t, big)}, {LZ4, lz}} {
		slab := new(bufSlab)
		newOutBuf(slab) // the reader's first, on its own
		b, next := *newOutBuf(slab), *newOutBuf(slab)
		next = next[:cap(next)]
		for i := range next {
			next[i] = 0xa5
		}
		dec, err := c.codec.newFrameDecoder(false)
		if err != nil {
			t.Fatal(err)
		}
		out, err := dec.decode(b, c.frame)
		dec.close()
		if err != nil {
			t.Fatalf("codec %v: %v", c.codec, err)
		}
		if !bytes.Equal(out, big) {
			t.Fatalf("codec %v: the frame decoded wrong", c.codec)
		}
		if i := slices.IndexFunc(next, func(x byte) bool { return x != 0xa5 }); i >= 0 {
			t.Fatalf("codec %v: decoding a larger frame into buffer b wrote into the next buffer (byte %d)", c.codec, i)
		}
	}
}

// Once a slab is garbage, its advice is taken back (VmFlags "nh"), so
// that the heap's memory there is not made into huge pages later.
func TestSlabAdviceTakenBack(t *testing.T) {
	requireTHPMadvise(t)
	start := func() uintptr {
		slab := new(bufSlab)
		newOutBuf(slab)
		b := *newOutBuf(slab)
		if flags := vmFlags(t, uintptr(unsafe.Pointer(unsafe.SliceData(b)))); !slices.Contains(flags, "hg") {
			t.Fatalf("a new slab's VmFlags are %v, without hg", flags)
		}
		return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		flags := vmFlags(t, start)
		if slices.Contains(flags, "nh") && !slices.Contains(flags, "hg") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10 s after its slab became garbage, the memory at %#x still has VmFlags %v", start, flags)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// requireTHPMadvise skips where the kernel's THP setting is not "madvise",
// where snapboot gives no advice.
func requireTHPMadvise(t *testing.T) {
	t.Helper()
	if !thpMadvise() {
		t.Skip("the kernel's transparent huge pages setting is not madvise")
	}
}

//go:build linux

package unpack

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
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

// Decoded frames' buffers are carved from 2 MiB-aligned slabs advised to
// be backed by huge pages (VmFlags "hg"): each buffer starts on a 2 MiB
// boundary, is advised whole, and cannot grow into the next one.
func TestOutBufHugePages(t *testing.T) {
	// A mapping of its own, so that the probe's advice is not on the heap.
	probe, err := unix.Mmap(-1, 0, 4<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.Madvise(probe, unix.MADV_HUGEPAGE)
	unix.Munmap(probe)
	if err != nil {
		t.Skipf("this kernel takes no MADV_HUGEPAGE: %v", err)
	}
	slab := new(bufSlab)
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
		// A frame that decodes larger grows into a buffer of its own,
		// never into the next one.
		if grown := append(b[:outBufSize], 1); uintptr(unsafe.Pointer(unsafe.SliceData(grown))) == start {
			t.Errorf("buffer %d grew in place past its %d bytes", i, outBufSize)
		}
	}
}

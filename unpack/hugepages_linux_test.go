//go:build linux

package unpack

import (
	"bufio"
	"fmt"
	"os"
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

// A decoded frame's buffer is advised to be backed by huge pages (VmFlags
// "hg"), all of it.
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
	b := *newOutBuf()
	if cap(b) != outBufSize {
		t.Fatalf("capacity %d, want %d", cap(b), outBufSize)
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(b)))
	for _, addr := range []uintptr{start, start + uintptr(cap(b)) - 1} {
		if flags := vmFlags(t, addr); !strings.Contains(" "+strings.Join(flags, " ")+" ", " hg ") {
			t.Errorf("the mapping at %s has VmFlags %v, without hg", fmt.Sprintf("%#x", addr), flags)
		}
	}
}

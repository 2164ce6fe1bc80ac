//go:build linux

package unpack

import (
	"os"
	"runtime"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// hugePagesWhileAlive asks the kernel to back b, a part of the allocation
// alloc begins, with transparent huge pages (MADV_HUGEPAGE: the 2 MiB
// pages that fall whole inside it) until alloc is garbage: then the advice
// is taken back (MADV_NOHUGEPAGE), so that the Go heap's memory at those
// addresses, reused for anything else in a shim that lives as long as its
// container, is not made into huge pages (on a fault, or by khugepaged
// collapsing what the Go runtime gave back), which Go's own runtime stopped
// asking for on its heap (golang/go#55328). Only where the kernel's THP
// setting is "madvise": with "always", aligned memory gets huge pages
// without advice, and with "never" none. It is advice: where the kernel
// refuses or has no huge page free, b keeps its 4 KiB pages. (Should the
// heap have put a new slab at the same addresses before the old one's
// cleanup runs, the new slab loses its advice: a matter of speed only.)
//
// A decoded frame's buffer is written once, whole, by the decoder, right
// after it is allocated. Where a first write to a 4 KiB page is dear, that
// is much of the decoding's cost: on the bench's VM (a paravirtualized
// guest whose page tables the host shadows) a first write costs about
// 13 µs a page, writing 128 MiB of new heap took 0.40–0.52 s in 4 KiB
// pages and 8–28 ms in huge pages, and a streamed restore's decoders
// spent about a quarter of their CPU time in page faults.
func hugePagesWhileAlive(alloc, b []byte) {
	if cap(b) == 0 || !thpMadvise() {
		return
	}
	b = b[:cap(b)]
	if unix.Madvise(b, unix.MADV_HUGEPAGE) != nil {
		return
	}
	start, size := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b))
	runtime.AddCleanup(unsafe.SliceData(alloc), func(r [2]uintptr) {
		unix.Syscall(unix.SYS_MADVISE, r[0], r[1], unix.MADV_NOHUGEPAGE)
	}, [2]uintptr{start, size})
}

// thpMadvise reports whether the kernel's transparent huge pages setting
// is "madvise" (read once).
var thpMadvise = sync.OnceValue(func() bool {
	data, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	return err == nil && strings.Contains(string(data), "[madvise]")
})

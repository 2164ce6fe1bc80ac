//go:build linux

package unpack

import "golang.org/x/sys/unix"

// adviseHugePages asks the kernel to back the capacity of b with
// transparent huge pages where it can (MADV_HUGEPAGE: the 2 MiB pages
// that fall whole inside it, on kernels whose THP setting is "madvise" or
// "always"). It is advice: where the kernel refuses or has no huge page
// free, b keeps its 4 KiB pages.
//
// A decoded frame's buffer is written once, whole, by the decoder, right
// after it is allocated. Where a first write to a 4 KiB page is dear, that
// is much of the decoding's cost: on the bench's VM (a paravirtualized
// guest whose page tables the host shadows) a first write costs about
// 13 µs a page, writing 128 MiB of new heap took 0.40–0.52 s in 4 KiB
// pages and 0.02–0.03 s in huge pages, and a streamed restore's decoders
// spent about 0.3 CPU-s of their 0.9 in page faults.
func adviseHugePages(b []byte) {
	if cap(b) == 0 {
		return
	}
	_ = unix.Madvise(b[:cap(b)], unix.MADV_HUGEPAGE)
}

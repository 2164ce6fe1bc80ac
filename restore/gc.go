package restore

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
)

// A streamed pull allocates little but the decoded frames, and those stay
// live until CRIU has read them: the cycles that the heap's growth sets off
// find almost nothing to free. A shim runs with a GC percentage of 40 and a
// heap of a few megabytes, so a traced restore of the demo app went through
// about 16 of them (0.09 CPU-s by the runtime's count), 5 of those while
// Create waited for the images before the pages. While streamed pulls run,
// the collector waits instead for the heap to reach pullHeadroom more than
// the runtime held when the first began: more than a pull holds at once.
// That is usually under 100 MiB (the decoded frames up to 32 MiB ahead of
// CRIU, those in flight, and the free ones kept for reuse), but a writer
// that went on past a stalled CRIU, or past the pages CRIU leaves for a
// process's restorer, holds up to streamfs.MaxInMemory (512 MiB) before it
// spills, with
// up to 64 free frames (256 MiB) beside it. Below that, the collector
// would run over and over, finding nothing to free, while CRIU waits for
// the decoders.
const pullHeadroom = 768 << 20

var gc struct {
	shared
	percent int   // before the first of the overlapping pulls
	limit   int64 // likewise
}

// pullGC turns the collector off, with a memory limit pullHeadroom above
// what the Go runtime holds, until the returned function is called.
// Overlapping callers share it; the last one to finish puts both settings
// back.
func pullGC() (done func()) {
	return gc.hold(func(first bool) {
		if !first {
			return
		}
		s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}}
		metrics.Read(s)
		held := int64(min(s[0].Value.Uint64(), math.MaxInt64-pullHeadroom))
		gc.limit = debug.SetMemoryLimit(held + pullHeadroom)
		gc.percent = debug.SetGCPercent(-1)
	}, func() {
		debug.SetGCPercent(gc.percent)
		debug.SetMemoryLimit(gc.limit)
	})
}

package restore

import (
	"math"
	"runtime/debug"
	"testing"
)

// gcSettings reads the GC percentage and the memory limit.
func gcSettings() (int, int64) {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p, debug.SetMemoryLimit(-1) // a negative limit only reads it
}

func TestPullGC(t *testing.T) {
	prevPercent := debug.SetGCPercent(40) // as a shim runs
	prevLimit := debug.SetMemoryLimit(math.MaxInt64)
	t.Cleanup(func() { debug.SetGCPercent(prevPercent); debug.SetMemoryLimit(prevLimit) })

	a := pullGC()
	b := pullGC()
	p, limit := gcSettings()
	if p != -1 || limit < pullHeadroom || limit == math.MaxInt64 {
		t.Fatalf("during pulls: GC percent %d, memory limit %d; want off, with a limit above %d", p, limit, pullHeadroom)
	}
	a()
	a() // twice: counted once
	if p, l := gcSettings(); p != -1 || l != limit {
		t.Fatalf("one of two pulls done: GC percent %d, limit %d; want still off, limit %d", p, l, limit)
	}
	b()
	if p, l := gcSettings(); p != 40 || l != math.MaxInt64 {
		t.Fatalf("after the pulls: GC percent %d, limit %d; want 40 and no limit, as before", p, l)
	}
}

package restore

import (
	"runtime"
	"testing"
)

func TestUseAllCPUs(t *testing.T) {
	orig := runtime.GOMAXPROCS(1)
	defer runtime.GOMAXPROCS(orig)
	want := max(runtime.NumCPU(), 1)

	a := useAllCPUs()
	if got := runtime.GOMAXPROCS(0); got != want {
		t.Fatalf("during a pull: GOMAXPROCS %d, want %d", got, want)
	}
	b := useAllCPUs()
	a()
	a() // twice: counted once
	if got := runtime.GOMAXPROCS(0); got != want {
		t.Fatalf("one of two pulls done: GOMAXPROCS %d, want %d", got, want)
	}
	b()
	if got := runtime.GOMAXPROCS(0); got != 1 {
		t.Fatalf("after the pulls: GOMAXPROCS %d, want 1", got)
	}
}

package restore

import (
	"runtime"
	"testing"
)

func TestPullCPUs(t *testing.T) {
	want := runtime.NumCPU()
	for _, before := range []int{1, want + 3} {
		orig := runtime.GOMAXPROCS(before)
		a := pullCPUs()
		if got := runtime.GOMAXPROCS(0); got != want {
			t.Fatalf("GOMAXPROCS %d before, %d during a pull; want %d", before, got, want)
		}
		b := pullCPUs()
		a()
		a() // twice: counted once
		if got := runtime.GOMAXPROCS(0); got != want {
			t.Fatalf("one of two pulls done: GOMAXPROCS %d, want %d", got, want)
		}
		b()
		if got := runtime.GOMAXPROCS(0); got != before {
			t.Fatalf("after the pulls: GOMAXPROCS %d, want %d as before", got, before)
		}
		runtime.GOMAXPROCS(orig)
	}
}

package restore

import (
	"runtime"
	"testing"
)

func TestPullCPUs(t *testing.T) {
	want := runtime.NumCPU()
	for _, before := range []int{1, want + 3} {
		orig := runtime.GOMAXPROCS(before)
		a := pullCPUs(0)
		if got := runtime.GOMAXPROCS(0); got != want {
			t.Fatalf("GOMAXPROCS %d before, %d during a pull; want %d", before, got, want)
		}
		b := pullCPUs(0)
		c := pullCPUs(2) // a streamed pull: two decoders at a lower priority
		if got := runtime.GOMAXPROCS(0); got != want+2 {
			t.Fatalf("during a streamed pull: GOMAXPROCS %d, want %d", got, want+2)
		}
		c()
		a()
		a() // twice: counted once
		if got := runtime.GOMAXPROCS(0); got != want+2 {
			t.Fatalf("two of three pulls done: GOMAXPROCS %d, want the largest setting, %d", got, want+2)
		}
		b()
		if got := runtime.GOMAXPROCS(0); got != before {
			t.Fatalf("after the pulls: GOMAXPROCS %d, want %d as before", got, before)
		}
		runtime.GOMAXPROCS(orig)
	}
}

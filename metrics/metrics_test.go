package metrics

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestRecordAndRender(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 20; i++ { // concurrent shims
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if i%4 == 0 {
				s.RecordFallback("policy")
				return
			}
			s.RecordRestore(Restore{PulledBytes: 100, Pull: 300 * time.Millisecond, Unpack: 70 * time.Millisecond, Restore: 2 * time.Second, Total: 3 * time.Second})
		}(i)
	}
	wg.Wait()
	s.RecordRestore(Restore{Cached: true, Restore: 40 * time.Millisecond, Total: 40 * time.Millisecond})
	s.RecordEvictions(2)
	st, err := s.Read()
	if err != nil {
		t.Fatal(err)
	}
	if st.Restores != 16 || st.Fallbacks["policy"] != 5 || st.PulledBytes != 1500 || st.CacheHits != 1 || st.Evictions != 2 {
		t.Fatalf("state %+v", st)
	}
	var b strings.Builder
	if err := WritePrometheus(&b, st); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"snapboot_restores_total 16\n",
		`snapboot_fallbacks_total{reason="policy"} 5`,
		`snapboot_restore_duration_seconds_bucket{stage="pull",le="0.5"} 15`,
		`snapboot_restore_duration_seconds_bucket{stage="pull",le="0.25"} 0`,
		`snapboot_restore_duration_seconds_count{stage="total"} 16`,
		`snapboot_restore_duration_seconds_bucket{stage="restore",le="0.05"} 1`,
		`snapboot_restore_duration_seconds_bucket{stage="total",le="+Inf"} 16`,
		"snapboot_cache_evictions_total 2\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
}

// A lock on the metrics file held by someone else costs a record, not a
// restore: update gives up after lockWait instead of waiting for ever. The
// lock file is the owner's alone, and a symbolic link in its place is not
// followed.
func TestLockHeldElsewhere(t *testing.T) {
	prev := lockWait
	lockWait = 100 * time.Millisecond
	t.Cleanup(func() { lockWait = prev })
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RecordFallback("pull"); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "snapboot-metrics.json.lock"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file: %v, %v; want mode 0600", fi, err)
	}
	holder, err := os.Open(filepath.Join(dir, "snapboot-metrics.json.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	if err := unix.Flock(int(holder.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.RecordFallback("pull") }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("recorded while another held the lock")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("update waited for a lock held elsewhere")
	}
	holder.Close()
	st, _ := s.Read()
	if st.Fallbacks["pull"] != 1 {
		t.Fatalf("fallbacks %v, want the first one only", st.Fallbacks)
	}
	// A link where the lock goes.
	other := filepath.Join(t.TempDir(), "victim")
	os.Remove(filepath.Join(dir, "snapboot-metrics.json.lock"))
	if err := os.Symlink(other, filepath.Join(dir, "snapboot-metrics.json.lock")); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordFallback("pull"); err == nil {
		t.Fatal("recorded through a symbolic link")
	}
	if _, err := os.Lstat(other); !os.IsNotExist(err) {
		t.Fatalf("the link's target was made: %v", err)
	}
}

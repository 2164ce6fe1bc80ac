package metrics

import (
	"strings"
	"sync"
	"testing"
	"time"
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

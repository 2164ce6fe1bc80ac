// Package metrics keeps snapboot's node-wide restore metrics: counters and
// duration histograms in one JSON file that every shim updates under a file
// lock (shims come and go with their containers; the numbers must not), and
// their Prometheus text rendering for `snapboot metrics`.
package metrics

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Buckets of the duration histograms, in seconds.
var Buckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}

// Stages of a restore, the label of the duration histogram.
const (
	StagePull    = "pull"
	StageUnpack  = "unpack"
	StageRestore = "restore"
	StageTotal   = "total"
)

// State is the content of the metrics file.
type State struct {
	Restores     uint64               `json:"restores"`
	Fallbacks    map[string]uint64    `json:"fallbacks"` // by reason kind
	PulledBytes  uint64               `json:"pulledBytes"`
	CacheHits    uint64               `json:"cacheHits"`
	Evictions    uint64               `json:"evictions"`
	Durations    map[string]Histogram `json:"durations"` // by stage
	LastModified time.Time            `json:"lastModified"`
}

// Histogram is a cumulative Prometheus histogram.
type Histogram struct {
	Counts []uint64 `json:"counts"` // per bucket, cumulative
	Count  uint64   `json:"count"`
	Sum    float64  `json:"sum"`
}

func (h *Histogram) observe(v float64) {
	if len(h.Counts) != len(Buckets) {
		h.Counts = make([]uint64, len(Buckets))
	}
	for i, b := range Buckets {
		if v <= b {
			h.Counts[i]++
		}
	}
	h.Count++
	h.Sum += v
}

// Restore is one successful restore.
type Restore struct {
	Cached      bool
	PulledBytes int64
	Pull        time.Duration
	Unpack      time.Duration
	Restore     time.Duration
	Total       time.Duration
}

// Store is the metrics file of a node.
type Store struct{ path string }

// Open returns the store in dir (created if needed).
func Open(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("metrics dir: %w", err)
	}
	return &Store{path: filepath.Join(dir, "snapboot-metrics.json")}, nil
}

// lockWait is how long update waits for the metrics file's lock. Restores
// record their metrics on the way (Create, Start): a lock held for longer
// (by a process that should not hold it) costs a record, not a start.
var lockWait = time.Second

// update applies f to the state under an exclusive lock. The lock file is
// the owner's alone and no symbolic link; the state is written to a new
// file and renamed into place, so no name in the directory is followed.
func (s *Store) update(f func(*State)) error {
	fd, err := os.OpenFile(s.path+".lock", os.O_CREATE|os.O_RDWR|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("metrics lock: %w", err)
	}
	defer fd.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(fd.Fd()), &st); err != nil {
		return fmt.Errorf("metrics lock: %w", err)
	}
	if int(st.Uid) != os.Geteuid() || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("metrics lock %s is not a file of this user's (owner %d)", fd.Name(), st.Uid)
	}
	if st.Mode&0o077 != 0 {
		if err := fd.Chmod(0o600); err != nil {
			return fmt.Errorf("metrics lock: %w", err)
		}
	}
	deadline := time.Now().Add(lockWait)
	for {
		err := unix.Flock(int(fd.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if err != unix.EWOULDBLOCK || time.Now().After(deadline) {
			return fmt.Errorf("metrics lock %s: held for more than %v: %w", fd.Name(), lockWait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	state, err := s.Read()
	if err != nil {
		return err
	}
	f(state)
	state.LastModified = time.Now().UTC()
	data, err := json.Marshal(state)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.path), ".snapboot-metrics-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // once renamed, nothing
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), s.path)
}

// Read returns the current state (empty when there is none yet).
func (s *Store) Read() (*State, error) {
	st := &State{Fallbacks: map[string]uint64{}, Durations: map[string]Histogram{}}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, st); err != nil {
		// A damaged file restarts the counters rather than stopping restores.
		return &State{Fallbacks: map[string]uint64{}, Durations: map[string]Histogram{}}, nil
	}
	if st.Fallbacks == nil {
		st.Fallbacks = map[string]uint64{}
	}
	if st.Durations == nil {
		st.Durations = map[string]Histogram{}
	}
	return st, nil
}

// RecordRestore counts a successful restore and its stage durations.
func (s *Store) RecordRestore(r Restore) error {
	return s.update(func(st *State) {
		st.Restores++
		if r.Cached {
			st.CacheHits++
		}
		if r.PulledBytes > 0 {
			st.PulledBytes += uint64(r.PulledBytes)
		}
		for stage, d := range map[string]time.Duration{StagePull: r.Pull, StageUnpack: r.Unpack, StageRestore: r.Restore, StageTotal: r.Total} {
			if stage != StageTotal && d == 0 {
				continue // a stage that did not run (a cached checkpoint)
			}
			h := st.Durations[stage]
			h.observe(d.Seconds())
			st.Durations[stage] = h
		}
	})
}

// RecordFallback counts a cold start instead of a restore, by reason kind.
func (s *Store) RecordFallback(kind string) error {
	return s.update(func(st *State) { st.Fallbacks[kind]++ })
}

// RecordEvictions counts checkpoints evicted from the cache.
func (s *Store) RecordEvictions(n int) error {
	if n == 0 {
		return nil
	}
	return s.update(func(st *State) { st.Evictions += uint64(n) })
}

// WritePrometheus renders the state in Prometheus text format.
func WritePrometheus(w io.Writer, st *State) error {
	var b strings.Builder
	fmt.Fprintf(&b, "# HELP snapboot_restores_total Containers restored from a checkpoint.\n# TYPE snapboot_restores_total counter\nsnapboot_restores_total %d\n", st.Restores)
	fmt.Fprintf(&b, "# HELP snapboot_fallbacks_total Containers that asked for a checkpoint and cold-started, by reason.\n# TYPE snapboot_fallbacks_total counter\n")
	kinds := make([]string, 0, len(st.Fallbacks))
	for k := range st.Fallbacks {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "snapboot_fallbacks_total{reason=%q} %d\n", k, st.Fallbacks[k])
	}
	fmt.Fprintf(&b, "# HELP snapboot_cache_hits_total Restores that downloaded nothing.\n# TYPE snapboot_cache_hits_total counter\nsnapboot_cache_hits_total %d\n", st.CacheHits)
	fmt.Fprintf(&b, "# HELP snapboot_pulled_bytes_total Checkpoint bytes downloaded from registries.\n# TYPE snapboot_pulled_bytes_total counter\nsnapboot_pulled_bytes_total %d\n", st.PulledBytes)
	fmt.Fprintf(&b, "# HELP snapboot_cache_evictions_total Checkpoints evicted from the node cache.\n# TYPE snapboot_cache_evictions_total counter\nsnapboot_cache_evictions_total %d\n", st.Evictions)
	fmt.Fprintf(&b, "# HELP snapboot_restore_duration_seconds Duration of the stages of successful restores.\n# TYPE snapboot_restore_duration_seconds histogram\n")
	for _, stage := range []string{StagePull, StageUnpack, StageRestore, StageTotal} {
		h, ok := st.Durations[stage]
		if !ok {
			continue
		}
		for i, le := range Buckets {
			var c uint64
			if i < len(h.Counts) {
				c = h.Counts[i]
			}
			fmt.Fprintf(&b, "snapboot_restore_duration_seconds_bucket{stage=%q,le=%q} %d\n", stage, fmt.Sprint(le), c)
		}
		fmt.Fprintf(&b, "snapboot_restore_duration_seconds_bucket{stage=%q,le=\"+Inf\"} %d\n", stage, h.Count)
		fmt.Fprintf(&b, "snapboot_restore_duration_seconds_sum{stage=%q} %g\n", stage, h.Sum)
		fmt.Fprintf(&b, "snapboot_restore_duration_seconds_count{stage=%q} %d\n", stage, h.Count)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

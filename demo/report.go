package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/docker/go-units"
)

// human spells a size in binary units ("53.5MiB").
func human(n int64) string { return units.BytesSize(float64(n)) }

type stat struct{ Median, Min, Max float64 }

func stats(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{Median: med, Min: s[0], Max: s[len(s)-1]}
}

func (s stat) String() string {
	if s.Min == s.Max {
		return fmt.Sprintf("%.2f s", s.Median)
	}
	return fmt.Sprintf("%.2f s (%.2f–%.2f)", s.Median, s.Min, s.Max)
}

// printTable prints the demo's table, in the shape of the original experiment's.
func printTable(w io.Writer, r *results) {
	cold, rc, rw := stats(r.Cold), stats(r.RestoreCold), stats(r.RestoreWarm)
	var rss int64
	if len(r.RSSBytes) > 0 {
		rss = r.RSSBytes[0]
	}
	fmt.Fprintf(w, "\nsnapboot demo: Rails app with %d generated models, PostgreSQL on loopback (%s)\n\n", r.Models, r.Date.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "| figure | value |\n| --- | --- |\n")
	fmt.Fprintf(w, "| checkpoint size, raw | %s |\n", human(r.RawBytes))
	fmt.Fprintf(w, "| checkpoint size, compressed (zstd, the default level) | %s |\n", human(r.Compressed))
	if r.LZ4Compressed > 0 {
		fmt.Fprintf(w, "| checkpoint size, compressed with `--compression lz4` (packed in %s) | %s |\n", stats(r.LZ4Pack), human(r.LZ4Compressed))
	}
	fmt.Fprintf(w, "| RSS of the warm app | %s |\n", human(rss))
	fmt.Fprintf(w, "| dump (CRIU through containerd) | %s |\n", stats(r.Dump))
	fmt.Fprintf(w, "| pack (zstd frames, on every CPU) | %s |\n", stats(r.Pack))
	fmt.Fprintf(w, "| push time | %s |\n", stats(r.Push))
	fmt.Fprintf(w, "| pull time (shim, empty cache: the download, first request to last byte) | %s |\n", stats(r.Pull))
	fmt.Fprintf(w, "| of it before the runc restore began (the rest streams in during it) | %s |\n", stats(r.PullBeforeRestore))
	fmt.Fprintf(w, "| runc restore (CRIU), empty cache | %s |\n", stats(r.CRIU))
	fmt.Fprintf(w, "| cold start to first 200 | %s |\n", cold)
	fmt.Fprintf(w, "| restored start to first 200, empty cache | %s |\n", rc)
	fmt.Fprintf(w, "| restored start to first 200, warm cache | %s |\n", rw)
	if len(r.ShimPeakCold) > 0 {
		fmt.Fprintf(w, "| the shim's peak RSS, empty cache (with its cache fill after the restore) / warm cache | %s / %s |\n",
			humanMedian(r.ShimPeakCold), humanMedian(r.ShimPeakWarm))
	}
	if len(r.StreamStalls) > 0 {
		fmt.Fprintf(w, "| empty cache: one-second stalls of the stream / bytes spilled to disk, all runs | %d / %s |\n", sum(r.StreamStalls), human(sum(r.SpilledBytes)))
	}
	fmt.Fprintf(w, "| speed-up, empty cache | %s |\n", speedups(r.Cold, r.RestoreCold))
	fmt.Fprintf(w, "| speed-up, warm cache | %s |\n", speedups(r.Cold, r.RestoreWarm))
	if len(r.Floor) > 0 {
		fmt.Fprintf(w, "| floor: bare runc restore from local files, in the page cache (stock runc shim, containerd client) | %s |\n", stats(r.Floor))
		fmt.Fprintf(w, "| snapboot started the same way, empty cache | %s |\n", stats(r.ClientCold))
		fmt.Fprintf(w, "| snapboot started the same way, warm cache | %s |\n", stats(r.ClientWarm))
		if len(r.ClientColdWhole) > 0 {
			fmt.Fprintf(w, "| snapboot started the same way, empty cache, whole pull before the restore (`stream = false`) | %s |\n", stats(r.ClientColdWhole))
		}
		fmt.Fprintf(w, "| snapboot over the floor, empty cache | %s |\n", ratios(r.ClientCold, r.Floor))
		fmt.Fprintf(w, "| snapboot over the floor, warm cache | %s |\n", ratios(r.ClientWarm, r.Floor))
		if len(r.LZ4ClientCold) > 0 {
			fmt.Fprintf(w, "| snapboot started the same way, empty cache, the checkpoint packed with `--compression lz4` | %s |\n", stats(r.LZ4ClientCold))
			fmt.Fprintf(w, "| snapboot over the floor, empty cache, `--compression lz4` | %s |\n", ratios(r.LZ4ClientCold, r.Floor))
		}
		if len(r.LinkStreamed) > 0 {
			fmt.Fprintf(w, "| empty cache over a %d Mbit/s link to the registry: streamed / whole pull first | %s / %s |\n", r.LinkMbps, stats(r.LinkStreamed), stats(r.LinkWhole))
		}
		if len(r.LZ4LinkStreamed) > 0 {
			fmt.Fprintf(w, "| empty cache over a %d Mbit/s link to the registry, streamed, `--compression lz4` | %s |\n", r.LinkMbps, stats(r.LZ4LinkStreamed))
		}
		if len(r.FloorCPU) > 0 {
			fmt.Fprintf(w, "| CPU used on the machine (%d CPUs) during: the floor / snapboot warm / snapboot empty cache | %.2f / %.2f / %.2f CPU-s |\n",
				r.CPUs, stats(r.FloorCPU).Median, stats(r.ClientWarmCPU).Median, stats(r.ClientColdCPU).Median)
		}
		if len(r.LZ4ClientColdCPU) > 0 {
			fmt.Fprintf(w, "| CPU used on the machine during snapboot empty cache, `--compression lz4` | %.2f CPU-s |\n", stats(r.LZ4ClientColdCPU).Median)
		}
	}
	fmt.Fprintf(w, "\nThe first request to the restored app answered 200: %q\n", tail(r.FirstBody, 1))
}

// humanMedian is the median of sizes, with its range.
func humanMedian(v []int64) string {
	f := make([]float64, len(v))
	for i, n := range v {
		f[i] = float64(n)
	}
	s := stats(f)
	if s.Min == s.Max {
		return human(int64(s.Median))
	}
	return fmt.Sprintf("%s (%s–%s)", human(int64(s.Median)), human(int64(s.Min)), human(int64(s.Max)))
}

func sum[T int | int64](v []T) T {
	var t T
	for _, n := range v {
		t += n
	}
	return t
}

// speedups pairs each cold start with the restore of the same round and
// gives the median (min–max) of cold/restored.
func speedups(cold, restored []float64) string { return pairedRatios(cold, restored, 1) }

// ratios pairs a[i] with b[i] (measured moments apart) and gives the
// median (min–max) of a[i]/b[i].
func ratios(a, b []float64) string { return pairedRatios(a, b, 2) }

// pairedRatios is the median (min–max) of a[i]/b[i], with digits decimals.
func pairedRatios(a, b []float64, digits int) string {
	var q []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			q = append(q, a[i]/b[i])
		}
	}
	s := stats(q)
	if s.Min == s.Max {
		return fmt.Sprintf("%.*fx", digits, s.Median)
	}
	return fmt.Sprintf("%.*fx (%.*f–%.*f)", digits, s.Median, digits, s.Min, digits, s.Max)
}

func writeBench(dir string, r *results) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), data, 0o644); err != nil {
		return err
	}
	var md strings.Builder
	printTable(&md, r)
	fmt.Fprintf(&md, "\nMedian (min–max) of %d runs. Targets: restored vs cold at least 20x (empty cache) and 30x (warm cache); snapboot over the floor at most 1.5x (empty cache) and 1.15x (warm cache). Each speed-up pairs a round's cold start with that round's restore. The ratios over the floor pair each floor run with the snapboot runs just before it, both started through the containerd client; the rows above them start the app with `ctr run`, as a user would.\n", r.Runs)
	if err := os.WriteFile(filepath.Join(dir, "results.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	if err := writeChart(filepath.Join(dir, "results.png"), r); err != nil {
		return err
	}
	fmt.Print(md.String())
	return nil
}

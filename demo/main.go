package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	models   int
	runs     int
	bench    string // directory for results.json/.md; "" for the demo
	binDir   string
	cacheDir string
	keep     bool
	port     int
	warm     int
	quiet    bool
	// compare is another shim binary to compare with the one in binDir.
	compare string
	// compareCompression is how -compare-shim's checkpoint is packed.
	compareCompression string
	// compareLevels are two compression levels to compare, "a,b".
	compareLevels string
	// compareLink: -compare-shim's restores download through the link.
	compareLink bool
	// pumaWorkers > 0 runs the app in puma's cluster mode, the app loaded
	// before the workers fork: a process tree whose children share
	// memory with their parent.
	pumaWorkers int
}

func main() {
	var o options
	flag.IntVar(&o.models, "models", 3200, "size of the generated Rails app (models)")
	flag.IntVar(&o.runs, "runs", 1, "repetitions of every measurement")
	flag.StringVar(&o.bench, "bench", "", "write results.json and results.md into this directory, and measure the runc restore floor")
	flag.StringVar(&o.binDir, "bin", "bin", "directory with containerd-shim-snapboot-v1 and snapboot")
	flag.StringVar(&o.cacheDir, "cache", "/var/cache/snapboot-demo", "where the app image is built and cached")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.IntVar(&o.warm, "warm", 20, "warm-up requests before the checkpoint")
	flag.BoolVar(&o.quiet, "quiet", false, "no progress lines")
	flag.IntVar(&o.pumaWorkers, "puma-workers", 0, "run puma in cluster mode with this many workers, forked after the app is loaded (--preload), instead of single mode")
	flag.StringVar(&o.compare, "compare-shim", "", "instead of the demo, compare this shim binary with the one in -bin: empty and warm cache, the two alternating, -runs rounds, each with the floor")
	flag.StringVar(&o.compareCompression, "compression", "", "with -compare-shim: snapboot checkpoint --compression for the checkpoint both shims restore (default: the CLI's default)")
	flag.BoolVar(&o.compareLink, "compare-link", false, fmt.Sprintf("with -compare-shim: restore through the %d Mbit/s link to the registry, not loopback", linkMbps))
	flag.StringVar(&o.compareLevels, "compare-levels", "", "instead of the demo, compare restoring checkpoints packed at two compression levels (\"default,best\"), like -compare-shim")
	flag.Parse()
	port, err := freePort()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	o.port = port

	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	res, err := run(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
	if o.compare != "" || o.compareLevels != "" {
		return // the comparison printed its table
	}
	if o.bench == "" {
		printTable(os.Stdout, res)
		return
	}
	if err := writeBench(o.bench, res); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

// minColdStart is how long the demo app is meant to take to boot cold:
// a slow-booting app is what snapboot is for.
const minColdStart = 15 * time.Second

var say = func(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "==> "+format+"\n", args...)
}

// results of a demo or bench run; durations in seconds.
type results struct {
	Date        time.Time `json:"date"`
	Models      int       `json:"models"`
	Image       string    `json:"image"`
	Runs        int       `json:"runs"`
	RawBytes    int64     `json:"checkpointRawBytes"`
	Compressed  int64     `json:"checkpointCompressedBytes"`
	RSSBytes    []int64   `json:"rssBytes"`
	Dump        []float64 `json:"dumpSeconds"`
	Pack        []float64 `json:"packSeconds"`
	Push        []float64 `json:"pushSeconds"`
	Cold        []float64 `json:"coldStartSeconds"`
	RestoreCold []float64 `json:"restoredColdCacheSeconds"`
	RestoreWarm []float64 `json:"restoredWarmCacheSeconds"`
	// The shim's download of the checkpoint, cold cache: from its first
	// request to the last byte (the log line's pull_s + streamed_s). A
	// streamed restore downloads the page images while runc restores,
	// so most of it overlaps CRIU; PullBeforeRestore is the part before
	// the runc restore began (pull_s).
	Pull              []float64 `json:"pullSeconds"`
	PullBeforeRestore []float64 `json:"pullBeforeRestoreSeconds"`
	CRIU              []float64 `json:"runcRestoreSeconds"`
	Floor             []float64 `json:"floorSeconds,omitempty"` // bare runc restore from local disk
	// snapboot started exactly as the floor is (containerd client, not ctr)
	ClientCold []float64 `json:"snapbootByClientColdCacheSeconds,omitempty"`
	ClientWarm []float64 `json:"snapbootByClientWarmCacheSeconds,omitempty"`
	// CPU time used on the whole machine during those starts (CPU-seconds)
	FloorCPU      []float64 `json:"floorCPUSeconds,omitempty"`
	ClientColdCPU []float64 `json:"snapbootByClientColdCacheCPUSeconds,omitempty"`
	ClientWarmCPU []float64 `json:"snapbootByClientWarmCacheCPUSeconds,omitempty"`
	CPUs          int       `json:"cpus,omitempty"`
	// empty cache, through the client: the whole checkpoint pulled before
	// the restore ([pull] stream = false), and both ways over a link of
	// LinkMbps to the registry
	ClientColdWhole []float64 `json:"snapbootByClientColdCacheWholePullSeconds,omitempty"`
	LinkMbps        int       `json:"linkMbps,omitempty"`
	LinkStreamed    []float64 `json:"linkColdCacheStreamedSeconds,omitempty"`
	LinkWhole       []float64 `json:"linkColdCacheWholePullSeconds,omitempty"`
	// the same checkpoint packed with --compression lz4 (bench only):
	// its size and packing time, and the empty-cache start through the
	// client, on loopback (paired with the floor like ClientCold) and
	// over the link, streamed
	LZ4Compressed    int64     `json:"lz4CheckpointCompressedBytes,omitempty"`
	LZ4Pack          []float64 `json:"lz4PackSeconds,omitempty"`
	LZ4ClientCold    []float64 `json:"lz4SnapbootByClientColdCacheSeconds,omitempty"`
	LZ4ClientColdCPU []float64 `json:"lz4SnapbootByClientColdCacheCPUSeconds,omitempty"`
	LZ4LinkStreamed  []float64 `json:"lz4LinkColdCacheStreamedSeconds,omitempty"`
	FirstBody        string    `json:"firstRestoredResponse"`
	// The shim's peak resident memory (VmHWM) for each `ctr run` restore:
	// from the registry, once its cache fill is done too, and from the
	// cache. And what the restore's log line says of the stream: the
	// times the download went on past CRIU after a second without a read,
	// and the bytes it spilled to disk then.
	ShimPeakCold []int64 `json:"shimPeakRSSColdCacheBytes,omitempty"`
	ShimPeakWarm []int64 `json:"shimPeakRSSWarmCacheBytes,omitempty"`
	StreamStalls []int   `json:"streamStalls,omitempty"`
	SpilledBytes []int64 `json:"streamSpilledBytes,omitempty"`
}

func run(ctx context.Context, o options) (*results, error) {
	if o.quiet {
		say = func(string, ...any) {}
	}
	binDir, err := filepath.Abs(o.binDir)
	if err != nil {
		return nil, err
	}
	image := fmt.Sprintf("localhost/snapboot-demo/rails:%d", o.models)
	tarPath := filepath.Join(o.cacheDir, fmt.Sprintf("rails-%d.oci.tar", o.models))
	say("building the app image (%d models; cached in %s)", o.models, o.cacheDir)
	t := time.Now()
	build := exec.CommandContext(ctx, "bash", "demo/image/build.sh", "--models", strconv.Itoa(o.models), "--out", tarPath, "--name", image, "--cache-dir", o.cacheDir)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("build the app image: %w", err)
	}
	say("image ready in %.1fs", time.Since(t).Seconds())

	dir, err := os.MkdirTemp("/var/tmp", "snapboot-demo-")
	if err != nil {
		return nil, err
	}
	if o.keep {
		say("work directory %s is kept", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	stackBin := binDir
	if o.compare != "" {
		// The stack's containerd finds the shim in a directory of its own,
		// where the two binaries take turns.
		if stackBin, err = compareBinDir(dir, binDir); err != nil {
			return nil, err
		}
	}
	say("starting PostgreSQL, a registry and containerd on this machine")
	s, err := newStack(dir, stackBin)
	if err != nil {
		return nil, err
	}
	defer s.stop()
	if _, err := s.ctr(ctx, "images", "import", tarPath); err != nil {
		return nil, err
	}
	regImage := s.registryAddr + "/demo/rails:" + strconv.Itoa(o.models)
	if _, err := s.ctr(ctx, "images", "tag", image, regImage); err != nil {
		return nil, err
	}
	say("pushing the app image to the registry as %s", regImage)
	if _, err := s.ctr(ctx, "images", "push", "--plain-http", regImage); err != nil {
		return nil, err
	}

	d := &demo{s: s, o: o, image: regImage, url: fmt.Sprintf("http://127.0.0.1:%d/", o.port)}
	defer d.cleanup()
	switch {
	case o.compare != "":
		return nil, d.compareShims(ctx, filepath.Join(binDir, shimBinary), o.compare)
	case o.compareLevels != "":
		levels := strings.Split(o.compareLevels, ",")
		if len(levels) != 2 {
			return nil, fmt.Errorf("-compare-levels wants two levels, a,b; got %q", o.compareLevels)
		}
		return nil, d.compareLevels(ctx, levels)
	}
	return d.measure(ctx)
}

type demo struct {
	s     *stack
	o     options
	image string
	url   string
	ids   []string
	n     int
}

func (d *demo) cleanup() {
	for _, id := range d.ids {
		d.s.removeContainer(context.Background(), id)
	}
}

func (d *demo) newID(kind string) string {
	d.n++
	id := fmt.Sprintf("%s-%d", kind, d.n)
	d.ids = append(d.ids, id)
	return id
}

// runContainer starts the app in a new container and returns the time to
// its first HTTP 200 and the body of that answer.
func (d *demo) runContainer(ctx context.Context, id string, annotations ...string) (time.Duration, string, error) {
	args := []string{"run", "-d", "--net-host", "--runtime", "io.containerd.snapboot.v1",
		"--log-uri", "file://" + filepath.Join(d.s.dir, "logs", id+".log"),
		"--env", "DATABASE_URL=" + d.s.databaseURL(), "--env", fmt.Sprintf("PORT=%d", d.o.port)}
	for _, a := range annotations {
		args = append(args, "--annotation", a)
	}
	args = append(args, d.image, id)
	if d.o.pumaWorkers > 0 {
		args = append(args, "/usr/bin/puma", "-C", "/app/config/puma.rb", "--workers", strconv.Itoa(d.o.pumaWorkers), "--preload")
	}
	// A clean node has no writeback pending from what ran before (the
	// donor's dump and push): flush it, so it does not slow the measurement.
	syscall.Sync()
	began := time.Now()
	if _, err := d.s.ctr(ctx, args...); err != nil {
		return 0, "", err
	}
	body, err := waitHTTP(ctx, d.url, 15*time.Minute)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(d.s.dir, "logs", id+".log"))
		return 0, "", fmt.Errorf("%s: %w\n%s", id, err, tail(string(log), 20))
	}
	return time.Since(began), body, nil
}

func waitHTTP(ctx context.Context, url string, timeout time.Duration) (string, error) {
	// A connection of its own for every try, as a new client would open:
	// a pooled connection to an earlier container of the app (the same
	// host port) is one the restored app may know nothing of, and a
	// request sent on it waited for the timeout (seen restoring a
	// --leave-running checkpoint whose donor had since been dumped
	// with --exit: its sockets vanish without a FIN).
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return strings.TrimSpace(string(body)), nil
			}
			err = fmt.Errorf("%s answered %d: %s", url, resp.StatusCode, tail(string(body), 5))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return "", fmt.Errorf("no 200 from %s: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rss sums the resident memory of the container's processes.
func (d *demo) rss(ctx context.Context, id string) int64 {
	out, err := d.s.ctr(ctx, "task", "ps", id)
	if err != nil {
		return 0
	}
	var total int64
	for _, l := range strings.Split(out, "\n")[1:] {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		status, err := os.ReadFile("/proc/" + f[0] + "/status")
		if err != nil {
			continue
		}
		for _, sl := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(sl, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				total += kb * 1024
			}
		}
	}
	return total
}

// shimPeakRSS is the peak resident memory (VmHWM) of container id's
// snapboot shim (the one whose arguments name it), or 0 if there is none.
func shimPeakRSS(id string) int64 {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	var peak int64
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if filepath.Base(args[0]) != "containerd-shim-snapboot-v1" || !slices.Contains(args, id) {
			continue
		}
		status, err := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				peak = max(peak, kb*1024)
			}
		}
	}
	return peak
}

// cacheRestoreTimings reads the shim's log line for a restored container,
// a restore that was to find the checkpoint in the node cache (cached) or
// not: the line's cached= field must say so, or the run did not measure
// what it is reported as.
func (d *demo) cacheRestoreTimings(id string, cached bool) (map[string]float64, error) {
	line, err := d.restoreLine(id)
	if err != nil {
		return nil, err
	}
	if err := checkCached(line, cached); err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	return restoreLineTimings(line), nil
}

// restoreLine is the shim's log line for the restore of container id.
func (d *demo) restoreLine(id string) (string, error) {
	data, err := os.ReadFile(d.s.logPath)
	if err != nil {
		return "", err
	}
	return findRestoreLine(string(data), id)
}

// findRestoreLine finds the restore log line of container id in log; it
// fails with the fallback's line if the container was cold-started instead.
func findRestoreLine(log, id string) (string, error) {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "event=snapboot.restore") && strings.Contains(l, "id="+id+" ") {
			return l, nil
		}
	}
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "event=snapboot.fallback") && strings.Contains(l, "id="+id+" ") {
			return "", fmt.Errorf("%s was not restored: %s", id, l)
		}
	}
	return "", fmt.Errorf("no restore log line for %s", id)
}

// restoreLineTimings is the durations, in seconds, of a restore log line.
func restoreLineTimings(line string) map[string]float64 {
	out := map[string]float64{}
	for _, k := range []string{"resolve_s", "pull_s", "streamed_s", "unpack_s", "restore_s", "total_s", "stalls", "spilled_bytes"} {
		if m := regexp.MustCompile(k + `=([0-9.e-]+)`).FindStringSubmatch(line); m != nil {
			out[k], _ = strconv.ParseFloat(m[1], 64)
		}
	}
	return out
}

// cachedField matches the cached= field of a restore log line: whether the
// shim found the checkpoint in the node cache.
var cachedField = regexp.MustCompile(`(?:^|\s)cached=(\S*)`)

// checkCached fails unless the restore log line's cached= field is want.
func checkCached(line string, want bool) error {
	m := cachedField.FindStringSubmatch(line)
	if m == nil {
		return fmt.Errorf("the restore log line has no cached= field: %s", line)
	}
	if m[1] != strconv.FormatBool(want) {
		return fmt.Errorf("restored with cached=%s, want cached=%t: %s", m[1], want, line)
	}
	return nil
}

func (d *demo) measure(ctx context.Context) (*results, error) {
	r := &results{Date: time.Now().UTC(), Models: d.o.models, Image: d.image, Runs: d.o.runs, CPUs: runtime.NumCPU()}
	ref := d.s.registryAddr + "/demo/rails:checkpoint"
	lz4Ref := d.s.registryAddr + "/demo/rails:checkpoint-lz4"
	// Each round: a cold start, then the restores from an empty and from a
	// warm cache, so that each speed-up pairs measurements minutes apart,
	// not a batch of cold starts with a later batch of restores (the cold
	// start, on one CPU, moves with the machine's load). The first
	// round's cold start is the donor of the checkpoint.
	for i := 0; i < d.o.runs; i++ {
		say("run %d/%d: cold start of the app", i+1, d.o.runs)
		donor := d.newID("cold")
		cold, _, err := d.runContainer(ctx, donor)
		if err != nil {
			return nil, err
		}
		r.Cold = append(r.Cold, cold.Seconds())
		say("cold start to first 200: %.2fs", cold.Seconds())
		if cold < minColdStart {
			// Even with -quiet: the app no longer shows what it is for.
			fmt.Fprintf(os.Stderr, "warning: the cold start took %.2fs, under the %v the demo app is sized for: make it larger with -models (make DEMO_MODELS=...), now %d\n",
				cold.Seconds(), minColdStart, d.o.models)
		}
		if i == 0 {
			r.RSSBytes = append(r.RSSBytes, d.rss(ctx, donor))
			if d.o.bench != "" {
				// The same donor packed with LZ4 as well, first: the default
				// checkpoint is the one taken with --exit, as in the demo.
				ck, err := d.checkpoint(ctx, donor, lz4Ref, "--leave-running", "--compression", "lz4")
				if err != nil {
					return nil, err
				}
				r.LZ4Compressed, r.LZ4Pack = ck.CompressedBytes, append(r.LZ4Pack, ck.PackSeconds)
			}
			ck, err := d.checkpoint(ctx, donor, ref, "--exit")
			if err != nil {
				return nil, err
			}
			r.RawBytes, r.Compressed = ck.RawBytes, ck.CompressedBytes
			r.Dump, r.Pack, r.Push = append(r.Dump, ck.DumpSeconds), append(r.Pack, ck.PackSeconds), append(r.Push, ck.PushSeconds)
		}
		d.s.removeContainer(ctx, donor)
		time.Sleep(time.Second) // its shim exits before the restore

		say("run %d/%d: clean node (no donor, empty snapboot cache), restore from the registry", i+1, d.o.runs)
		if _, err := d.s.snapboot(ctx, "cache", "prune", "--all"); err != nil {
			return nil, err
		}
		id := d.newID("restored-cold-cache")
		t, body, err := d.runContainer(ctx, id, "snapboot.dev/checkpoint="+ref)
		if err != nil {
			return nil, err
		}
		tm, err := d.cacheRestoreTimings(id, false)
		if err != nil {
			return nil, err
		}
		r.RestoreCold = append(r.RestoreCold, t.Seconds())
		r.Pull = append(r.Pull, tm["pull_s"]+tm["streamed_s"])
		r.PullBeforeRestore, r.CRIU = append(r.PullBeforeRestore, tm["pull_s"]), append(r.CRIU, tm["restore_s"])
		r.FirstBody = body
		r.StreamStalls = append(r.StreamStalls, int(tm["stalls"]))
		r.SpilledBytes = append(r.SpilledBytes, int64(tm["spilled_bytes"]))
		say("restored (cold cache) to first 200: %.2fs (download %.2fs: %.2fs before the runc restore, the rest during its %.2fs; %d stalls, %s spilled); it answered %q",
			t.Seconds(), tm["pull_s"]+tm["streamed_s"], tm["pull_s"], tm["restore_s"], int(tm["stalls"]), human(int64(tm["spilled_bytes"])), tail(body, 1))
		// Removed once its restore has filled the cache (see
		// snapbootByClient).
		if err := d.waitCached(ctx, ref); err != nil {
			return nil, err
		}
		r.ShimPeakCold = append(r.ShimPeakCold, shimPeakRSS(id))
		d.s.removeContainer(ctx, id)
		time.Sleep(time.Second) // its shim exits before the warm start

		say("run %d/%d: restore again, cache warm", i+1, d.o.runs)
		id = d.newID("restored-warm-cache")
		t, _, err = d.runContainer(ctx, id, "snapboot.dev/checkpoint="+ref)
		if err != nil {
			return nil, err
		}
		if _, err := d.cacheRestoreTimings(id, true); err != nil {
			return nil, err
		}
		r.RestoreWarm = append(r.RestoreWarm, t.Seconds())
		r.ShimPeakWarm = append(r.ShimPeakWarm, shimPeakRSS(id))
		say("restored (warm cache) to first 200: %.2fs", t.Seconds())
		d.s.removeContainer(ctx, id)
		time.Sleep(time.Second) // its shim exits before what comes next
	}
	if d.o.bench != "" {
		// A floor start not counted: the stock runc shim's first start in
		// this stack reads its binary from disk.
		say("the floor once, not counted (the stock runc shim's first start)")
		if _, _, err := d.floor(ctx, ref); err != nil {
			return nil, err
		}
		// The floor against snapboot started the same way, run by run, so
		// that each ratio pairs measurements taken moments apart.
		for i := 0; i < d.o.runs; i++ {
			say("run %d/%d: snapboot through the containerd client, empty cache, then warm", i+1, d.o.runs)
			empty, emptyCPU, err := d.emptyCacheStart(ctx, "client-cold-cache", ref, "")
			if err != nil {
				return nil, err
			}
			warm, warmCPU, err := d.snapbootByClient(ctx, "client-warm-cache", ref, "", true)
			if err != nil {
				return nil, err
			}
			say("run %d/%d: the floor, a bare runc restore of the same images from local disk", i+1, d.o.runs)
			t, floorCPU, err := d.floor(ctx, ref)
			if err != nil {
				return nil, err
			}
			r.ClientCold, r.ClientWarm = append(r.ClientCold, empty.Seconds()), append(r.ClientWarm, warm.Seconds())
			r.Floor = append(r.Floor, t.Seconds())
			r.ClientColdCPU, r.ClientWarmCPU = append(r.ClientColdCPU, emptyCPU), append(r.ClientWarmCPU, warmCPU)
			r.FloorCPU = append(r.FloorCPU, floorCPU)
			say("to first 200: snapboot %.2fs (empty cache), %.2fs (warm cache); runc restore floor %.2fs", empty.Seconds(), warm.Seconds(), t.Seconds())

			// Right after the floor, as the default checkpoint's empty
			// cache start came right before it.
			lz4, lz4CPU, err := d.emptyCacheStart(ctx, "client-cold-cache-lz4", lz4Ref, "")
			if err != nil {
				return nil, err
			}
			r.LZ4ClientCold, r.LZ4ClientColdCPU = append(r.LZ4ClientCold, lz4.Seconds()), append(r.LZ4ClientColdCPU, lz4CPU)
			say("to first 200, empty cache, the checkpoint packed with --compression lz4: %.2fs", lz4.Seconds())

			// The empty-cache restore without streaming, and both over a
			// link to the registry that is not loopback.
			linkRef := d.s.link.addr() + "/demo/rails:checkpoint"
			linkLZ4Ref := d.s.link.addr() + "/demo/rails:checkpoint-lz4"
			for _, m := range []struct {
				what, kind, ref, config string
				into                    *[]float64
			}{
				{"whole pull before the restore", "client-cold-cache-whole", ref, d.s.wholeConfigPath, &r.ClientColdWhole},
				{fmt.Sprintf("over a %d Mbit/s link, streamed", linkMbps), "link-streamed", linkRef, "", &r.LinkStreamed},
				{fmt.Sprintf("over a %d Mbit/s link, whole pull before the restore", linkMbps), "link-whole", linkRef, d.s.wholeConfigPath, &r.LinkWhole},
				{fmt.Sprintf("over a %d Mbit/s link, streamed, the checkpoint packed with --compression lz4", linkMbps), "link-streamed-lz4", linkLZ4Ref, "", &r.LZ4LinkStreamed},
			} {
				t, _, err := d.emptyCacheStart(ctx, m.kind, m.ref, m.config)
				if err != nil {
					return nil, err
				}
				*m.into = append(*m.into, t.Seconds())
				say("to first 200, empty cache, %s: %.2fs", m.what, t.Seconds())
			}
			r.LinkMbps = linkMbps
		}
	}
	return r, nil
}

// emptyCacheStart empties the node cache and starts the app from ref as
// snapbootByClient does, which waits until the restore has filled the
// cache again (so that what comes next does not compete with the fill).
func (d *demo) emptyCacheStart(ctx context.Context, kind, ref, config string) (time.Duration, float64, error) {
	if _, err := d.s.snapboot(ctx, "cache", "prune", "--all"); err != nil {
		return 0, 0, err
	}
	return d.snapbootByClient(ctx, kind, ref, config, false)
}

// checkpointStats is what snapboot checkpoint --json reports.
type checkpointStats struct {
	RawBytes, CompressedBytes             int64
	DumpSeconds, PackSeconds, PushSeconds float64
}

// checkpoint checkpoints the running donor into ref with snapboot
// checkpoint.
func (d *demo) checkpoint(ctx context.Context, donor, ref string, flags ...string) (*checkpointStats, error) {
	say("checkpointing it with snapboot checkpoint %s (after %d warm-up requests)", strings.Join(flags, " "), d.o.warm)
	args := append([]string{"checkpoint", "--json", "--wait-http", d.url, "--warm", strconv.Itoa(d.o.warm)}, flags...)
	out, err := d.s.snapboot(ctx, append(args, donor, ref)...)
	if err != nil {
		return nil, err
	}
	var ck checkpointStats
	if err := json.Unmarshal([]byte(out), &ck); err != nil {
		return nil, fmt.Errorf("snapboot checkpoint output: %w: %s", err, out)
	}
	say("checkpoint: %s raw, %s compressed; dump %.2fs, pack %.2fs, push %.2fs", human(ck.RawBytes), human(ck.CompressedBytes), ck.DumpSeconds, ck.PackSeconds, ck.PushSeconds)
	return &ck, nil
}

// waitCached waits until the checkpoint is unpacked in the node cache: a
// streamed restore fills the cache in the background after the restore,
// and a warm-cache measurement must not wait for it.
func (d *demo) waitCached(ctx context.Context, ref string) error {
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := d.s.snapboot(ctx, "inspect", "--json", ref)
		if err != nil {
			return err
		}
		var in struct{ Cached bool }
		if err := json.Unmarshal([]byte(out), &in); err != nil {
			return fmt.Errorf("snapboot inspect --json: %w: %s", err, out)
		}
		if in.Cached {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is still not in the node cache 2 minutes after its restore", ref)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

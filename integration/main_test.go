//go:build integration && linux

// Package integration runs snapboot end to end against real tools: a private
// containerd (v2), runc, CRIU, a distribution registry and the oras CLI.
//
// TestMain stands up the whole environment once for every test in the
// package, under one temporary directory (tmpDir):
//
//   - the snapboot shim, built from ./cmd/containerd-shim-snapboot-v1 (or
//     copied from $SNAPBOOT_SHIM_BIN) into tmpDir/bin, which is first in
//     containerd's PATH so runtime io.containerd.snapboot.v1 resolves to it;
//   - a registry on 127.0.0.1 (registryAddr), storage under tmpDir;
//   - the node config tmpDir/snapboot.toml, passed as $SNAPBOOT_CONFIG to
//     containerd and so to every shim it starts;
//   - a containerd with its own root, state and socket (containerdAddr),
//     debug logging into tmpDir/containerd.log (shim logs land there too);
//   - a busybox image (busyboxImage), built by hand from Debian's
//     busybox-static and imported into namespace `namespace`.
//
// Run it as root:
//
//	go test -tags integration -count=1 -v ./integration/
//
// Environment:
//
//	SNAPBOOT_SHIM_BIN=/path   use this shim binary instead of building one
//	SNAPBOOT_IT_KEEP=1        keep tmpDir (logs, CRIU images) after the run
//	SNAPBOOT_IT_SKIP_SHIM=1   if the shim does not build, skip (instead of
//	                          fail) the cases that need it (see requireShim)
package integration

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	// namespace is the containerd namespace every test works in.
	namespace = "snapboot-it"
	// busyboxImage is the image imported at setup: busybox-static with a
	// /bin symlink for every applet, Cmd ["/bin/sh"], PATH set.
	busyboxImage = "localhost/snapboot-it/busybox:1"
	// runcRuntime is containerd's stock runc shim.
	runcRuntime = "io.containerd.runc.v2"
	// snapbootRuntime is the runtime type of the shim under test.
	snapbootRuntime = "io.containerd.snapboot.v1"
	// shimBinaryName is what containerd looks up on its PATH for snapbootRuntime.
	shimBinaryName = "containerd-shim-snapboot-v1"
	// cliBinaryName is the snapboot CLI, installed next to the shim.
	cliBinaryName = "snapboot"
)

// Set up by TestMain; read-only for tests.
var (
	// tmpDir holds everything this run writes (removed at the end unless
	// SNAPBOOT_IT_KEEP=1).
	tmpDir string
	// runToken is tmpDir's random suffix. It is part of every uniqueID, so
	// two runs of this package on one machine never share container IDs
	// (runc state and cgroup paths are per namespace, not per containerd).
	runToken string
	// binDir is first on containerd's PATH; it holds the snapboot shim.
	binDir string
	// containerdAddr is the gRPC socket of the test containerd.
	containerdAddr string
	// containerdLogPath is containerd's stdout+stderr (with shim logs).
	containerdLogPath string
	// registryAddr is the registry's host:port, e.g. "127.0.0.1:41234".
	registryAddr string
	// registryLogPath is the registry's stdout+stderr, appended across restarts.
	registryLogPath string
	// snapbootConfigPath is the node config the shim reads ($SNAPBOOT_CONFIG).
	snapbootConfigPath string
	// snapbootCacheDir is [cache] root in that config.
	snapbootCacheDir string
	// fifoDir is a directory for ctr's stdio FIFOs; pass `--fifo-dir fifoDir`
	// to attached `ctr run` and `ctr task exec` (the default is
	// /run/containerd/fifo, outside tmpDir).
	fifoDir string
	// logsDir is where runDetached puts container logs by default.
	logsDir string
	// moduleRoot is the directory of snapboot's go.mod.
	moduleRoot string

	// shimErr is nil when tmpDir/bin/containerd-shim-snapboot-v1 is usable;
	// otherwise it says why not (build output included). See requireShim.
	shimErr error
)

var (
	containerdProc *bgProc

	registryMu   sync.Mutex
	registryProc *bgProc
	registryConf string

	// preexisting records which shared host paths existed before setup; the
	// teardown removes only the empty ones it created.
	preexisting = map[string]bool{}

	teardownOnce sync.Once
	// tornDown is set when the teardown starts; ctr helpers then fail fast.
	tornDown atomic.Bool
	// teardownLeaks is what the teardown found that the tests had left
	// behind (containers, processes, mounts), one description each. A run
	// whose tests all passed fails if there is any.
	teardownLeaks []string
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) (code int) {
	start := time.Now()
	if err := checkPrerequisites(); err != nil {
		fmt.Fprintf(os.Stderr, "\nsnapboot integration tests cannot run: %v\n\n", err)
		return 1
	}
	if err := setup(); err != nil {
		fmt.Fprintf(os.Stderr, "\nsnapboot integration setup failed: %v\n", err)
		teardown()
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "\nsnapboot-it: got %v, tearing down\n", s)
		teardown()
		os.Exit(130)
	}()
	fmt.Fprintf(os.Stderr, "snapboot-it: environment ready in %v\n", time.Since(start).Round(time.Millisecond))

	// `go test -timeout` ends the process with a panic that skips every
	// deferred teardown; tear down shortly before it instead. (A panicking
	// test also kills the process: containerd and the registry then die of
	// their parent-death signal, but shims and containers are left.)
	flag.Parse()
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			margin := min(max(d/5, 2*time.Second), 15*time.Second)
			timer := time.AfterFunc(max(d-margin, d/2), func() {
				fmt.Fprintf(os.Stderr, "\nsnapboot-it: -test.timeout (%v) is near, tearing down now\n", d)
				teardown()
			})
			defer timer.Stop()
		}
	}
	code = m.Run()
	signal.Stop(sigs)
	teardown()
	if code == 0 && len(teardownLeaks) > 0 {
		fmt.Fprintf(os.Stderr, "\nFAIL: snapboot-it: every test passed, but they left %d thing(s) behind for the teardown to remove (\"left behind\" above): a test does not clean up after itself\n",
			len(teardownLeaks))
		return 1
	}
	return code
}

// checkPrerequisites fails (it never skips) when the tests cannot run here.
func checkPrerequisites() error {
	var problems []string
	if os.Geteuid() != 0 {
		problems = append(problems, "must run as root (containerd, runc and CRIU need it)")
	}
	var missing []string
	for _, tool := range []string{"containerd", "ctr", "runc", "criu", "registry", "oras", "nerdctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		problems = append(problems, fmt.Sprintf("missing from PATH: %s (run `bash hack/install-deps.sh` as root)", strings.Join(missing, ", ")))
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		problems = append(problems, "/bin/busybox is missing (Debian package busybox-static; hack/install-deps.sh installs it)")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

func setup() error {
	base := "/var/tmp"
	if fi, err := os.Stat(base); err != nil || !fi.IsDir() {
		base = os.TempDir()
	}
	dir, err := os.MkdirTemp(base, "snapboot-it-")
	if err != nil {
		return err
	}
	tmpDir = dir
	runToken = strings.TrimPrefix(filepath.Base(dir), "snapboot-it-")
	binDir = filepath.Join(tmpDir, "bin")
	fifoDir = filepath.Join(tmpDir, "fifo")
	logsDir = filepath.Join(tmpDir, "logs")
	snapbootCacheDir = filepath.Join(tmpDir, "cache")
	for _, d := range []string{binDir, fifoDir, logsDir, snapbootCacheDir, filepath.Join(tmpDir, "tmp"), filepath.Join(tmpDir, "work")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "snapboot-it: tmp dir %s\n", tmpDir)
	recordPreexisting()

	// The shim builds while the rest comes up: containerd only needs the
	// binary when a task is created.
	shimDone := make(chan struct{})
	defer func() { <-shimDone }() // also on errors: the teardown removes binDir
	go func() {
		defer close(shimDone)
		t0 := time.Now()
		shimErr = installShim()
		if shimErr == nil {
			fmt.Fprintf(os.Stderr, "snapboot-it: shim ready in %v\n", time.Since(t0).Round(time.Millisecond))
		}
	}()

	t0 := time.Now()
	if err := initRegistry(); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	fmt.Fprintf(os.Stderr, "snapboot-it: registry on %s in %v\n", registryAddr, time.Since(t0).Round(time.Millisecond))

	if err := writeSnapbootConfig(); err != nil {
		return err
	}

	t0 = time.Now()
	if err := startContainerd(); err != nil {
		return fmt.Errorf("containerd: %w", err)
	}
	fmt.Fprintf(os.Stderr, "snapboot-it: containerd on %s in %v\n", containerdAddr, time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	if err := importBusybox(); err != nil {
		return fmt.Errorf("busybox image: %w", err)
	}
	fmt.Fprintf(os.Stderr, "snapboot-it: imported %s in %v\n", busyboxImage, time.Since(t0).Round(time.Millisecond))

	<-shimDone
	if shimErr != nil {
		fmt.Fprintf(os.Stderr, "\n*** snapboot-it: the snapboot shim is NOT available; tests needing %s will %s:\n%v\n\n",
			snapbootRuntime, map[bool]string{true: "be skipped (SNAPBOOT_IT_SKIP_SHIM=1)", false: "FAIL"}[os.Getenv("SNAPBOOT_IT_SKIP_SHIM") == "1"], shimErr)
	}
	return nil
}

// ---------------------------------------------------------------------------
// Shim

// installShim puts the snapboot shim and the snapboot CLI into binDir: copies
// of $SNAPBOOT_SHIM_BIN and $SNAPBOOT_CLI_BIN, or fresh `go build`s of
// ./cmd/containerd-shim-snapboot-v1 and ./cmd/snapboot.
func installShim() error {
	if err := installBinary(shimBinaryName, "SNAPBOOT_SHIM_BIN"); err != nil {
		return err
	}
	return installBinary(cliBinaryName, "SNAPBOOT_CLI_BIN")
}

func installBinary(name, env string) error {
	dst := filepath.Join(binDir, name)
	if src := os.Getenv(env); src != "" {
		if err := copyFile(src, dst, 0o755); err != nil {
			return fmt.Errorf("copying %s: %w", env, err)
		}
		return nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
		if _, err := os.Stat(goBin); err != nil {
			return fmt.Errorf("no go toolchain on PATH to build the shim (set SNAPBOOT_SHIM_BIN)")
		}
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return fmt.Errorf("go env GOMOD found no module from %s", mustGetwd())
	}
	moduleRoot = filepath.Dir(gomod)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, "build", "-o", dst, "./cmd/"+name)
	cmd.Dir = moduleRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/%s in %s: %v\n%s", name, moduleRoot, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// requireShim stops the test unless the snapboot shim is available. It fails
// the test, or skips it when SNAPBOOT_IT_SKIP_SHIM=1 (an explicit opt-out for
// working on the harness while the shim does not build).
func requireShim(t testing.TB) {
	t.Helper()
	if shimErr == nil {
		return
	}
	if os.Getenv("SNAPBOOT_IT_SKIP_SHIM") == "1" {
		t.Skipf("SNAPBOOT_IT_SKIP_SHIM=1 and the snapboot shim is not available: %v", shimErr)
	}
	t.Fatalf("the snapboot shim is not available: %v", shimErr)
}

// ---------------------------------------------------------------------------
// Background processes

// bgProc is a long-running child (containerd, registry).
type bgProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // result of Wait, valid once done is closed
}

// spawnCh serves cmd.Start from one goroutine locked to its OS thread that
// never exits: Pdeathsig fires when the *thread* that started the child dies,
// so starting children from arbitrary goroutines would make it unreliable.
var spawnCh = make(chan spawnReq)

type spawnReq struct {
	cmd *exec.Cmd
	res chan error
}

func init() {
	go func() {
		runtime.LockOSThread()
		for r := range spawnCh {
			r.res <- r.cmd.Start()
		}
	}()
}

// startBg starts cmd in its own process group (so a terminal ^C reaches only
// the test binary, which then tears down in order) with SIGTERM as its
// parent-death signal (so a killed test binary does not leave it behind).
func startBg(name string, cmd *exec.Cmd) (*bgProc, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	res := make(chan error, 1)
	spawnCh <- spawnReq{cmd, res}
	if err := <-res; err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &bgProc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *bgProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILLs. It returns an error
// when SIGKILL was needed or the process would not die.
func (p *bgProc) stop(grace time.Duration) error {
	if p == nil || p.exited() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return nil
	case <-time.After(grace):
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.done:
		return fmt.Errorf("%s (pid %d) ignored SIGTERM for %v and was killed", p.name, p.cmd.Process.Pid, grace)
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.name, p.cmd.Process.Pid)
	}
}

// ---------------------------------------------------------------------------
// Registry

func initRegistry() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	registryAddr = fmt.Sprintf("127.0.0.1:%d", port)
	rdir := filepath.Join(tmpDir, "registry")
	if err := os.MkdirAll(filepath.Join(rdir, "storage"), 0o755); err != nil {
		return err
	}
	registryConf = filepath.Join(rdir, "config.yml")
	registryLogPath = filepath.Join(rdir, "registry.log")
	conf := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
  secret: snapboot-it-%s
`, filepath.Join(rdir, "storage"), registryAddr, runToken)
	if err := os.WriteFile(registryConf, []byte(conf), 0o644); err != nil {
		return err
	}
	return startRegistry()
}

// startRegistry starts the registry (same address and storage as at setup)
// and waits until GET /v2/ answers 200. It is a no-op when it is running.
func startRegistry() error {
	registryMu.Lock()
	defer registryMu.Unlock()
	if registryProc != nil && !registryProc.exited() {
		return nil
	}
	logf, err := os.OpenFile(registryLogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n==== snapboot-it: registry start %s ====\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command("registry", "serve", registryConf)
	cmd.Dir = filepath.Dir(registryConf)
	cmd.Stdout, cmd.Stderr = logf, logf
	// No OTLP exporter: it would try to reach localhost:4318 for nothing.
	cmd.Env = append(os.Environ(), "OTEL_TRACES_EXPORTER=none", "TMPDIR="+filepath.Join(tmpDir, "tmp"))
	p, err := startBg("registry", cmd)
	if err != nil {
		return err
	}
	registryProc = p
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := client.Get("http://" + registryAddr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if p.exited() {
			return fmt.Errorf("registry exited (%v); log:\n%s", p.err, tailFile(registryLogPath, 30))
		}
		if time.Now().After(deadline) {
			_ = p.stop(2 * time.Second)
			return fmt.Errorf("registry did not answer 200 on /v2/ within 15s (last error %v); log:\n%s", err, tailFile(registryLogPath, 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopRegistry stops the registry by PID (SIGTERM, then SIGKILL after 10s)
// and waits until its port is closed. Storage is kept; startRegistry brings
// it back on the same address. See also registryDown.
func stopRegistry() error {
	registryMu.Lock()
	defer registryMu.Unlock()
	if registryProc == nil {
		return nil
	}
	err := registryProc.stop(10 * time.Second)
	for i := 0; i < 100; i++ {
		c, derr := net.DialTimeout("tcp", registryAddr, 100*time.Millisecond)
		if derr != nil {
			break
		}
		c.Close()
		time.Sleep(50 * time.Millisecond)
	}
	return err
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ---------------------------------------------------------------------------
// snapboot node config

func writeSnapbootConfig() error {
	snapbootConfigPath = filepath.Join(tmpDir, "snapboot.toml")
	conf := fmt.Sprintf(`allow = [%q]
insecure_registries = [%q]
[cache]
root = %q
[pull]
timeout = "30s"
[metrics]
dir = %q
`, registryAddr, registryAddr, snapbootCacheDir, filepath.Join(tmpDir, "metrics"))
	return os.WriteFile(snapbootConfigPath, []byte(conf), 0o644)
}

// ---------------------------------------------------------------------------
// containerd

// disabledPlugins are not needed by ctr-driven tests. CRI costs start-up time;
// nri would create /var/run/nri/nri.sock and opt /opt/containerd: both are
// outside tmpDir.
var disabledPlugins = []string{
	"io.containerd.grpc.v1.cri",
	"io.containerd.cri.v1.runtime",
	"io.containerd.cri.v1.images",
	"io.containerd.podsandbox.controller.v1.podsandbox",
	"io.containerd.nri.v1.nri",
	"io.containerd.internal.v1.opt",
	"io.containerd.snapshotter.v1.btrfs",
	"io.containerd.snapshotter.v1.zfs",
	"io.containerd.snapshotter.v1.devmapper",
	"io.containerd.snapshotter.v1.blockfile",
	"io.containerd.tracing.processor.v1.otlp",
	"io.containerd.internal.v1.tracing",
}

func startContainerd() error {
	cdir := filepath.Join(tmpDir, "containerd")
	for _, d := range []string{"root", "state", "tmp"} {
		if err := os.MkdirAll(filepath.Join(cdir, d), 0o711); err != nil {
			return err
		}
	}
	containerdAddr = filepath.Join(tmpDir, "containerd.sock")
	containerdLogPath = filepath.Join(tmpDir, "containerd.log")
	quoted := make([]string, len(disabledPlugins))
	for i, p := range disabledPlugins {
		quoted[i] = strconv.Quote(p)
	}
	conf := fmt.Sprintf(`version = 3
root = %q
state = %q
temp = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "debug"
`, filepath.Join(cdir, "root"), filepath.Join(cdir, "state"), filepath.Join(cdir, "tmp"),
		strings.Join(quoted, ", "), containerdAddr, containerdAddr+".ttrpc")
	confPath := filepath.Join(cdir, "config.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return err
	}
	logf, err := os.OpenFile(containerdLogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("containerd", "--config", confPath)
	cmd.Dir = cdir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(envWithout(os.Environ(), "PATH", "SNAPBOOT_CONFIG", "TMPDIR"),
		"PATH="+binDir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"SNAPBOOT_CONFIG="+snapbootConfigPath,
		"TMPDIR="+filepath.Join(tmpDir, "tmp"),
	)
	p, err := startBg("containerd", cmd)
	if err != nil {
		return err
	}
	containerdProc = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		out, err := exec.CommandContext(ctx, "ctr", "--address", containerdAddr, "version").CombinedOutput()
		cancel()
		if err == nil && strings.Contains(string(out), "Server:") {
			break
		}
		if p.exited() {
			return fmt.Errorf("containerd exited (%v); log:\n%s", p.err, tailFile(containerdLogPath, 40))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("`ctr version` did not work within 30s: %v %s; log:\n%s", err, out, tailFile(containerdLogPath, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, stderr, err := ctrErr("namespaces", "create", namespace); err != nil && !strings.Contains(stderr, "already exists") {
		return fmt.Errorf("ctr namespaces create: %v: %s", err, stderr)
	}
	return nil
}

func envWithout(env []string, keys ...string) []string {
	out := env[:0:0]
outer:
	for _, kv := range env {
		for _, k := range keys {
			if strings.HasPrefix(kv, k+"=") {
				continue outer
			}
		}
		out = append(out, kv)
	}
	return out
}

// ---------------------------------------------------------------------------
// busybox image, built without Docker

// requiredApplets must be in the image (busybox --list is linked in full).
var requiredApplets = []string{"sh", "sleep", "echo", "cat", "seq", "httpd", "nc", "wget", "grep", "ps", "kill", "mkdir", "rm", "date", "ls", "true"}

func importBusybox() error {
	layer, err := busyboxLayer()
	if err != nil {
		return err
	}
	ociTar, err := ociImageLayout(busyboxImage, layer, []string{"/bin/sh"})
	if err != nil {
		return err
	}
	path := filepath.Join(tmpDir, "busybox-oci.tar")
	if err := os.WriteFile(path, ociTar, 0o644); err != nil {
		return err
	}
	if _, stderr, err := ctrErr("images", "import", path); err != nil {
		return fmt.Errorf("ctr images import: %v: %s", err, stderr)
	}
	out, stderr, err := ctrErr("images", "ls", "-q")
	if err != nil {
		return fmt.Errorf("ctr images ls: %v: %s", err, stderr)
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) == busyboxImage {
			return nil
		}
	}
	return fmt.Errorf("%s not in `ctr images ls` after import; got:\n%s", busyboxImage, out)
}

// busyboxLayer is an uncompressed, reproducible rootfs tar.
func busyboxLayer() ([]byte, error) {
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, err
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	applets := strings.Fields(string(out))
	have := map[string]bool{}
	for _, a := range applets {
		have[a] = true
	}
	for _, a := range requiredApplets {
		if !have[a] {
			return nil, fmt.Errorf("/bin/busybox lacks applet %q", a)
		}
	}
	sort.Strings(applets)

	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := func(h *tar.Header) error {
		h.ModTime, h.Uname, h.Gname, h.Format = mtime, "root", "root", tar.FormatPAX
		return tw.WriteHeader(h)
	}
	dirs := []struct {
		name string
		mode int64
	}{
		{"bin/", 0o755}, {"dev/", 0o755}, {"etc/", 0o755}, {"proc/", 0o555}, {"root/", 0o700},
		{"run/", 0o755}, {"sys/", 0o555}, {"tmp/", 0o1777}, {"usr/", 0o755}, {"usr/bin/", 0o755},
		{"var/", 0o755}, {"var/tmp/", 0o1777}, {"var/www/", 0o755},
	}
	for _, d := range dirs {
		if err := hdr(&tar.Header{Typeflag: tar.TypeDir, Name: d.name, Mode: d.mode}); err != nil {
			return nil, err
		}
	}
	if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))}); err != nil {
		return nil, err
	}
	if _, err := tw.Write(bb); err != nil {
		return nil, err
	}
	for _, a := range applets {
		if a == "busybox" || strings.ContainsAny(a, "/ ") {
			continue
		}
		if err := hdr(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777}); err != nil {
			return nil, err
		}
	}
	files := []struct {
		name, data string
		mode       int64
	}{
		{"etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644},
		{"etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644},
		{"etc/shadow", "root:*:20000:0:99999:7:::\n", 0o600}, // root's only
		{"etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644},
		{"var/www/index.html", "snapboot-it\n", 0o644},
	}
	for _, f := range files {
		if err := hdr(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: f.mode, Size: int64(len(f.data))}); err != nil {
			return nil, err
		}
		if _, err := io.WriteString(tw, f.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

func describe(mediaType string, data []byte) ociDescriptor {
	sum := sha256.Sum256(data)
	return ociDescriptor{MediaType: mediaType, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(data))}
}

// ociImageLayout packs one uncompressed layer as an OCI image layout tar
// (oci-layout, index.json, blobs/sha256/...) naming the image ref, which
// `ctr images import` accepts.
func ociImageLayout(ref string, layer []byte, cmd []string) ([]byte, error) {
	layerDesc := describe("application/vnd.oci.image.layer.v1.tar", layer)
	config, err := json.Marshal(map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      "2024-01-01T00:00:00Z",
		"config": map[string]any{
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"Cmd":        cmd,
			"WorkingDir": "/",
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
		"history": []map[string]any{{
			"created":    "2024-01-01T00:00:00Z",
			"created_by": "snapboot integration harness: busybox-static from Debian",
		}},
	})
	if err != nil {
		return nil, err
	}
	configDesc := describe("application/vnd.oci.image.config.v1+json", config)
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        configDesc,
		"layers":        []ociDescriptor{layerDesc},
	})
	if err != nil {
		return nil, err
	}
	manifestDesc := describe("application/vnd.oci.image.manifest.v1+json", manifest)
	tag := ref[strings.LastIndex(ref, ":")+1:]
	manifestDesc.Annotations = map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": tag,
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []ociDescriptor{manifestDesc},
	})
	if err != nil {
		return nil, err
	}

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{"blobs/", "blobs/sha256/"} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	if err := add("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return nil, err
	}
	for _, b := range []struct {
		d    ociDescriptor
		data []byte
	}{{layerDesc, layer}, {configDesc, config}, {manifestDesc, manifest}} {
		if err := add("blobs/sha256/"+strings.TrimPrefix(b.d.Digest, "sha256:"), b.data); err != nil {
			return nil, err
		}
	}
	if err := add("index.json", index); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// ---------------------------------------------------------------------------
// Teardown

// sharedHostDirs are created by containerd, its shims or runc outside tmpDir
// (hard-coded paths). The teardown removes those that were absent before
// setup and are empty afterwards.
func sharedHostDirs() []string {
	dirs := []string{
		"/run/containerd",
		"/run/containerd/s",
		"/run/containerd/fifo",
		"/run/containerd/runc",
		"/run/containerd/runc/" + namespace,
	}
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/" + namespace)
	dirs = append(dirs, cg...)
	for _, c := range cgroupRoots() {
		dirs = append(dirs, filepath.Join(c, namespace))
	}
	return dirs
}

// cgroupRoots are the hierarchy mount points (v1 controllers, unified).
func cgroupRoots() []string {
	var roots []string
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return []string{"/sys/fs/cgroup"}
	}
	ents, _ := os.ReadDir("/sys/fs/cgroup")
	for _, e := range ents {
		if e.IsDir() {
			roots = append(roots, filepath.Join("/sys/fs/cgroup", e.Name()))
		}
	}
	return roots
}

// sharedHostFiles are files outside tmpDir that tools leave behind. CRIU
// 4.2 caches kernel facts in /run/criu.kdat only on tmpfs; when /run is not
// tmpfs (as on this machine kind) its cleanup unlinks the wrong name and
// leaves an empty /run/criu.kdat.tmp behind (kerndat_save_cache). The
// teardown removes those it created.
var sharedHostFiles = []string{"/run/criu.kdat.tmp", "/run/criu.kdat"}

func recordPreexisting() {
	for _, f := range sharedHostFiles {
		if _, err := os.Lstat(f); err == nil {
			preexisting[f] = true
		}
	}
	for _, d := range sharedHostDirs() {
		if _, err := os.Lstat(d); err == nil {
			preexisting[d] = true
		}
	}
}

// teardown stops and removes everything setup made. It is idempotent, runs
// after the tests, after a failed setup and on SIGINT/SIGTERM.
func teardown() {
	teardownOnce.Do(doTeardown)
}

func doTeardown() {
	tornDown.Store(true)
	if tmpDir == "" {
		return
	}
	t0 := time.Now()
	var problems, leaks []string
	note := func(format string, args ...any) {
		problems = append(problems, fmt.Sprintf(format, args...))
	}
	// What the tests should have removed themselves; stopping what setup
	// started (containerd, the registry) is the teardown's normal work.
	leak := func(format string, args ...any) {
		leaks = append(leaks, fmt.Sprintf(format, args...))
	}

	// 1. Tasks and containers, through containerd.
	if containerdProc != nil && !containerdProc.exited() {
		if out, _, err := ctrExec("containers", "ls", "-q"); err == nil {
			for _, id := range strings.Fields(out) {
				leak("container %s", id)
				if err := removeContainerNow(id); err != nil {
					note("removing container %s: %v", id, err)
				}
			}
		}
	}

	// 2. containerd, then the registry, by PID.
	if err := containerdProc.stop(10 * time.Second); err != nil {
		note("%v", err)
	}
	registryMu.Lock()
	if err := registryProc.stop(10 * time.Second); err != nil {
		note("%v", err)
	}
	registryMu.Unlock()

	// 3. Leftover shims (their command line names our socket) and container
	//    processes (their cgroup path names one of our container IDs).
	for _, p := range killLeftovers() {
		leak("process %s (killed)", p)
	}

	// 4. runc state, cgroups and shim sockets of our containers that
	//    outlived their shim.
	cleanupRuncState()
	cleanupShimSockets()

	// 5. Mounts under tmpDir, deepest first.
	for _, mp := range mountsUnder(tmpDir) {
		leak("mount %s", mp)
	}
	for _, err := range unmountUnder(tmpDir) {
		note("%v", err)
	}

	// 6. Host files and empty host directories we caused to exist.
	for _, f := range sharedHostFiles {
		if !preexisting[f] {
			_ = os.Remove(f)
		}
	}
	hostDirs := sharedHostDirs()
	sort.Slice(hostDirs, func(i, j int) bool { return len(hostDirs[i]) > len(hostDirs[j]) })
	for _, d := range hostDirs {
		if !preexisting[d] {
			_ = os.Remove(d) // only succeeds when empty
		}
	}

	if os.Getenv("SNAPBOOT_IT_KEEP") == "1" {
		fmt.Fprintf(os.Stderr, "snapboot-it: SNAPBOOT_IT_KEEP=1: kept %s (containerd.log, registry/registry.log, logs/)\n", tmpDir)
	} else if err := os.RemoveAll(tmpDir); err != nil {
		note("removing %s: %v", tmpDir, err)
	}
	for _, p := range problems {
		fmt.Fprintf(os.Stderr, "snapboot-it: teardown: %s\n", p)
	}
	for _, l := range leaks {
		fmt.Fprintf(os.Stderr, "snapboot-it: teardown: left behind: %s\n", l)
	}
	teardownLeaks = leaks
	fmt.Fprintf(os.Stderr, "snapboot-it: teardown done in %v\n", time.Since(t0).Round(time.Millisecond))
}

// killLeftovers SIGKILLs processes that belong to this run and are still
// alive: shims (command line mentions tmpDir, e.g. their -address) and
// container processes (cgroup path /snapboot-it/<one of our IDs>). It returns
// those it found (not zombies), as "<pid>: <command line>".
func killLeftovers() []string {
	// A shim that has just answered containerd's Shutdown (the last test's
	// container was removed moments ago) exits on its own: it is not left
	// over unless it is still there a little later.
	pids := runProcesses()
	for deadline := time.Now().Add(2 * time.Second); len(pids) > 0 && time.Now().Before(deadline); pids = runProcesses() {
		time.Sleep(50 * time.Millisecond)
	}
	var found []string
	for _, pid := range pids {
		if !isZombie(pid) {
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			found = append(found, fmt.Sprintf("%d: %s", pid, strings.TrimSpace(strings.ReplaceAll(string(cmdline), "\x00", " "))))
		}
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for time.Now().Before(deadline) {
			if err := syscall.Kill(pid, 0); err != nil {
				break
			}
			if isZombie(pid) {
				break // its parent (maybe init) reaps it
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return found
}

// runProcesses lists the processes of this run (see ownedByRun), zombies
// included.
func runProcesses() []int {
	self := os.Getpid()
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || pid == 1 {
			continue
		}
		if ownedByRun(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// isZombie reports whether process pid has exited and awaits its parent.
func isZombie(pid int) bool {
	st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return bytes.Contains(st, []byte(") Z "))
}

func ownedByRun(pid int) bool {
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	if bytes.Contains(cmdline, []byte(tmpDir)) {
		return true
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		return false
	}
	return idPattern(string(cg))
}

// idPattern reports whether s names a container path of this run:
// .../snapboot-it/<something containing -runToken->...
func idPattern(s string) bool {
	marker := "/" + namespace + "/"
	for _, line := range strings.Split(s, "\n") {
		if i := strings.Index(line, marker); i >= 0 && strings.Contains(line[i+len(marker):], "-"+runToken+"-") {
			return true
		}
	}
	return false
}

// cleanupRuncState deletes (runc delete --force) containers of this run that
// still have runc state, e.g. because their shim was killed, and removes
// their empty cgroup directories.
func cleanupRuncState() {
	root := "/run/containerd/runc/" + namespace
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if strings.Contains(e.Name(), "-"+runToken+"-") {
			_ = exec.Command("runc", "--root", root, "delete", "--force", e.Name()).Run()
			// A runc killed mid-restore leaves its criu-root mount here; the
			// shim's delete command should have taken it down
			// (TestShimKilledMidPull), but a failed run must not leave it on
			// the machine.
			_ = unmountUnder(filepath.Join(root, e.Name()))
			_ = os.RemoveAll(filepath.Join(root, e.Name()))
		}
	}
	for _, c := range cgroupRoots() {
		ents, _ := os.ReadDir(filepath.Join(c, namespace))
		for _, e := range ents {
			if e.IsDir() && strings.Contains(e.Name(), "-"+runToken+"-") {
				_ = os.Remove(filepath.Join(c, namespace, e.Name()))
			}
		}
	}
}

// cleanupShimSockets removes the sockets of this run's shims that were
// killed instead of shut down. Shims listen on /run/containerd/s/<hex>, hex
// being sha256("<containerd address>/<namespace>/<id>[/debug]") (hard-coded
// in containerd's pkg/shim); the IDs come from uniqueID and from containerd's
// bundle directories.
func cleanupShimSockets() {
	ids := issuedIDs()
	bundles, _ := os.ReadDir(filepath.Join(tmpDir, "containerd", "state", "io.containerd.runtime.v2.task", namespace))
	for _, b := range bundles {
		ids = append(ids, b.Name())
	}
	for _, id := range ids {
		for _, suffix := range []string{"", "/debug"} {
			sum := sha256.Sum256([]byte(filepath.Join(containerdAddr, namespace, id) + suffix))
			p := filepath.Join("/run/containerd/s", hex.EncodeToString(sum[:]))
			if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSocket != 0 {
				_ = os.Remove(p)
			}
		}
	}
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	sort.SliceStable(mps, func(i, j int) bool {
		return strings.Count(mps[i], "/") > strings.Count(mps[j], "/")
	})
	return mps
}

// unmountUnder unmounts everything at or below dir, deepest first, falling
// back to a lazy unmount.
func unmountUnder(dir string) []error {
	var errs []error
	for attempt := 0; attempt < 3; attempt++ {
		mps := mountsUnder(dir)
		if len(mps) == 0 {
			return nil
		}
		errs = errs[:0]
		for _, mp := range mps {
			if err := syscall.Unmount(mp, 0); err != nil {
				if err2 := syscall.Unmount(mp, syscall.MNT_DETACH); err2 != nil && !errors.Is(err2, syscall.EINVAL) {
					errs = append(errs, fmt.Errorf("unmount %s: %v / lazy: %v", mp, err, err2))
				}
			}
		}
	}
	if left := mountsUnder(dir); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still mounted: %v", left))
	}
	return errs
}

// unescapeMountinfo undoes the octal escapes (\040 etc.) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// ---------------------------------------------------------------------------
// small file helpers

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// tailFile returns the last n lines of a file ("" if unreadable).
func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func mustGetwd() string {
	wd, _ := os.Getwd()
	return wd
}

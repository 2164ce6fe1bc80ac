package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// proc is a server this program started; it is stopped by PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
}

func start(name, logPath string, env []string, argv ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(p.done) }()
	return p, nil
}

func (p *proc) stop() {
	if p == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func waitUntil(timeout time.Duration, what string, ok func() bool) error {
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// stack is the node the demo runs on.
type stack struct {
	dir          string
	binDir       string
	registryAddr string
	pgPort       int
	containerd   string // socket
	namespace    string
	configPath   string
	cacheDir     string
	logPath      string
	procs        []*proc
	pgData       string
	// link reaches the registry at linkMbps, like a network link would.
	link *link
	// wholeConfigPath is a node configuration like configPath, with
	// [pull] stream = false.
	wholeConfigPath string
}

// linkMbps and linkRTT are the speed and the round trip of the simulated
// link to the registry: a registry in the node's data centre.
const (
	linkMbps = 1000
	linkRTT  = time.Millisecond
)

func (s *stack) stop() {
	if s.link != nil {
		s.link.close()
	}
	if s.pgData != "" {
		exec.Command("runuser", "-u", "postgres", "--", pgBin("pg_ctl"), "-D", s.pgData, "-m", "fast", "-w", "stop").Run()
	}
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].stop()
	}
	s.stopLeftovers()
}

func pgBin(name string) string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/" + name)
	if len(matches) == 0 {
		return name
	}
	return matches[len(matches)-1]
}

func newStack(dir, binDir string) (*stack, error) {
	s := &stack{dir: dir, binDir: binDir, namespace: "snapboot-demo"}
	for _, d := range []string{"registry", "containerd", "logs", "cache"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	ok := false
	defer func() {
		if !ok {
			s.stop()
		}
	}()
	if err := s.startRegistry(); err != nil {
		return nil, err
	}
	var err error
	if s.link, err = startLink(s.registryAddr, linkMbps, linkRTT); err != nil {
		return nil, err
	}
	if err := s.startPostgres(); err != nil {
		return nil, err
	}
	if err := s.startContainerd(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func (s *stack) startRegistry() error {
	port, err := freePort()
	if err != nil {
		return err
	}
	s.registryAddr = fmt.Sprintf("127.0.0.1:%d", port)
	conf := filepath.Join(s.dir, "registry", "config.yml")
	os.WriteFile(conf, []byte(fmt.Sprintf("version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n  secret: snapboot-demo\n",
		filepath.Join(s.dir, "registry", "storage"), s.registryAddr)), 0o644)
	p, err := start("registry", filepath.Join(s.dir, "logs", "registry.log"), []string{"OTEL_TRACES_EXPORTER=none"}, "registry", "serve", conf)
	if err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	return waitUntil(20*time.Second, "the registry", func() bool {
		r, err := http.Get("http://" + s.registryAddr + "/v2/")
		if err == nil {
			r.Body.Close()
		}
		return err == nil && r.StatusCode == 200
	})
}

func (s *stack) startPostgres() error {
	var err error
	if s.pgPort, err = freePort(); err != nil {
		return err
	}
	s.pgData = filepath.Join(s.dir, "pgdata")
	run := func(args ...string) error {
		out, err := exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := os.MkdirAll(s.pgData, 0o700); err != nil {
		return err
	}
	// postgres must be able to reach its data directory.
	os.Chmod(s.dir, 0o755)
	if err := exec.Command("chown", "postgres:postgres", s.pgData).Run(); err != nil {
		return err
	}
	if err := run(pgBin("initdb"), "-D", s.pgData, "-A", "trust", "-U", "postgres", "--no-sync"); err != nil {
		s.pgData = ""
		return err
	}
	if err := run(pgBin("pg_ctl"), "-D", s.pgData, "-w", "-l", filepath.Join(s.pgData, "server.log"),
		"-o", fmt.Sprintf("-c listen_addresses=127.0.0.1 -c port=%d -c unix_socket_directories=%s -c fsync=off", s.pgPort, s.pgData), "start"); err != nil {
		return err
	}
	for _, sql := range []string{"CREATE USER demo PASSWORD 'demo'", "CREATE DATABASE demo OWNER demo"} {
		if err := run("psql", "-h", "127.0.0.1", "-p", fmt.Sprint(s.pgPort), "-U", "postgres", "-c", sql); err != nil {
			return err
		}
	}
	return nil
}

func (s *stack) databaseURL() string {
	return fmt.Sprintf("postgres://demo:demo@127.0.0.1:%d/demo", s.pgPort)
}

func (s *stack) startContainerd() error {
	cd := filepath.Join(s.dir, "containerd")
	s.containerd = filepath.Join(cd, "containerd.sock")
	s.configPath = filepath.Join(s.dir, "snapboot.toml")
	s.cacheDir = filepath.Join(s.dir, "cache")
	s.wholeConfigPath = filepath.Join(s.dir, "snapboot-whole.toml")
	config := fmt.Sprintf("allow = [%q, %q]\ninsecure_registries = [%q, %q]\n[cache]\nroot = %q\n[pull]\ntimeout = \"10m\"\n",
		s.registryAddr, s.link.addr(), s.registryAddr, s.link.addr(), s.cacheDir)
	os.WriteFile(s.configPath, []byte(config), 0o644)
	os.WriteFile(s.wholeConfigPath, []byte(config+"stream = false\n"), 0o644)
	conf := filepath.Join(cd, "config.toml")
	os.WriteFile(conf, []byte(fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.podsandbox.controller.v1.podsandbox", "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  level = "info"
`, filepath.Join(cd, "root"), filepath.Join(cd, "state"), s.containerd, s.containerd+".ttrpc")), 0o644)
	s.logPath = filepath.Join(s.dir, "logs", "containerd.log")
	env := []string{"PATH=" + s.binDir + ":" + os.Getenv("PATH"), "SNAPBOOT_CONFIG=" + s.configPath}
	argv := []string{"containerd", "--config", conf}
	ownRun := !runIsTmpfs()
	if ownRun {
		// As on a node that boots with systemd, /run is a tmpfs where the
		// stack's containerd, its shims, runc and CRIU run: in a mount
		// namespace of their own, where /run is one. CRIU keeps its probe
		// of the kernel in /run/criu.kdat, but only on a tmpfs; elsewhere
		// every CRIU run probes again, floor and snapboot alike (about
		// 60 ms and three runs of iptables on the bench's VM, whose /run
		// is on its root disk). unshare execs containerd in its own
		// process, so that the stack stops it by that PID. What they keep
		// in /run (runc's state, rootfs mounts, the iptables lock) is
		// theirs alone and goes with the namespace once they are stopped
		// (see stopLeftovers). On a machine whose /etc/resolv.conf links
		// into /run (systemd's resolver), /run is a tmpfs already.
		say("containerd runs with a tmpfs on /run, in a mount namespace of its own (this machine's /run is not one)")
		argv = append([]string{"unshare", "--mount", "--propagation", "slave", "--", "sh", "-c",
			`mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run && exec "$0" "$@"`}, argv...)
	}
	p, err := start("containerd", s.logPath, env, argv...)
	if err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	if err := waitUntil(30*time.Second, "containerd", func() bool {
		select {
		case <-p.done:
			return true // it exited: said below
		default:
		}
		_, err := s.ctr(context.Background(), "version")
		return err == nil
	}); err != nil {
		return fmt.Errorf("%w (its log: %s)", err, s.logPath)
	}
	select {
	case <-p.done:
		return fmt.Errorf("containerd exited at start; its log, %s, ends: %s", s.logPath, logTail(s.logPath, 5))
	default:
	}
	if ownRun {
		// Seen from containerd's mount namespace, through its root.
		var st unix.Statfs_t
		if err := unix.Statfs(fmt.Sprintf("/proc/%d/root/run", p.cmd.Process.Pid), &st); err != nil || st.Type != unix.TMPFS_MAGIC {
			return fmt.Errorf("containerd's /run is not a tmpfs (statfs: %v, type %#x)", err, st.Type)
		}
	}
	return nil
}

// logTail is the last n lines of the file at path.
func logTail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

// ctr runs ctr against the demo's containerd.
func (s *stack) ctr(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--address", s.containerd, "--namespace", s.namespace}, args...)
	out, err := exec.CommandContext(ctx, "ctr", full...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// snapboot runs the snapboot CLI against the demo's node; stdout only.
func (s *stack) snapboot(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--address", s.containerd, "--namespace", s.namespace, "--config", s.configPath}, args...)
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, "snapboot"), full...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("snapboot %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

// removeContainer kills and deletes a container, ignoring what is gone.
func (s *stack) removeContainer(ctx context.Context, id string) {
	s.ctr(ctx, "task", "kill", "--signal", "SIGKILL", id)
	waitUntil(15*time.Second, id+" to stop", func() bool {
		out, _ := s.ctr(ctx, "task", "ls")
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) >= 3 && f[0] == id {
				return f[2] == "STOPPED"
			}
		}
		return true
	})
	s.ctr(ctx, "task", "delete", "--force", id)
	s.ctr(ctx, "container", "rm", id)
}

// runIsTmpfs reports whether /run is a tmpfs here, as on a node that
// boots with systemd.
func runIsTmpfs() bool {
	var st unix.Statfs_t
	return unix.Statfs("/run", &st) == nil && st.Type == unix.TMPFS_MAGIC
}

//go:build linux

// Package seccompfilter finds the seccomp filter runc installs for a
// container's seccomp profile on this node. It has runc create a container
// with the profile whose process never starts (runc's init installs the
// filter before it waits to be started), reads the filter out of that init
// with ptrace(PTRACE_SECCOMP_GET_FILTER), as CRIU dumps filters, and
// deletes the container. Filters are kept in a directory, by profile and
// runc binary, so each is derived once per node.
package seccompfilter

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/containerd/continuity"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Prober derives filters.
type Prober struct {
	// Runc is the runc binary: a path, or a name looked up in PATH.
	Runc string
	// Dir keeps the derived filters; TmpDir gets the probe containers'
	// bundles and runc state (see bundlePrefix: nothing else may remove
	// them). Both are directories only root can reach.
	Dir, TmpDir string
	// Run runs a command to its end. In a shim, where containerd's reaper
	// collects every child's exit status, it must go through the reaper.
	Run func(*exec.Cmd) error

	sweeping sync.WaitGroup // sweeps under way
}

// Filter returns the filter runc installs for profile: the instructions
// (struct sock_filter, 8 bytes each) in the kernel's order.
func (p *Prober) Filter(ctx context.Context, profile *specs.LinuxSeccomp) ([]byte, error) {
	if profile == nil {
		return nil, errors.New("no seccomp profile")
	}
	if usesNotify(profile) {
		// runc would hand the probe's listener to the spec's agent.
		return nil, errors.New("the seccomp profile sends system calls to a user-space agent (SCMP_ACT_NOTIFY), which snapboot does not derive")
	}
	runc, err := exec.LookPath(p.Runc)
	if err != nil {
		return nil, fmt.Errorf("runc: %w", err)
	}
	key, err := cacheKey(runc, profile)
	if err != nil {
		return nil, err
	}
	kept := filepath.Join(p.Dir, key+".bpf")
	if f, err := os.ReadFile(kept); err == nil && validFilter(f) {
		return f, nil
	}
	f, err := p.probe(ctx, runc, profile)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return nil, err
	}
	if err := continuity.AtomicWriteFile(kept, f, 0o600); err != nil {
		return nil, fmt.Errorf("keep the seccomp filter: %w", err)
	}
	return f, nil
}

func usesNotify(profile *specs.LinuxSeccomp) bool {
	if profile.ListenerPath != "" || profile.DefaultAction == specs.ActNotify {
		return true
	}
	for _, s := range profile.Syscalls {
		if s.Action == specs.ActNotify {
			return true
		}
	}
	return false
}

// cacheKey names a filter by the profile and the runc binary (path, size,
// modification time, inode), so that a new runc derives it again.
func cacheKey(runc string, profile *specs.LinuxSeccomp) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(runc, &st); err != nil {
		return "", fmt.Errorf("runc: %w", err)
	}
	js, err := json.Marshal(profile)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%d\x00%d.%d\x00%d\x00", runc, st.Size, st.Mtim.Sec, st.Mtim.Nsec, st.Ino)
	h.Write(js)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// validFilter reports whether f can be a filter: whole instructions, at
// least one, no more than the kernel takes (BPF_MAXINSNS).
func validFilter(f []byte) bool {
	return len(f) > 0 && len(f)%8 == 0 && len(f)/8 <= 4096
}

// probe creates the container, reads its init's filter and deletes it.
func (p *Prober) probe(ctx context.Context, runc string, profile *specs.LinuxSeccomp) (_ []byte, retErr error) {
	// Beside the probe, not before it: a runc delete that hangs on a
	// dead prober's container (up to its 30 s) must not hold this one up.
	p.sweeping.Add(1)
	go func() {
		defer p.sweeping.Done()
		p.sweep(context.WithoutCancel(ctx), runc)
	}()
	b, err := p.newBundle()
	if err != nil {
		return nil, err
	}
	defer func() {
		if err := b.remove(ctx, p, runc); err != nil && retErr == nil {
			retErr = err
		}
	}()
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	id := probeIDPrefix + hex.EncodeToString(rnd[:])
	if err := writeBundle(b.dir, id, profile); err != nil {
		return nil, err
	}
	pidFile := filepath.Join(b.dir, "init.pid")
	if err := p.runc(ctx, runc, b.dir, "--root", b.state(), "create", "--bundle", b.dir, "--pid-file", pidFile, id); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return nil, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return nil, fmt.Errorf("runc's pid file: %q", data)
	}
	filters, err := readFilters(pid)
	if err != nil {
		return nil, fmt.Errorf("read the probe container's seccomp filter: %w", err)
	}
	if len(filters) == 0 {
		return nil, errors.New("the probe container has no seccomp filter")
	}
	// The most recent is runc's; any others were inherited (containerd
	// running under a filter of its own).
	return filters[0], nil
}

// A probe's bundle, with its runc state, is a directory in TmpDir that the
// probing process holds locked (flock) for as long as its container may
// exist. One that no process holds was left by a prober that died between
// runc's create and delete: its container's init still waits to be
// started. Each probe first deletes such containers (runc delete --force)
// and their bundles. A bundle is locked right after it is made, so only
// one older than staleAfter and unlocked is taken for a dead prober's.
const (
	bundlePrefix = "seccomp-probe-"
	staleAfter   = time.Minute
	// probeIDPrefix begins the name of every probe container, and of the
	// cgroup runc makes for it.
	probeIDPrefix = "snapboot-seccomp-probe-"
)

type bundle struct {
	dir  string
	lock *os.File // the directory, flocked
}

func (b *bundle) state() string { return filepath.Join(b.dir, "state") }

func (p *Prober) newBundle() (*bundle, error) {
	if err := os.MkdirAll(p.TmpDir, 0o700); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp(p.TmpDir, bundlePrefix)
	if err != nil {
		return nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("lock the probe's bundle: %w", err)
	}
	return &bundle{dir: dir, lock: lock}, nil
}

// lockDir locks dir, without waiting: unix.EWOULDBLOCK if a process holds
// it.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// sweep removes what probers that died left: see bundlePrefix. A bundle
// whose container runc cannot delete stays for the next sweep.
func (p *Prober) sweep(ctx context.Context, runc string) {
	dirs, _ := filepath.Glob(filepath.Join(p.TmpDir, bundlePrefix+"*"))
	for _, dir := range dirs {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < staleAfter {
			continue
		}
		lock, err := lockDir(dir)
		if err != nil {
			continue // a probe under way
		}
		b := &bundle{dir: dir, lock: lock}
		_ = b.remove(ctx, p, runc)
	}
}

// remove deletes the containers in the bundle's runc state, then the
// bundle, and lets go of it. If runc cannot delete a container, the
// bundle stays, unlocked, for a later sweep.
func (b *bundle) remove(ctx context.Context, p *Prober, runc string) error {
	defer b.lock.Close()
	ents, err := os.ReadDir(b.state())
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(b.state(), e.Name(), "state.json")); err != nil {
			// Not a container runc knows: a create that failed, or that
			// was killed (the probe's context, or its prober, gone).
			// One killed after it made the container's cgroups leaves
			// them, and only this bundle's state names them.
			if err := removeCgroups(e.Name()); err != nil {
				return err
			}
			continue
		}
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err := p.runc(dctx, runc, b.dir, "--root", b.state(), "delete", "--force", e.Name())
		cancel()
		if err != nil {
			return err
		}
	}
	return os.RemoveAll(b.dir)
}

// writeBundle writes a bundle whose process is an empty file: runc's init
// checks that it exists before it installs the filter, and never runs it.
// The container's cgroups are /id at the root of every hierarchy, as
// containerd puts its own containers' (/namespace/id), where removeCgroups
// finds them (runc's default, relative to the shim's own cgroup, is not
// where a sweep in another shim would look).
func writeBundle(bundle, id string, profile *specs.LinuxSeccomp) error {
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(rootfs, "probe"), nil, 0o755); err != nil {
		return err
	}
	spec := specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: rootfs, Readonly: true},
		Process: &specs.Process{
			Args:            []string{"/probe"},
			Cwd:             "/",
			Env:             []string{"PATH=/"},
			NoNewPrivileges: true,
		},
		Linux: &specs.Linux{
			Namespaces:  []specs.LinuxNamespace{{Type: specs.MountNamespace}, {Type: specs.PIDNamespace}},
			Seccomp:     profile,
			CgroupsPath: "/" + id,
		},
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(bundle, "config.json"), js, 0o600)
}

func (p *Prober) runc(ctx context.Context, runc, bundle string, args ...string) error {
	out, err := os.CreateTemp(bundle, "runc-output-")
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, runc, args...)
	cmd.Stdout, cmd.Stderr = out, out
	run := p.Run
	if run == nil {
		run = (*exec.Cmd).Run
	}
	if err := run(cmd); err != nil {
		msg, _ := os.ReadFile(out.Name())
		return fmt.Errorf("runc %s: %w: %s", args[2], err, strings.TrimSpace(string(msg)))
	}
	return nil
}

// readFilters reads the seccomp filters of process pid, most recently
// installed first. ptrace stops it for the reads; it goes on as before.
func readFilters(pid int) ([][]byte, error) {
	runtime.LockOSThread() // ptrace requests come from the tracing thread
	defer runtime.UnlockOSThread()
	if err := unix.PtraceSeize(pid); err != nil {
		return nil, fmt.Errorf("ptrace seize: %w", err)
	}
	defer unix.PtraceDetach(pid)
	if err := unix.PtraceInterrupt(pid); err != nil {
		return nil, fmt.Errorf("ptrace interrupt: %w", err)
	}
	// Wait for the stop without wait(2): in a shim, the reaper may collect
	// the notification first.
	if err := waitTraced(pid, 5*time.Second); err != nil {
		return nil, err
	}
	var filters [][]byte
	for i := 0; ; i++ {
		n, err := getFilter(pid, i, nil)
		if errors.Is(err, unix.ENOENT) {
			return filters, nil
		}
		if err != nil {
			return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %w", i, err)
		}
		if n <= 0 || n > 4096 {
			return nil, fmt.Errorf("filter %d has %d instructions", i, n)
		}
		buf := make([]byte, n*8)
		if _, err := getFilter(pid, i, buf); err != nil {
			return nil, fmt.Errorf("PTRACE_SECCOMP_GET_FILTER %d: %w", i, err)
		}
		filters = append(filters, buf)
	}
}

// getFilter asks for filter index of pid: its length in instructions, and
// its instructions into buf if buf is not nil.
func getFilter(pid, index int, buf []byte) (int, error) {
	var data unsafe.Pointer
	if buf != nil {
		data = unsafe.Pointer(&buf[0])
	}
	r, _, errno := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_SECCOMP_GET_FILTER, uintptr(pid), uintptr(index), uintptr(data), 0, 0)
	runtime.KeepAlive(buf)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

// waitTraced waits until process pid is in a ptrace stop.
func waitTraced(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return err
		}
		// The state follows the command name, which is in parentheses.
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && len(stat) > i+2 && stat[i+2] == 't' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d did not stop for ptrace", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

//go:build linux

package seccompfilter

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func newProber(t *testing.T) *Prober {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runc creates a container")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs runc")
	}
	dir := t.TempDir()
	return &Prober{Runc: "runc", Dir: filepath.Join(dir, "filters"), TmpDir: dir}
}

// defaultProfile is containerd's default seccomp profile for a process
// without capabilities.
func defaultProfile() *specs.LinuxSeccomp {
	return seccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}})
}

// proberAndRunc returns a prober and the runc binary it runs.
func proberAndRunc(t *testing.T) (*Prober, string) {
	t.Helper()
	p := newProber(t)
	runc, err := exec.LookPath(p.Runc)
	if err != nil {
		t.Fatal(err)
	}
	return p, runc
}

// retAction returns the action of each return instruction of filter.
func retActions(filter []byte) map[uint32]bool {
	acts := map[uint32]bool{}
	for i := 0; i+8 <= len(filter); i += 8 {
		code := binary.NativeEndian.Uint16(filter[i:])
		if code == unix.BPF_RET|unix.BPF_K {
			acts[binary.NativeEndian.Uint32(filter[i+4:])&unix.SECCOMP_RET_ACTION_FULL] = true
		}
	}
	return acts
}

// The filter of containerd's default profile is derived once, kept, and
// is the same from the kept copy; no probe container is left.
func TestDefaultProfileFilter(t *testing.T) {
	p := newProber(t)
	ctx := context.Background()
	profile := defaultProfile()
	f, err := p.Filter(ctx, profile)
	if err != nil {
		t.Fatal(err)
	}
	if !validFilter(f) {
		t.Fatalf("not a filter: %d bytes", len(f))
	}
	acts := retActions(f)
	if !acts[unix.SECCOMP_RET_ALLOW] || !acts[unix.SECCOMP_RET_ERRNO] {
		t.Fatalf("the default profile's filter should allow and return errors: actions %v", acts)
	}
	kept, _ := filepath.Glob(filepath.Join(p.Dir, "*.bpf"))
	if len(kept) != 1 {
		t.Fatalf("kept filters: %v", kept)
	}
	// The kept copy is what Filter returns next: change it and see.
	marked := append(bytes.Clone(f[:len(f)-8]), f[len(f)-8:]...)
	marked[len(marked)-1] ^= 0xff
	os.WriteFile(kept[0], marked, 0o600)
	again, err := p.Filter(ctx, profile)
	if err != nil || !bytes.Equal(again, marked) {
		t.Fatalf("the second call should read the kept filter (err %v)", err)
	}
	os.Remove(kept[0])
	fresh, err := p.Filter(ctx, profile)
	if err != nil {
		t.Fatal(err)
	}
	// runc orders the architectures of its stub differently from run to
	// run: the rest is the same.
	if d := differsUpTo(fresh, f); d < 0 || d > 64 {
		t.Fatalf("a second probe gave another filter: %d/%d instructions, the last difference at %d", len(fresh)/8, len(f)/8, d)
	}
	ents, _ := os.ReadDir(p.TmpDir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "seccomp-probe-") {
			t.Errorf("probe bundle left: %s", e.Name())
		}
	}
}

// differsUpTo returns the index of the last instruction in which a and b
// differ (0 if none), or -1 if their lengths differ.
func differsUpTo(a, b []byte) int {
	if len(a) != len(b) {
		return -1
	}
	for i := len(a)/8 - 1; i >= 0; i-- {
		if !bytes.Equal(a[i*8:i*8+8], b[i*8:i*8+8]) {
			return i
		}
	}
	return 0
}

// Another profile gives another filter.
func TestProfilesDiffer(t *testing.T) {
	p := newProber(t)
	ctx := context.Background()
	def := defaultProfile()
	// The default profile without mkdir and mkdirat. (A profile runc's
	// init cannot finish under, such as one of a few calls, makes the init
	// exit before its filter can be read.)
	strict := defaultProfile()
	for i, s := range strict.Syscalls {
		strict.Syscalls[i].Names = slices.DeleteFunc(slices.Clone(s.Names), func(n string) bool { return n == "mkdir" || n == "mkdirat" })
	}
	a, err := p.Filter(ctx, def)
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Filter(ctx, strict)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) >= len(a) {
		t.Fatalf("the default profile without mkdir gave %d instructions, the default %d", len(b)/8, len(a)/8)
	}
}

func TestNotifyRefused(t *testing.T) {
	p := &Prober{Runc: "runc"}
	_, err := p.Filter(context.Background(), &specs.LinuxSeccomp{DefaultAction: specs.ActAllow, ListenerPath: "/run/agent.sock",
		Syscalls: []specs.LinuxSyscall{{Names: []string{"mount"}, Action: specs.ActNotify}}})
	if err == nil || !strings.Contains(err.Error(), "SCMP_ACT_NOTIFY") {
		t.Fatalf("notify profile: %v", err)
	}
}

// A probe container left by a prober that died between runc's create and
// delete (its bundle no longer locked, its init waiting to be started) is
// deleted, with its bundle, by the next probe; one whose prober still
// holds it, or one just made, is left alone.
func TestDeadProbersContainersDeleted(t *testing.T) {
	p, runc := proberAndRunc(t)
	ctx := context.Background()
	profile := defaultProfile()
	leave := func(name string, age time.Duration) (*bundle, int) {
		t.Helper()
		b, err := p.newBundle()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			b.lock.Close()
			if lock, err := lockDir(b.dir); err == nil {
				(&bundle{dir: b.dir, lock: lock}).remove(context.Background(), p, runc)
			}
		})
		if err := writeBundle(b.dir, "snapboot-test-"+name, profile); err != nil {
			t.Fatal(err)
		}
		pidFile := filepath.Join(b.dir, "init.pid")
		if err := p.runc(ctx, runc, b.dir, "--root", b.state(), "create", "--bundle", b.dir, "--pid-file", pidFile, "snapboot-test-"+name); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(pidFile)
		if err != nil {
			t.Fatal(err)
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
		if !alive(pid) {
			t.Fatalf("the %s probe's init (%d) is not running", name, pid)
		}
		if age > 0 {
			then := time.Now().Add(-age)
			os.Chtimes(b.dir, then, then)
		}
		return b, pid
	}
	dead, deadPid := leave("dead", 2*staleAfter)
	dead.lock.Close() // its prober is gone
	held, heldPid := leave("held", 2*staleAfter)
	young, youngPid := leave("young", 0)
	young.lock.Close()

	if _, err := p.Filter(ctx, profile); err != nil {
		t.Fatal(err)
	}
	p.sweeping.Wait()
	for deadline := time.Now().Add(10 * time.Second); alive(deadPid) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(deadPid) {
		t.Errorf("the dead prober's container's init (%d) still runs", deadPid)
	}
	if _, err := os.Stat(dead.dir); !os.IsNotExist(err) {
		t.Errorf("the dead prober's bundle is still there: %v", err)
	}
	for _, b := range []struct {
		name string
		dir  string
		pid  int
	}{{"held", held.dir, heldPid}, {"young", young.dir, youngPid}} {
		if !alive(b.pid) {
			t.Errorf("the %s probe's init (%d) was killed", b.name, b.pid)
		}
		if _, err := os.Stat(filepath.Join(b.dir, "state")); err != nil {
			t.Errorf("the %s probe's bundle: %v", b.name, err)
		}
	}
	held.lock.Close()
}

// alive reports whether process pid exists and is not a zombie.
func alive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] != 'Z'
}

// A dead prober's container whose runc delete hangs does not hold up the
// next probe: the sweep runs beside it, and gets to the container once
// runc answers.
func TestHangingSweepDoesNotDelayProbe(t *testing.T) {
	p, runc := proberAndRunc(t)
	ctx := context.Background()
	profile := defaultProfile()
	b, err := p.newBundle()
	if err != nil {
		t.Fatal(err)
	}
	if err := writeBundle(b.dir, "snapboot-test-hung", profile); err != nil {
		t.Fatal(err)
	}
	if err := p.runc(ctx, runc, b.dir, "--root", b.state(), "create", "--bundle", b.dir, "snapboot-test-hung"); err != nil {
		t.Fatal(err)
	}
	then := time.Now().Add(-2 * staleAfter)
	os.Chtimes(b.dir, then, then)
	b.lock.Close() // its prober is gone
	t.Cleanup(func() {
		if lock, err := lockDir(b.dir); err == nil {
			(&bundle{dir: b.dir, lock: lock}).remove(context.Background(), &Prober{}, runc)
		}
	})

	release := make(chan struct{})
	var once sync.Once
	unhang := func() { once.Do(func() { close(release) }) }
	t.Cleanup(func() { unhang(); p.sweeping.Wait() })
	p.Run = func(cmd *exec.Cmd) error {
		if slices.Contains(cmd.Args, "delete") && slices.Contains(cmd.Args, "snapboot-test-hung") {
			select { // runc delete hangs (for at most 15 s)
			case <-release:
			case <-time.After(15 * time.Second):
			}
		}
		return cmd.Run()
	}
	began := time.Now()
	if _, err := p.Filter(ctx, profile); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("the probe waited %v for the hanging sweep", took)
	}
	if _, err := os.Stat(b.state()); err != nil {
		t.Fatalf("the hung container's bundle went while its delete hung: %v", err)
	}
	unhang()
	p.sweeping.Wait()
	if _, err := os.Stat(b.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the dead prober's bundle is still there once runc answered: %v", err)
	}
}

//go:build linux

package restorehook

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// inNewNamespaces starts a process in network and IPC namespaces of its
// own (lo down, the kernel's defaults), or skips the test where that needs
// privileges it lacks.
func inNewNamespaces(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: new namespaces")
	}
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWNET | unix.CLONE_NEWIPC}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// inNS runs fn in process pid's namespace ns and fails the test on error.
func inNS(t *testing.T, pid int, ns string, fn func() error) {
	t.Helper()
	if err := inNamespace(pid, ns, fn); err != nil {
		t.Fatal(err)
	}
}

// loUp reports whether lo is up in process pid's network namespace.
func loUp(t *testing.T, pid int) bool {
	t.Helper()
	var up bool
	inNS(t, pid, "net", func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		ifr, _ := unix.NewIfreq("lo")
		if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
			return err
		}
		up = ifr.Uint16()&unix.IFF_UP != 0
		return nil
	})
	return up
}

// sysctl reads a sysctl in process pid's namespace ns.
func sysctl(t *testing.T, pid int, ns, key string) string {
	t.Helper()
	var v string
	inNS(t, pid, ns, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
		v = strings.TrimSpace(string(b))
		return err
	})
	return v
}

// ownSysctl reads a sysctl in the test's own namespaces.
func ownSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/")))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func specWith(sysctls map[string]string, namespaces ...specs.LinuxNamespace) *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Namespaces: namespaces, Sysctl: sysctls}}
}

// The hook, given the state runc passes it, reads the spec from the
// bundle, sets lo up and writes the spec's network sysctls (a name with
// slashes too, as runc reads it) and, in an IPC namespace joined by path,
// its IPC ones, in the process's namespaces, not in the test's own; run
// again, it changes nothing.
func TestRunHook(t *testing.T) {
	pid := inNewNamespaces(t)
	if loUp(t, pid) {
		t.Fatal("lo is up in a new network namespace already: the test shows nothing")
	}
	// The test's own values, read on its own threads: a thread the hook's
	// code moved into the container's namespaces may be the main one (it
	// stays there, locked), so /proc/<test>/ns is no reference.
	hostSomaxconn, hostMsgmax := ownSysctl(t, "net.core.somaxconn"), ownSysctl(t, "kernel.msgmax")
	if hostSomaxconn == "1001" || hostMsgmax == "9001" {
		t.Fatal("the test's own namespaces have the values the test sets")
	}
	bundle := t.TempDir()
	// The IPC namespace joined by path, as a pod's containers join the
	// sandbox's (a new one is CRIU's to restore, after the hook).
	spec := specWith(map[string]string{"net/core/somaxconn": "1001", "kernel.msgmax": "9001"},
		specs.LinuxNamespace{Type: specs.NetworkNamespace}, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: fmt.Sprintf("/proc/%d/ns/ipc", pid)})
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	state := fmt.Sprintf(`{"ociVersion":"1.2.0","id":"c","status":"creating","pid":%d,"bundle":%q}`, pid, bundle)
	for i := 0; i < 2; i++ {
		if err := RunHook(strings.NewReader(state)); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		if !loUp(t, pid) {
			t.Fatalf("run %d: lo is still down", i+1)
		}
		if got := sysctl(t, pid, "net", "net.core.somaxconn"); got != "1001" {
			t.Fatalf("run %d: net.core.somaxconn %s in the container", i+1, got)
		}
		if got := sysctl(t, pid, "ipc", "kernel.msgmax"); got != "9001" {
			t.Fatalf("run %d: kernel.msgmax %s in the container", i+1, got)
		}
	}
	if ownSysctl(t, "net.core.somaxconn") != hostSomaxconn || ownSysctl(t, "kernel.msgmax") != hostMsgmax {
		t.Fatal("the hook wrote the test's own namespaces")
	}
}

// A network namespace joined by path keeps its lo as it is; a sysctl the
// kernel refuses is an error.
func TestApply(t *testing.T) {
	pid := inNewNamespaces(t)
	joined := specWith(nil, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: fmt.Sprintf("/proc/%d/ns/net", pid)})
	if err := Apply(pid, joined); err != nil {
		t.Fatal(err)
	}
	if loUp(t, pid) {
		t.Fatal("lo set up in a namespace the spec joins by path")
	}
	bad := specWith(map[string]string{"net.core.somaxconn": "not-a-number"}, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	if err := Apply(pid, bad); err == nil || !strings.Contains(err.Error(), "net.core.somaxconn") {
		t.Fatalf("a value the kernel refuses: %v", err)
	}
	missing := specWith(map[string]string{"net.core.no_such_sysctl": "1"}, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	if err := Apply(pid, missing); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("a sysctl the namespace does not have: %v", err)
	}
	// The hook's own namespace (the node's, here the test's, which a
	// child started without new namespaces shares): refused.
	same := exec.Command("sleep", "60")
	if err := same.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { same.Process.Kill(); same.Wait() }()
	if err := Apply(same.Process.Pid, specWith(map[string]string{"net.core.somaxconn": "1001"}, specs.LinuxNamespace{Type: specs.NetworkNamespace})); err == nil ||
		!strings.Contains(err.Error(), "own net namespace") {
		t.Fatalf("the hook's own network namespace: %v", err)
	}
	if ownSysctl(t, "net.core.somaxconn") == "1001" {
		t.Fatal("the test's own namespace was written")
	}
	// An IPC namespace of the container's own is CRIU's: not written.
	ipcOwn := specWith(map[string]string{"kernel.msgmax": "9002"}, specs.LinuxNamespace{Type: specs.IPCNamespace})
	if err := Apply(pid, ipcOwn); err != nil {
		t.Fatal(err)
	}
	if got := sysctl(t, pid, "ipc", "kernel.msgmax"); got == "9002" {
		t.Fatal("the hook wrote an IPC sysctl into a namespace CRIU restores")
	}
}

func TestSysctlKey(t *testing.T) {
	for in, want := range map[string]string{
		"net.ipv4.ip_forward":              "net.ipv4.ip_forward",
		"net/ipv4/ip_forward":              "net.ipv4.ip_forward",
		"net/ipv4/conf/eth0.100/rp_filter": "net.ipv4.conf.eth0/100.rp_filter",
		"net.ipv4.conf.eth0/100.rp_filter": "net.ipv4.conf.eth0/100.rp_filter",
		"kernel":                           "kernel",
	} {
		if got := SysctlKey(in); got != want {
			t.Errorf("SysctlKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// With a user namespace, runc writes sysctls from inside it; the hook
// cannot, so such a restore is refused (cold start).
func TestCheck(t *testing.T) {
	userns := specWith(map[string]string{"net.ipv4.ping_group_range": "0 0"},
		specs.LinuxNamespace{Type: specs.NetworkNamespace}, specs.LinuxNamespace{Type: specs.UserNamespace})
	if err := Check(userns); err == nil || !strings.Contains(err.Error(), "user namespace") {
		t.Fatalf("sysctls with a user namespace: %v", err)
	}
	if err := Check(specWith(nil, specs.LinuxNamespace{Type: specs.NetworkNamespace}, specs.LinuxNamespace{Type: specs.UserNamespace})); err != nil {
		t.Fatalf("a user namespace without sysctls: %v", err)
	}
	if err := Check(specWith(map[string]string{"net.core.somaxconn": "1"}, specs.LinuxNamespace{Type: specs.NetworkNamespace})); err != nil {
		t.Fatalf("sysctls without a user namespace: %v", err)
	}
}

func TestRunHookBadState(t *testing.T) {
	for _, state := range []string{``, `{`, `{"pid":0}`, `{"pid":-3}`, `{"pid":1,"bundle":"/nonexistent"}`} {
		if err := RunHook(strings.NewReader(state)); err == nil {
			t.Errorf("state %q: no error", state)
		}
	}
	if err := Apply(1<<30, specWith(nil, specs.LinuxNamespace{Type: specs.NetworkNamespace})); err == nil {
		t.Error("a pid that does not exist: no error")
	}
}

func TestNeeded(t *testing.T) {
	for _, c := range []struct {
		name string
		spec *specs.Spec
		want bool
	}{
		{"runc makes the network namespace", specWith(nil, specs.LinuxNamespace{Type: specs.PIDNamespace}, specs.LinuxNamespace{Type: specs.NetworkNamespace}), true},
		{"a pod's, joined by path", specWith(nil, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/var/run/netns/cni-1"}), false},
		{"the host's", specWith(nil, specs.LinuxNamespace{Type: specs.PIDNamespace}), false},
		{"an IPC sysctl, its own IPC namespace (CRIU's)", specWith(map[string]string{"kernel.shmmax": "1"}, specs.LinuxNamespace{Type: specs.IPCNamespace}), false},
		{"an IPC sysctl, an IPC namespace joined by path", specWith(map[string]string{"kernel.shmmax": "1"}, specs.LinuxNamespace{Type: specs.IPCNamespace, Path: "/x"}), true},
		{"a network sysctl with slashes", specWith(map[string]string{"net/core/somaxconn": "1"}, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/x"}), true},
		{"a pod's with a network sysctl", specWith(map[string]string{"net.ipv4.ip_forward": "1"}, specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: "/x"}), true},
		{"only a UTS sysctl", specWith(map[string]string{"kernel.domainname": "d"}, specs.LinuxNamespace{Type: specs.UTSNamespace}), false},
		{"no linux section", &specs.Spec{}, false},
		{"an I/O priority", withIOPriority(specWith(nil), specs.IOPRIO_CLASS_IDLE, 0), true},
	} {
		if got := Needed(c.spec); got != c.want {
			t.Errorf("%s: %v", c.name, got)
		}
	}
}

func TestHook(t *testing.T) {
	h := Hook("/usr/local/bin/containerd-shim-snapboot-v1")
	if h.Path != "/usr/local/bin/containerd-shim-snapboot-v1" || len(h.Args) != 2 || h.Args[1] != HookArg || h.Timeout == nil || *h.Timeout <= 0 {
		t.Fatalf("hook %+v", h)
	}
}

func withIOPriority(s *specs.Spec, class specs.IOPriorityClass, prio int) *specs.Spec {
	s.Process = &specs.Process{IOPriority: &specs.LinuxIOPriority{Class: class, Priority: prio}}
	return s
}

func TestIOPriority(t *testing.T) {
	for _, c := range []struct {
		class specs.IOPriorityClass
		prio  int
		want  int
		bad   string
	}{
		{class: specs.IOPRIO_CLASS_RT, prio: 0, want: 1 << 13},
		{class: specs.IOPRIO_CLASS_BE, prio: 4, want: 2<<13 | 4},
		{class: specs.IOPRIO_CLASS_IDLE, prio: 7, want: 3<<13 | 7},
		{class: "IOPRIO_CLASS_NONE", bad: "class"},
		{class: specs.IOPRIO_CLASS_BE, prio: 8, bad: "0 to 7"},
		{class: specs.IOPRIO_CLASS_BE, prio: -1, bad: "0 to 7"},
	} {
		s := withIOPriority(specWith(nil), c.class, c.prio)
		got, ok, err := IOPriority(s)
		if c.bad != "" {
			if err == nil || !strings.Contains(err.Error(), c.bad) || Check(s) == nil {
				t.Errorf("%s %d: %v, want an error about %s from IOPriority and Check", c.class, c.prio, err, c.bad)
			}
			continue
		}
		if err != nil || !ok || got != c.want {
			t.Errorf("%s %d: %#x %v %v, want %#x", c.class, c.prio, got, ok, err, c.want)
		}
	}
	rt := withIOPriority(specWith(nil, specs.LinuxNamespace{Type: specs.UserNamespace}), specs.IOPRIO_CLASS_RT, 0)
	if err := Check(rt); err == nil || !strings.Contains(err.Error(), "real-time") {
		t.Errorf("the real-time class with a user namespace: %v, want a refusal", err)
	}
	if err := Check(withIOPriority(specWith(nil, specs.LinuxNamespace{Type: specs.UserNamespace}), specs.IOPRIO_CLASS_BE, 0)); err != nil {
		t.Errorf("the best-effort class with a user namespace: %v", err)
	}
	if _, ok, err := IOPriority(specWith(nil)); ok || err != nil {
		t.Errorf("a spec without one: %v %v", ok, err)
	}
}

// ioprioOf is ioprio_get(2) of one thread.
func ioprioOf(t *testing.T, tid int) int {
	t.Helper()
	v, _, errno := unix.Syscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	return int(v)
}

// The hook gives the restored root task the spec's I/O priority, and what
// it forks afterwards inherits it, as a cold start's children do.
func TestApplyIOPriority(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the real-time class")
	}
	// A shell that forks a child only once it is told to, as CRIU's root
	// task forks the others after the hook.
	dir := t.TempDir()
	fifo := filepath.Join(dir, "go")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	root := exec.Command("/bin/sh", "-c", `read x < "$1"; sleep 60 & echo $! > "$2"; wait`, "sh", fifo, filepath.Join(dir, "child"))
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { root.Process.Kill(); root.Wait() })
	want := 1<<13 | 3 // IOPRIO_CLASS_RT, 3
	if ioprioOf(t, root.Process.Pid) == want {
		t.Fatal("the test's process already has the priority the test sets")
	}
	if err := Apply(root.Process.Pid, withIOPriority(specWith(nil), specs.IOPRIO_CLASS_RT, 3)); err != nil {
		t.Fatal(err)
	}
	if got := ioprioOf(t, root.Process.Pid); got != want {
		t.Fatalf("root task's I/O priority %#x, want %#x", got, want)
	}
	if err := os.WriteFile(fifo, []byte("go\n"), 0); err != nil {
		t.Fatal(err)
	}
	var child int
	deadline := time.Now().Add(10 * time.Second)
	for child == 0 && time.Now().Before(deadline) {
		data, _ := os.ReadFile(filepath.Join(dir, "child"))
		child, _ = strconv.Atoi(strings.TrimSpace(string(data)))
		time.Sleep(10 * time.Millisecond)
	}
	if child == 0 {
		t.Fatal("the child was not forked")
	}
	defer unix.Kill(child, unix.SIGKILL)
	if got := ioprioOf(t, child); got != want {
		t.Fatalf("the child forked after the hook has I/O priority %#x, want %#x", got, want)
	}
}

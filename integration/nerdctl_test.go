//go:build integration && linux

package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// nerdctlCmd runs nerdctl against the test containerd, in the test
// namespace, with its state under tmpDir and no config of the host's.
func nerdctlCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := filepath.Join(tmpDir, "nerdctl")
	full := append([]string{"--address", containerdAddr, "--namespace", namespace,
		"--data-root", filepath.Join(root, "data"), "--cgroup-manager", "cgroupfs",
		"--cni-netconfpath", filepath.Join(root, "cni"), "--hosts-dir", filepath.Join(root, "certs.d")}, args...)
	cmd := exec.CommandContext(ctx, "nerdctl", full...)
	cmd.Env = append(os.Environ(), "NERDCTL_TOML="+filepath.Join(root, "nerdctl.toml"))
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), &cmdError{args: full, err: err, stderr: errOut.String()}
	}
	return out.String(), nil
}

type cmdError struct {
	args   []string
	err    error
	stderr string
}

func (e *cmdError) Error() string {
	return "nerdctl " + strings.Join(e.args, " ") + ": " + e.err.Error() + ": " + strings.TrimSpace(e.stderr)
}

func mustNerdctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := nerdctlCmd(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// nerdctlRun starts a detached counter with nerdctl and the snapboot
// runtime (restored from ref if it is not ""), and returns its full ID.
// flags are more `nerdctl run` flags; without them it runs with --net host.
func nerdctlRun(t *testing.T, name, ref string, flags ...string) string {
	t.Helper()
	if len(flags) == 0 {
		flags = []string{"--net", "host"}
	}
	args := append([]string{"run", "-d", "--name", name, "--runtime", snapbootRuntime}, flags...)
	if ref != "" {
		args = append(args, "--annotation", "snapboot.dev/checkpoint="+ref)
	}
	args = append(args, busyboxImage, "/bin/sh", "-c", counterScript)
	id := strings.TrimSpace(mustNerdctl(t, args...))
	t.Cleanup(func() { nerdctlCmd(t, "rm", "-f", name) })
	if len(id) != 64 {
		t.Fatalf("nerdctl run printed %q, not a container ID", id)
	}
	return id
}

// nerdctlCount waits until container name's log (nerdctl logs) counts to
// at least atLeast, and returns the numbers it printed.
func nerdctlCount(t *testing.T, name string, atLeast int) []int {
	t.Helper()
	var ns []int
	waitFor(t, 30*time.Second, name+" to count to "+strconv.Itoa(atLeast), func() bool {
		out, err := nerdctlCmd(t, "logs", name)
		if err != nil {
			return false
		}
		ns = ns[:0]
		for _, l := range strings.Split(out, "\n") {
			if n, err := strconv.Atoi(strings.TrimSpace(l)); err == nil {
				ns = append(ns, n)
			}
		}
		return len(ns) > 0 && ns[len(ns)-1] >= atLeast
	})
	return ns
}

// TestNerdctl runs the user's path with nerdctl instead of ctr: a donor
// started with `nerdctl run --runtime io.containerd.snapboot.v1`,
// checkpointed with the snapboot CLI, and a clone started with `nerdctl
// run --annotation snapboot.dev/checkpoint=...`, which is restored (its
// OCI hooks, nerdctl's own, run in the restore), counts on from the donor
// in `nerdctl logs`, shows in `nerdctl ps`, and goes with `nerdctl rm -f`.
func TestNerdctl(t *testing.T) {
	requireShim(t)
	if _, err := exec.LookPath("nerdctl"); err != nil {
		t.Fatal("nerdctl is missing (hack/install-deps.sh installs it)")
	}
	suffix := runToken
	donorName, cloneName := "nerd-donor-"+suffix, "nerd-clone-"+suffix
	donor := nerdctlRun(t, donorName, "")
	nerdctlCount(t, donorName, 10)

	ref := registryAddr + "/it/nerdctl:v1"
	mustSnapboot(t, "checkpoint", donor, ref)
	atDump := nerdctlCount(t, donorName, 1)
	mustNerdctl(t, "rm", "-f", donorName)

	offset := containerdLogOffset()
	clone := nerdctlRun(t, cloneName, ref)
	line := logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if !strings.Contains(line, ref) {
		t.Errorf("the restore's log line names another checkpoint:\n%s", line)
	}
	ns := nerdctlCount(t, cloneName, atDump[len(atDump)-1]+5)
	if ns[0] <= 10 {
		t.Fatalf("the clone counted from %d, the donor had counted to 10 before its dump", ns[0])
	}
	// runc never creates a restored container: nerdctl's createRuntime
	// hook, which logs into the container's state directory, ran in the
	// restore.
	if hookLogs, _ := filepath.Glob(filepath.Join(tmpDir, "nerdctl", "data", "*", "containers", namespace, clone, "oci-hook.createRuntime.log")); len(hookLogs) != 1 {
		t.Errorf("no log of nerdctl's createRuntime hook for the clone: %v", hookLogs)
	}
	ps := mustNerdctl(t, "ps", "--format", "{{.Names}} {{.Status}}")
	if !strings.Contains(ps, cloneName+" Up") {
		t.Errorf("nerdctl ps does not show the clone up:\n%s", ps)
	}
	mustNerdctl(t, "rm", "-f", cloneName)
	if out, _ := nerdctlCmd(t, "ps", "-a", "--format", "{{.Names}}"); strings.Contains(out, cloneName) {
		t.Errorf("the clone is still listed after nerdctl rm -f:\n%s", out)
	}
}

// TestNerdctlSysctls restores a clone whose spec sets other sysctls than
// its donor's (nerdctl run --sysctl, in a network namespace runc makes,
// --net none): the clone has its own spec's values, as its cold start
// would, not the kernel's defaults (the network namespace runc's restore
// leaves empty) or the donor's (the IPC namespace CRIU restores).
func TestNerdctlSysctls(t *testing.T) {
	requireShim(t)
	sysctls := func(somaxconn, msgmax string) []string {
		return []string{"--net", "none", "--sysctl", "net.core.somaxconn=" + somaxconn, "--sysctl", "kernel.msgmax=" + msgmax}
	}
	read := func(name string) string {
		return strings.Join(strings.Fields(mustNerdctl(t, "exec", name, "cat", "/proc/sys/net/core/somaxconn", "/proc/sys/kernel/msgmax")), " ")
	}
	donorName, cloneName := "nerd-sysctl-donor-"+runToken, "nerd-sysctl-clone-"+runToken
	donor := nerdctlRun(t, donorName, "", sysctls("1000", "9000")...)
	nerdctlCount(t, donorName, 5)
	if got := read(donorName); got != "1000 9000" {
		t.Fatalf("the donor's sysctls: %s, want 1000 9000", got)
	}
	ref := registryAddr + "/it/nerdctl:sysctls"
	mustSnapboot(t, "checkpoint", donor, ref)
	mustNerdctl(t, "rm", "-f", donorName)

	offset := containerdLogOffset()
	clone := nerdctlRun(t, cloneName, ref, sysctls("1001", "9001")...)
	logLine(t, offset, "snapboot.restore", clone, 60*time.Second)
	if ns := nerdctlCount(t, cloneName, 8); ns[0] <= 5 {
		t.Fatalf("the clone counted from %d: it cold-started", ns[0])
	}
	if got := read(cloneName); got != "1001 9001" {
		t.Fatalf("the restored clone's sysctls: %s, want its spec's 1001 9001", got)
	}
}

// TestNodePIDsNeedTheirCapabilities restores a checkpoint of a donor that
// ran in the node's PID namespace (`nerdctl run --pid host`, a spec without
// a PID namespace, as a Kubernetes hostPID pod's) into a clone there with
// the default capabilities. CRIU would give the clone's processes the
// checkpoint's PIDs, chosen in the node's PID namespace, which the clone
// could not do: a cold start gets the next free ones. The previous build
// restored it with the donor's PID; the clone must cold-start.
func TestNodePIDsNeedTheirCapabilities(t *testing.T) {
	requireShim(t)
	suffix := runToken
	donorName, cloneName := "nerd-hostpid-donor-"+suffix, "nerd-hostpid-clone-"+suffix
	flags := []string{"--net", "host", "--pid", "host"}
	donor := nerdctlRun(t, donorName, "", flags...)
	nerdctlCount(t, donorName, 5)
	donorPID := taskPID(t, donor)
	ref := registryAddr + "/it/nerdctl:hostpid"
	mustSnapboot(t, "checkpoint", "--exit", donor, ref)
	mustNerdctl(t, "rm", "-f", donorName)

	offset := containerdLogOffset()
	clone := nerdctlRun(t, cloneName, ref, flags...)
	ns := nerdctlCount(t, cloneName, 3) // restored or cold-started
	if pid := taskPID(t, clone); pid == donorPID {
		t.Errorf("the clone has the donor's PID %d in the node's PID namespace", pid)
	}
	line := logLine(t, offset, "snapboot.fallback", clone, 60*time.Second)
	if !strings.Contains(line, "CRIU would give the restored processes the checkpoint's PIDs in the node's") || !strings.Contains(line, "reason_kind=spec") {
		t.Errorf("fallback reason:\n%s", line)
	}
	if ns[0] != 1 {
		t.Errorf("the cold start counted from %d", ns[0])
	}
}

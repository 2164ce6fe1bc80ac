//go:build linux

package restore

import (
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/snapboot/snapboot/restorehook"
)

// utsOf returns the host name and domain name of process pid's UTS
// namespace.
func utsOf(t *testing.T, pid int) (host, domain string) {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/uts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	host, domain, err = restorehook.UTSNames(f)
	if err != nil {
		t.Fatal(err)
	}
	return host, domain
}

// A restored container's own UTS namespace gets its spec's names, this
// node's where the spec sets none, and the kernel.domainname sysctl over
// the spec's domain name; CRIU had put the donor's there.
func TestSetSpecHostname(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a UTS namespace")
	}
	var node unix.Utsname
	unix.Uname(&node)
	nodeHost, nodeDomain := unix.ByteSliceToString(node.Nodename[:]), unix.ByteSliceToString(node.Domainname[:])
	own := []specs.LinuxNamespace{{Type: specs.UTSNamespace}}
	for _, c := range []struct {
		name              string
		spec              *specs.Spec
		wantHost, wantDom string
	}{
		{"the spec's names", &specs.Spec{Hostname: "clone", Domainname: "example.org", Linux: &specs.Linux{Namespaces: own}}, "clone", "example.org"},
		{"none in the spec", &specs.Spec{Linux: &specs.Linux{Namespaces: own}}, nodeHost, nodeDomain},
		{"the sysctl wins", &specs.Spec{Hostname: "clone", Domainname: "example.org", Linux: &specs.Linux{Namespaces: own,
			Sysctl: map[string]string{"kernel.domainname": "sysctl.example"}}}, "clone", "sysctl.example"},
		{"the sysctl with slashes", &specs.Spec{Linux: &specs.Linux{Namespaces: own,
			Sysctl: map[string]string{"kernel/domainname": "slash.example"}}}, nodeHost, "slash.example"},
	} {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUTS}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pid := cmd.Process.Pid
		// What CRIU restores: the donor's names.
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/uts")
		if err == nil {
			err = setUTSNames(f, "donor", "donor.example")
			f.Close()
		}
		if h, d := utsOf(t, pid); err != nil || h != "donor" || d != "donor.example" {
			t.Fatalf("the donor's names: %q %q %v", h, d, err)
		}
		err = SetSpecHostname(c.spec, uint32(pid))
		host, dom := utsOf(t, pid)
		cmd.Process.Kill()
		cmd.Wait()
		if err != nil || host != c.wantHost || dom != c.wantDom {
			t.Errorf("%s: %q %q (%v), want %q %q", c.name, host, dom, err, c.wantHost, c.wantDom)
		}
	}
	// A namespace joined by path is the pod's: left alone.
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUTS}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pod := "/proc/" + strconv.Itoa(cmd.Process.Pid) + "/ns/uts"
	joined := &specs.Spec{Hostname: "clone", Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UTSNamespace, Path: pod}},
		Sysctl: map[string]string{"kernel/domainname": "x"}}}
	if err := SetSpecHostname(joined, uint32(cmd.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	if h, _ := utsOf(t, cmd.Process.Pid); h != nodeHost {
		t.Fatalf("a joined namespace was renamed: %q", h)
	}
}

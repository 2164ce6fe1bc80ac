// Package compat describes this node (architecture, kernel, CRIU version,
// CPU) and decides whether a checkpoint's metadata says it can be restored
// here. It is the pre-flight check that runs before any large download.
package compat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/snapboot/snapboot/oci"
)

// ErrIncompatible is wrapped by every reason a checkpoint can't run here.
var ErrIncompatible = errors.New("checkpoint can't be restored on this node")

// Node is what this machine offers a restore.
type Node struct {
	Architecture string
	Kernel       string
	// CRIUVersion is CRIU's version as major*10000+minor*100+patch (40201).
	CRIUVersion int
	CPU         oci.CPU
}

// CRIUVersionString spells CRIUVersion as "4.2.1".
func (n *Node) CRIUVersionString() string {
	return VersionString(n.CRIUVersion)
}

// VersionString spells a version number such as 40201 as "4.2.1".
func VersionString(v int) string {
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// Host is the node's Host record, as the checkpoint side writes it into Metadata.
func (n *Node) Host() oci.Host {
	return oci.Host{Architecture: n.Architecture, OS: "linux", Kernel: n.Kernel, CPU: n.CPU}
}

// Check returns nil when the checkpoint described by m can be restored on
// n, and otherwise an error naming every reason, wrapping ErrIncompatible.
func Check(m *oci.Metadata, n *Node) error {
	var reasons []string
	if m.Host.Architecture != n.Architecture {
		reasons = append(reasons, fmt.Sprintf("architecture %s, node is %s", m.Host.Architecture, n.Architecture))
	}
	if m.Host.OS != "" && m.Host.OS != "linux" {
		reasons = append(reasons, fmt.Sprintf("os %s, node is linux", m.Host.OS))
	}
	want, err := oci.ParseVersion(m.CRIU.Version)
	if err != nil {
		reasons = append(reasons, err.Error())
	} else if n.CRIUVersion < want {
		// CRIU reads images written by older versions; not by newer ones.
		reasons = append(reasons, fmt.Sprintf("dumped by CRIU %s, node has CRIU %s", m.CRIU.Version, n.CRIUVersionString()))
	}
	if dk, ok := kernelVersion(m.Host.Kernel); ok {
		// A newer kernel may have given the donor state (syscalls, rseq,
		// socket options) an older one can't restore: refuse, to be safe.
		if nk, ok := kernelVersion(n.Kernel); ok && nk < dk {
			reasons = append(reasons, fmt.Sprintf("dumped on kernel %s, node runs the older %s", m.Host.Kernel, n.Kernel))
		}
	}
	if missing := missingFlags(m.Host.CPU.Flags, n.CPU.Flags); len(missing) > 0 {
		if len(missing) > 8 {
			missing = append(missing[:8], fmt.Sprintf("and %d more", len(missing)-8))
		}
		reasons = append(reasons, "node CPU lacks flags the donor had: "+strings.Join(missing, " "))
	}
	if len(reasons) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s", ErrIncompatible, strings.Join(reasons, "; "))
}

// kernelVersion turns "6.18.44-fc-v782" into 6*1000+18, comparing major
// and minor versions only.
func kernelVersion(release string) (int, bool) {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return 0, false
	}
	return major*1000 + minor, true
}

// missingFlags are the donor's CPU flags that the node lacks.
func missingFlags(donor, node []string) []string {
	have := make(map[string]bool, len(node))
	for _, f := range node {
		have[f] = true
	}
	var missing []string
	for _, f := range donor {
		if !have[f] && !volatileFlags[f] {
			missing = append(missing, f)
		}
	}
	slices.Sort(missing)
	return missing
}

// volatileFlags are /proc/cpuinfo flags that describe the kernel's or the
// hypervisor's view rather than instructions an application can execute.
var volatileFlags = map[string]bool{
	"hypervisor": true, "tsc_known_freq": true, "constant_tsc": true, "nonstop_tsc": true,
	"cpuid": true, "rep_good": true, "nopl": true, "xtopology": true, "tsc_reliable": true,
	"tsc_deadline_timer": true, "arat": true, "pti": true, "ssbd": true, "ibrs": true, "ibpb": true,
	"stibp": true, "ibrs_enhanced": true, "md_clear": true, "flush_l1d": true, "arch_capabilities": true,
	"invpcid_single": true, "vmmcall": true, "user_shstk": true,
}

// ReadCPU reads the first processor's vendor, model and flags from cpuinfo.
func ReadCPU(path string) (oci.CPU, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return oci.CPU{}, fmt.Errorf("read %s: %w", path, err)
	}
	return parseCPUInfo(data), nil
}

func parseCPUInfo(data []byte) oci.CPU {
	var c oci.CPU
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" && (c.Flags != nil || c.Model != "") {
			break // first processor only
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "vendor_id", "CPU implementer":
			c.Vendor = v
		case "model name":
			c.Model = v
		case "flags", "Features":
			c.Flags = strings.Fields(v)
			slices.Sort(c.Flags)
		}
	}
	return c
}

// goarch is runtime.GOARCH, a variable so tests can pretend.
var goarch = runtime.GOARCH

// ParseCRIUVersionOutput reads the version from `criu --version` output
// ("Version: 4.2.1"), for callers that can't use CRIU's RPC interface.
func ParseCRIUVersionOutput(out string) (int, error) {
	for _, line := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Version:"); ok {
			return oci.ParseVersion(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no version in criu --version output %q", out)
}

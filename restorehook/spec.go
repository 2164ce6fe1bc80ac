// Package restorehook does, in a restored container's namespaces, what
// runc does when it creates a container and not when it restores one. runc
// runs it as a createRuntime hook of the restore (the shim's binary, with
// HookArg), once CRIU has made the namespaces, before it restores sockets
// and resumes the app.
//
//   - lo up, in a network namespace runc makes: runc's restore has CRIU
//     leave that namespace empty, for the spec's hooks to set up, and never
//     sets lo up as its create does. The clone would have no 127.0.0.1,
//     which a cold start has.
//   - The spec's sysctls of the network namespace, and of an IPC namespace
//     the spec joins by path: runc's create writes them; its restore does
//     not, so a new network namespace kept the kernel's defaults. (An IPC
//     namespace of the container's own CRIU restores after the hook, from
//     the image, where confine puts the spec's values, as it puts the UTS
//     names and kernel.domainname into the UTS namespace's image.)
//   - The spec's I/O priority (process.ioPriority): runc's create sets it
//     on the container's first process, whose children and threads inherit
//     it; CRIU neither saves nor restores one, so the clone had the shim's.
//     The hook sets it on the restored root task, which CRIU has not let
//     fork a child or a thread yet.
package restorehook

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// HookArg is the argument the hook's binary (the shim's) is run with.
const HookArg = "snapboot-restore-hook"

// Hook returns the createRuntime hook that runs binary (the shim's
// executable) with HookArg.
func Hook(binary string) specs.Hook {
	timeout := 10
	return specs.Hook{Path: binary, Args: []string{binary, HookArg}, Timeout: &timeout}
}

// Needed reports whether a restore with spec needs the hook: the spec has
// runc make the network namespace, sets sysctls the hook writes, or an I/O
// priority.
func Needed(spec *specs.Spec) bool {
	return newNetworkNamespace(spec) || len(hookSysctls(spec)) > 0 || (spec != nil && spec.Process != nil && spec.Process.IOPriority != nil)
}

// ioPriorityClasses are the spec's I/O scheduling classes, by the kernel's
// numbers.
var ioPriorityClasses = map[specs.IOPriorityClass]int{specs.IOPRIO_CLASS_RT: 1, specs.IOPRIO_CLASS_BE: 2, specs.IOPRIO_CLASS_IDLE: 3}

// IOPriority returns the value ioprio_set(2) takes for the spec's I/O
// priority, as runc computes it, and false when the spec sets none.
func IOPriority(spec *specs.Spec) (int, bool, error) {
	if spec == nil || spec.Process == nil || spec.Process.IOPriority == nil {
		return 0, false, nil
	}
	p := spec.Process.IOPriority
	class, ok := ioPriorityClasses[p.Class]
	if !ok {
		return 0, false, fmt.Errorf("unknown I/O priority class %q in the spec", p.Class)
	}
	if p.Priority < 0 || p.Priority > 7 {
		return 0, false, fmt.Errorf("I/O priority %d in the spec, want 0 to 7", p.Priority)
	}
	return class<<13 | p.Priority, true, nil
}

// Check says why the hook cannot do for spec what runc's create does, or
// returns nil. runc writes a spec's sysctls from inside the container's
// user namespace, where the ids some of them hold (ping_group_range's)
// are the container's; the hook writes as the node's root.
func Check(spec *specs.Spec) error {
	_, userns := SpecNamespace(spec, specs.UserNamespace)
	if prio, ok, err := IOPriority(spec); err != nil {
		return err
	} else if ok && userns && prio>>13 == ioPriorityClasses[specs.IOPRIO_CLASS_RT] {
		// runc sets it from inside the user namespace, where the real-time
		// class takes a capability of the node's: its cold start fails.
		return errors.New("the spec sets the real-time I/O priority class and has a user namespace: runc cannot set it, snapboot's restore hook would")
	}
	if spec == nil || spec.Linux == nil || len(hookSysctls(spec)) == 0 {
		return nil
	}
	if userns {
		return errors.New("the spec sets sysctls and has a user namespace: runc writes them from inside it, snapboot's restore hook cannot")
	}
	return nil
}

// SysctlKey returns a spec's sysctl name with dots between its parts, as
// runc reads it: "net/ipv4/ip_forward" is "net.ipv4.ip_forward" (the
// first separator says which one the name uses; the other one is then
// part of a name, as in an interface's "eth0.100").
func SysctlKey(key string) string {
	i := strings.IndexAny(key, "./")
	if i < 0 || key[i] == '.' {
		return key
	}
	return strings.Map(func(r rune) rune {
		switch r {
		case '/':
			return '.'
		case '.':
			return '/'
		}
		return r
	}, key)
}

// Sysctl returns the spec's value of sysctl key (dotted), as the hook and
// runc read it: of a name given both with dots and with slashes, the last
// in sorted order.
func Sysctl(spec *specs.Spec, key string) (value string, ok bool) {
	if spec == nil || spec.Linux == nil {
		return "", false
	}
	for _, k := range slices.Sorted(maps.Keys(spec.Linux.Sysctl)) {
		if SysctlKey(k) == key {
			value, ok = spec.Linux.Sysctl[k], true
		}
	}
	return value, ok
}

// IsIPCSysctl reports whether key (dotted) is a sysctl of the IPC
// namespace, as runc's validation of a spec groups them.
func IsIPCSysctl(key string) bool {
	return strings.HasPrefix(key, "fs.mqueue.") || strings.HasPrefix(key, "kernel.msg") ||
		strings.HasPrefix(key, "kernel.sem") || strings.HasPrefix(key, "kernel.shm")
}

// hookSysctls returns the spec's sysctls the hook writes, by the namespace
// they go in (its name under /proc/PID/ns), with dotted names: those of
// the network namespace, and those of the IPC namespace where the spec
// joins it by path. An IPC namespace of the container's own is restored
// by CRIU after the hook, from the image, where confine puts the spec's
// values.
func hookSysctls(spec *specs.Spec) map[string]map[string]string {
	if spec == nil || spec.Linux == nil || len(spec.Linux.Sysctl) == 0 {
		return nil
	}
	ipc, _ := SpecNamespace(spec, specs.IPCNamespace)
	joinedIPC := ipc.Path != ""
	out := map[string]map[string]string{}
	// A name given both with dots and with slashes: the last in sorted
	// order wins, here and in confine.
	for _, key := range slices.Sorted(maps.Keys(spec.Linux.Sysctl)) {
		value := spec.Linux.Sysctl[key]
		key = SysctlKey(key)
		ns := ""
		switch {
		case strings.HasPrefix(key, "net."):
			ns = "net"
		case IsIPCSysctl(key) && joinedIPC:
			ns = "ipc"
		default:
			continue
		}
		if out[ns] == nil {
			out[ns] = map[string]string{}
		}
		out[ns][key] = value
	}
	return out
}

// newNetworkNamespace reports whether the spec has runc make the
// container's network namespace (rather than share the host's, or join
// one by path, as a pod's containers do).
func newNetworkNamespace(spec *specs.Spec) bool {
	ns, ok := SpecNamespace(spec, specs.NetworkNamespace)
	return ok && ns.Path == ""
}

// SpecNamespace returns the spec's namespace of type typ; ok is false when
// the spec has none (the container shares the node's).
func SpecNamespace(spec *specs.Spec, typ specs.LinuxNamespaceType) (ns specs.LinuxNamespace, ok bool) {
	if spec == nil || spec.Linux == nil {
		return ns, false
	}
	for _, n := range spec.Linux.Namespaces {
		if n.Type == typ {
			ns, ok = n, true
		}
	}
	return ns, ok
}

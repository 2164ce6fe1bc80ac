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
//   - The spec's sysctls of the network and IPC namespaces: runc's create
//     writes them; its restore does not, so a new network namespace keeps
//     the kernel's defaults and an IPC namespace the donor's values, which
//     CRIU restores. (Those of the UTS namespace are the shim's, with the
//     host name, after the restore.)
package restorehook

import (
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
// runc make the network namespace, or sets sysctls the hook writes.
func Needed(spec *specs.Spec) bool {
	if spec == nil || spec.Linux == nil {
		return false
	}
	if newNetworkNamespace(spec) {
		return true
	}
	for key := range spec.Linux.Sysctl {
		if _, ok := sysctlNamespace(key); ok {
			return true
		}
	}
	return false
}

// newNetworkNamespace reports whether the spec has runc make the
// container's network namespace (rather than share the host's, or join
// one by path, as a pod's containers do).
func newNetworkNamespace(spec *specs.Spec) bool {
	if spec == nil || spec.Linux == nil {
		return false
	}
	for _, ns := range spec.Linux.Namespaces {
		if ns.Type == specs.NetworkNamespace {
			return ns.Path == ""
		}
	}
	return false
}

// sysctlNamespace returns the namespace (its name under /proc/PID/ns) a
// sysctl the hook writes belongs to, as runc's validation of a spec
// groups them; ok is false for the others.
func sysctlNamespace(key string) (ns string, ok bool) {
	switch {
	case strings.HasPrefix(key, "net."):
		return "net", true
	case strings.HasPrefix(key, "fs.mqueue."), strings.HasPrefix(key, "kernel.msg"),
		strings.HasPrefix(key, "kernel.sem"), strings.HasPrefix(key, "kernel.shm"):
		return "ipc", true
	}
	return "", false
}

package confine

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	ipcvar "github.com/checkpoint-restore/go-criu/v7/crit/images/ipc-var"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	"github.com/snapboot/snapboot/restorehook"
)

// ipcSysctls are the spec's sysctls of an IPC namespace that CRIU
// restores from ipcns-var-*.img, each with the field it sets there.
var ipcSysctls = map[string]func(e *ipcvar.IpcVarEntry, v string) error{
	"kernel.msgmax":             setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MsgCtlmax = proto.Uint32(n) }),
	"kernel.msgmnb":             setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MsgCtlmnb = proto.Uint32(n) }),
	"kernel.msgmni":             setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MsgCtlmni = proto.Uint32(n) }),
	"kernel.shmmax":             setUint(func(e *ipcvar.IpcVarEntry, n uint64) { e.ShmCtlmax = proto.Uint64(n) }),
	"kernel.shmall":             setUint(func(e *ipcvar.IpcVarEntry, n uint64) { e.ShmCtlall = proto.Uint64(n) }),
	"kernel.shmmni":             setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.ShmCtlmni = proto.Uint32(n) }),
	"kernel.shm_rmid_forced":    setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.ShmRmidForced = proto.Uint32(n) }),
	"fs.mqueue.queues_max":      setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MqQueuesMax = proto.Uint32(n) }),
	"fs.mqueue.msg_max":         setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MqMsgMax = proto.Uint32(n) }),
	"fs.mqueue.msgsize_max":     setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MqMsgsizeMax = proto.Uint32(n) }),
	"fs.mqueue.msg_default":     setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MqMsgDefault = proto.Uint32(n) }),
	"fs.mqueue.msgsize_default": setUint(func(e *ipcvar.IpcVarEntry, n uint32) { e.MqMsgsizeDefault = proto.Uint32(n) }),
	"kernel.sem": func(e *ipcvar.IpcVarEntry, v string) error {
		f := strings.Fields(v)
		if len(f) != 4 {
			return fmt.Errorf("want 4 numbers, got %q", v)
		}
		sem := make([]uint32, 4)
		for i, s := range f {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return err
			}
			sem[i] = uint32(n)
		}
		e.SemCtls = sem
		return nil
	},
}

// emptyImageSize is the size of a CRIU image without entries: its two
// magics.
const emptyImageSize = 8

// setUint parses a sysctl's value as an unsigned number of T's size and
// sets it with set.
func setUint[T uint32 | uint64](set func(*ipcvar.IpcVarEntry, T)) func(*ipcvar.IpcVarEntry, string) error {
	return func(e *ipcvar.IpcVarEntry, v string) error {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 8*int(unsafe.Sizeof(T(0))))
		if err != nil {
			return err
		}
		set(e, T(n))
		return nil
	}
}

// fitIPCSysctls gives the IPC namespace CRIU restores the spec's IPC
// sysctls: runc writes them into a container's IPC namespace when it
// creates one, and CRIU, restoring that namespace, writes the donor's
// (ipcns-var-*.img) after the hooks have run. It returns the images it
// changed. An IPC sysctl it cannot put in the image is refused: the cold
// start gets it.
//
// In an IPC namespace the spec joins (a pod's), CRIU writes the images'
// values, and makes the images' SysV objects, into that namespace, which
// other containers share: the images get that namespace's values as they
// are (read by current, this node's reader of a namespace's IPC sysctls),
// the spec's on top as runc writes them, and SysV objects there are
// refused. In an IPC namespace of the container's own, the images get
// what a new namespace has on this node (current("")), the spec's on top:
// a cold start's runc makes the namespace, and its /proc/sys is
// read-only, so the app could not have set others.
func fitIPCSysctls(imagesDir string, names []string, spec *specs.Spec, current func(path string) (map[string]string, error)) (map[string]*crit.CriuImage, error) {
	if spec.Linux == nil {
		return nil, nil
	}
	values := map[string]string{}
	var keys []string
	ns, ok := restorehook.SpecNamespace(spec, specs.IPCNamespace)
	if ok && ns.Path == "" {
		if current == nil {
			return nil, fmt.Errorf("%w: the sysctls of a new IPC namespace are unknown on this host", ErrRefused)
		}
		fresh, err := current("")
		if err != nil {
			return nil, fmt.Errorf("%w: a new IPC namespace's sysctls: %w", ErrRefused, err)
		}
		for key, value := range fresh {
			keys, values[key] = append(keys, key), value
		}
	}
	if ok && ns.Path != "" {
		for _, name := range names {
			for _, kind := range []string{"ipcns-shm-", "ipcns-msg-", "ipcns-sem-"} {
				if strings.HasPrefix(name, kind) && strings.HasSuffix(name, ".img") {
					if fi, err := os.Stat(filepath.Join(imagesDir, name)); err != nil || fi.Size() > emptyImageSize {
						return nil, fmt.Errorf("%w: %s has SysV IPC objects, which CRIU would make in the IPC namespace the spec joins (%s), as root", ErrRefused, name, ns.Path)
					}
				}
			}
		}
		if current == nil {
			return nil, fmt.Errorf("%w: the sysctls of the IPC namespace the spec joins are unknown on this host", ErrRefused)
		}
		joined, err := current(ns.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: the IPC namespace the spec joins: %w", ErrRefused, err)
		}
		for key, value := range joined {
			keys, values[key] = append(keys, key), value
		}
	}
	for name, value := range spec.Linux.Sysctl {
		key := restorehook.SysctlKey(name)
		if restorehook.IsIPCSysctl(key) {
			if _, ok := ipcSysctls[key]; !ok {
				return nil, fmt.Errorf("%w: the spec's sysctl %s is of the IPC namespace, which CRIU restores, and snapboot does not set it there", ErrRefused, name)
			}
			if _, seen := values[key]; !seen {
				keys = append(keys, key)
			}
			values[key] = value
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	slices.Sort(keys)
	out := map[string]*crit.CriuImage{}
	for _, name := range names {
		if !strings.HasPrefix(name, "ipcns-var-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		img, err := decodeImage(filepath.Join(imagesDir, name), &ipcvar.IpcVarEntry{})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrRefused, err)
		}
		if len(img.Entries) != 1 {
			return nil, fmt.Errorf("%w: %s has %d entries, want 1", ErrRefused, name, len(img.Entries))
		}
		e := img.Entries[0].Message.(*ipcvar.IpcVarEntry)
		for _, key := range keys {
			if err := ipcSysctls[key](e, values[key]); err != nil {
				return nil, fmt.Errorf("%w: the spec's sysctl %s=%q: %w", ErrRefused, key, values[key], err)
			}
		}
		out[name] = img
	}
	return out, nil
}

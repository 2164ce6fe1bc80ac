package confine

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	ipcvar "github.com/checkpoint-restore/go-criu/v7/crit/images/ipc-var"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// donorIPCVars writes the ipcns-var image of a donor that ran with the
// kernel's defaults, and returns its directory.
func donorIPCVars(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "ipcns-var-11.img"), "IPC_VAR", &ipcvar.IpcVarEntry{
		SemCtls: []uint32{32000, 1024000000, 500, 32000}, MsgCtlmax: proto.Uint32(8192), MsgCtlmnb: proto.Uint32(16384),
		MsgCtlmni: proto.Uint32(32000), AutoMsgmni: proto.Uint32(0), ShmCtlmax: proto.Uint64(1 << 62), ShmCtlall: proto.Uint64(1 << 62),
		ShmCtlmni: proto.Uint32(4096), ShmRmidForced: proto.Uint32(0), MqQueuesMax: proto.Uint32(256), MqMsgMax: proto.Uint32(10),
		MqMsgsizeMax: proto.Uint32(8192), MqMsgDefault: proto.Uint32(10), MqMsgsizeDefault: proto.Uint32(8192),
	})
	return dir
}

func withSysctls(kv map[string]string) *specs.Spec {
	return &specs.Spec{Linux: &specs.Linux{Sysctl: kv}}
}

// The spec's IPC sysctls go into the image CRIU restores the IPC namespace
// from; the donor's other values stay; other sysctls change nothing.
func TestFitIPCSysctls(t *testing.T) {
	dir := donorIPCVars(t)
	names := []string{"core-1.img", "ipcns-var-11.img"}
	spec := withSysctls(map[string]string{"kernel.msgmax": "9001", "kernel/shmmax": "68719476736", "kernel.sem": "250 32000 100 128",
		"fs.mqueue.msg_max": "64", "net.core.somaxconn": "1001"})
	out, err := fitIPCSysctls(dir, names, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	img := out["ipcns-var-11.img"]
	if len(out) != 1 || img == nil {
		t.Fatalf("rewritten: %v", out)
	}
	e := img.Entries[0].Message.(*ipcvar.IpcVarEntry)
	if e.GetMsgCtlmax() != 9001 || e.GetShmCtlmax() != 68719476736 || !slices.Equal(e.SemCtls, []uint32{250, 32000, 100, 128}) ||
		e.GetMqMsgMax() != 64 || e.GetMsgCtlmnb() != 16384 || e.GetShmCtlmni() != 4096 {
		t.Fatalf("image after fitting: %v", e)
	}

	if out, err := fitIPCSysctls(dir, names, withSysctls(map[string]string{"net.core.somaxconn": "1001"}), nil); err != nil || len(out) != 0 {
		t.Fatalf("a network sysctl only: %v %v", out, err)
	}
	if out, err := fitIPCSysctls(dir, names, &specs.Spec{}, nil); err != nil || len(out) != 0 {
		t.Fatalf("no linux section: %v %v", out, err)
	}
}

func TestFitIPCSysctlsRefusals(t *testing.T) {
	dir := donorIPCVars(t)
	names := []string{"ipcns-var-11.img"}
	for _, c := range []struct {
		sysctls map[string]string
		reason  string
	}{
		{map[string]string{"kernel.msg_next_id": "5"}, "snapboot does not set it"},
		{map[string]string{"kernel/msg_next_id": "5"}, "snapboot does not set it"},
		{map[string]string{"kernel.msgmax": "lots"}, "kernel.msgmax"},
		{map[string]string{"kernel.sem": "1 2 3"}, "kernel.sem"},
		{map[string]string{"kernel.shmmni": "-1"}, "kernel.shmmni"},
	} {
		_, err := fitIPCSysctls(dir, names, withSysctls(c.sysctls), nil)
		if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.reason) {
			t.Errorf("%v: %v, want a refusal saying %q", c.sysctls, err, c.reason)
		}
	}
}

// In an IPC namespace the spec joins (a pod's), the images get that
// namespace's values, the spec's on top; SysV objects there are refused.
func TestIPCNamespaceTheSpecJoins(t *testing.T) {
	dir := donorIPCVars(t)
	names := []string{"ipcns-var-11.img"}
	spec := withSysctls(map[string]string{"kernel.msgmax": "9001"})
	spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.IPCNamespace, Path: "/proc/42/ns/ipc"}}
	pod := func(path string) (map[string]string, error) {
		if path != "/proc/42/ns/ipc" {
			return nil, errors.New("not the pod's")
		}
		return map[string]string{"kernel.shm_rmid_forced": "0", "kernel.msgmni": "100", "kernel.msgmax": "8192", "kernel.sem": "250 32000 100 128"}, nil
	}
	out, err := fitIPCSysctls(dir, names, spec, pod)
	if err != nil {
		t.Fatal(err)
	}
	e := out["ipcns-var-11.img"].Entries[0].Message.(*ipcvar.IpcVarEntry)
	if e.GetMsgCtlmni() != 100 || e.GetMsgCtlmax() != 9001 || !slices.Equal(e.GetSemCtls(), []uint32{250, 32000, 100, 128}) {
		t.Errorf("msgmni %d, msgmax %d, sem %v; want the pod's 100, the spec's 9001, the pod's sem", e.GetMsgCtlmni(), e.GetMsgCtlmax(), e.GetSemCtls())
	}
	// A SysV segment: refused. An image of none (its magics only): not.
	writeImage(t, filepath.Join(dir, "ipcns-shm-11.img"), "IPCNS_SHM")
	if _, err := fitIPCSysctls(dir, append(names, "ipcns-shm-11.img"), spec, pod); err != nil {
		t.Errorf("no segments: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ipcns-shm-11.img"), make([]byte, 64), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := fitIPCSysctls(dir, append(names, "ipcns-shm-11.img"), spec, pod); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "SysV") {
		t.Errorf("segments in the pod's namespace: %v, want a refusal", err)
	}
	if _, err := fitIPCSysctls(dir, names, spec, nil); !errors.Is(err, ErrRefused) {
		t.Errorf("unknown values: %v, want a refusal", err)
	}
}

// In an IPC namespace of the container's own, the images get a new
// namespace's values, the spec's on top: not the donor's.
func TestOwnIPCNamespaceGetsANewOnesSysctls(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "ipcns-var-11.img"), "IPC_VAR", &ipcvar.IpcVarEntry{
		SemCtls: []uint32{32000, 1024000000, 500, 32000}, MsgCtlmax: proto.Uint32(8192), MsgCtlmnb: proto.Uint32(16384),
		MsgCtlmni: proto.Uint32(1 << 30), AutoMsgmni: proto.Uint32(0), ShmCtlmax: proto.Uint64(1 << 62), ShmCtlall: proto.Uint64(1 << 62),
		ShmCtlmni: proto.Uint32(1 << 20), ShmRmidForced: proto.Uint32(0), MqQueuesMax: proto.Uint32(1 << 20), MqMsgMax: proto.Uint32(10),
		MqMsgsizeMax: proto.Uint32(8192), MqMsgDefault: proto.Uint32(10), MqMsgsizeDefault: proto.Uint32(8192),
	})
	names := []string{"ipcns-var-11.img"}
	spec := withSysctls(map[string]string{"kernel.msgmax": "9001"})
	spec.Linux.Namespaces = []specs.LinuxNamespace{{Type: specs.IPCNamespace}}
	fresh := func(path string) (map[string]string, error) {
		if path != "" {
			return nil, errors.New("not a new namespace")
		}
		return map[string]string{"kernel.msgmni": "32000", "kernel.shmmni": "4096", "fs.mqueue.queues_max": "256", "kernel.msgmax": "8192"}, nil
	}
	out, err := fitIPCSysctls(dir, names, spec, fresh)
	if err != nil {
		t.Fatal(err)
	}
	e := out["ipcns-var-11.img"].Entries[0].Message.(*ipcvar.IpcVarEntry)
	if e.GetMsgCtlmni() != 32000 || e.GetShmCtlmni() != 4096 || e.GetMqQueuesMax() != 256 || e.GetMsgCtlmax() != 9001 {
		t.Errorf("msgmni %d, shmmni %d, queues_max %d, msgmax %d; want a new namespace's 32000, 4096, 256 and the spec's 9001",
			e.GetMsgCtlmni(), e.GetShmCtlmni(), e.GetMqQueuesMax(), e.GetMsgCtlmax())
	}
	if _, err := fitIPCSysctls(dir, names, spec, nil); !errors.Is(err, ErrRefused) {
		t.Errorf("unknown values: %v, want a refusal", err)
	}
}

// This node's new IPC namespace: every key read, and the process's own
// namespace kept.
func TestNewIPCNamespaceSysctlsOfThisNode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a new IPC namespace")
	}
	before, err := os.Readlink("/proc/self/ns/ipc")
	if err != nil {
		t.Fatal(err)
	}
	values, err := ipcSysctlsOf("")
	if err != nil {
		t.Fatal(err)
	}
	if len(values) != len(ipcSysctls) {
		t.Errorf("%d values, want %d: %v", len(values), len(ipcSysctls), values)
	}
	if values["kernel.shmmni"] != "4096" || len(strings.Fields(values["kernel.sem"])) != 4 {
		t.Errorf("kernel.shmmni %q, kernel.sem %q: not a new namespace's", values["kernel.shmmni"], values["kernel.sem"])
	}
	for i := 0; i < 20; i++ { // the threads it used run other goroutines again
		if after, err := os.Readlink("/proc/thread-self/ns/ipc"); err != nil || after != before {
			t.Fatalf("a thread of the process is in IPC namespace %s (%v), want %s", after, err, before)
		}
		runtime.Gosched()
	}
}

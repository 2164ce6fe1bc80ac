//go:build linux

package shim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// fakeShim records the calls the snapboot manager passes on.
type fakeShim struct {
	shim.Shim
	calls *[]string
}

func (f fakeShim) Start(ctx context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	var runc options.Options
	found, err := params.FindExtension(&runc)
	if err != nil {
		return nil, err
	}
	*f.calls = append(*f.calls, fmt.Sprintf("start runc-options=%v shim-cgroup=%s", found, runc.ShimCgroup))
	return &bootapi.BootstrapResult{}, nil
}

func (f fakeShim) Stop(ctx context.Context, id string) (shim.StopStatus, error) {
	*f.calls = append(*f.calls, "stop "+id)
	return shim.StopStatus{Pid: 42}, nil
}

// The delete command clears an aborted restore in the bundle it runs in,
// then deletes as runc's manager does; a failure to clear does not stop the
// delete.
func TestManagerStopClearsAbortedRestoreFirst(t *testing.T) {
	for _, clearErr := range []error{nil, errors.New("unmount failed")} {
		bundle := t.TempDir()
		t.Chdir(bundle)
		var calls []string
		m := manager{Shim: fakeShim{calls: &calls}, clearAborted: func(ctx context.Context, b, id string) error {
			calls = append(calls, "clear "+b+" "+id)
			return clearErr
		}}
		ss, err := m.Stop(context.Background(), filepath.Base(bundle))
		if err != nil || ss.Pid != 42 {
			t.Fatalf("Stop = %+v, %v; want runc's manager's result", ss, err)
		}
		want := []string{"clear " + bundle + " " + filepath.Base(bundle), "stop " + filepath.Base(bundle)}
		if len(calls) != 2 || calls[0] != want[0] || calls[1] != want[1] {
			t.Fatalf("calls %q, want %q", calls, want)
		}
	}
}

// containerd's introspection of the runtime (the -info command), with the
// options CRI sends a runtime type it does not know, gets runc's answer for
// the runc settings in the table: the runc shim's Info alone refuses
// runtimeoptions.Options, and CRI would then know none of the runtime's
// features.
func TestInfoTranslatesCRIOptions(t *testing.T) {
	binary := "/bin/true" // its `features` fails: Info still answers
	if runc, err := exec.LookPath("runc"); err == nil {
		binary = runc
	}
	body := fmt.Sprintf("SystemdCgroup = true\nBinaryName = %q\nSnapbootConfigPath = \"/etc/snapboot/other.toml\"\n", binary)
	generic, err := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte(body)})
	if err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(generic)
	if err != nil {
		t.Fatal(err)
	}
	info, err := NewManager().Info(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Info with CRI's runtime options: %v", err)
	}
	v, err := typeurl.UnmarshalAny(info.Options)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := v.(*options.Options)
	if !ok || !o.SystemdCgroup || o.BinaryName != binary {
		t.Fatalf("Info's options %#v, want runc options from the table", v)
	}
	if binary != "/bin/true" && info.Features == nil {
		t.Fatalf("Info reports no features of %s", binary)
	}

	// No options, and runc options, reach runc's Info as they are.
	if _, err := NewManager().Info(context.Background(), bytes.NewReader(nil)); err != nil {
		t.Fatalf("Info without options: %v", err)
	}
	runcOpts, err := typeurl.MarshalAnyToProto(&options.Options{BinaryName: binary, Root: "/run/other-runc"})
	if err != nil {
		t.Fatal(err)
	}
	if data, err = proto.Marshal(runcOpts); err != nil {
		t.Fatal(err)
	}
	info, err = NewManager().Info(context.Background(), bytes.NewReader(data))
	if err != nil {
		t.Fatalf("Info with runc options: %v", err)
	}
	if v, err := typeurl.UnmarshalAny(info.Options); err != nil || v.(*options.Options).Root != "/run/other-runc" {
		t.Fatalf("Info's options %#v (%v), want the runc options as given", v, err)
	}
}

// The runc manager's Start finds runc options (ShimCgroup) among the
// bootstrap parameters' extensions, where containerd puts the runtime's
// options: CRI's for snapboot are runtimeoptions.Options, translated.
func TestStartTranslatesCRIOptions(t *testing.T) {
	var calls []string
	m := manager{Shim: fakeShim{calls: &calls}}
	generic, err := anypb.New(&runtimeoptions.Options{ConfigBody: []byte("ShimCgroup = \"/snapboot-shims\"\nSystemdCgroup = false\n")})
	if err != nil {
		t.Fatal(err)
	}
	params := &bootapi.BootstrapParams{InstanceID: "c1"}
	if err := params.AddExtension(generic); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(context.Background(), params); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Start(context.Background(), &bootapi.BootstrapParams{InstanceID: "c2"}); err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(calls), "[start runc-options=true shim-cgroup=/snapboot-shims start runc-options=false shim-cgroup=]"; got != want {
		t.Fatalf("calls %s, want %s", got, want)
	}
	if !params.GetExtensions()[0].GetValue().MessageIs(&runtimeoptions.Options{}) {
		t.Fatal("the caller's parameters were changed")
	}
}

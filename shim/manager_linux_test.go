//go:build linux

package shim

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/containerd/containerd/v2/pkg/shim"
)

// fakeShim records the calls the snapboot manager passes on.
type fakeShim struct {
	shim.Shim
	calls *[]string
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

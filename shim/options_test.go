package shim

import (
	"testing"

	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/runc/options"
	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/containerd/typeurl/v2"
)

func TestTranslateOptions(t *testing.T) {
	plain := &taskAPI.CreateTaskRequest{ID: "c"}
	if r, path, err := translateOptions(plain); err != nil || r != plain || path != "" {
		t.Fatalf("no options: %v %q %v", r, path, err)
	}
	runc, _ := typeurl.MarshalAnyToProto(&options.Options{SystemdCgroup: true})
	withRunc := &taskAPI.CreateTaskRequest{ID: "c", Options: runc}
	if r, _, _ := translateOptions(withRunc); r != withRunc {
		t.Fatal("runc options must pass unchanged")
	}

	generic, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("SystemdCgroup = true\nBinaryName = \"/usr/local/bin/runc\"\nSomethingElse = 1\n")})
	r, path, err := translateOptions(&taskAPI.CreateTaskRequest{ID: "c", Options: generic})
	if err != nil || path != "" {
		t.Fatalf("%q %v", path, err)
	}
	v, err := typeurl.UnmarshalAny(r.Options)
	if err != nil {
		t.Fatal(err)
	}
	o, ok := v.(*options.Options)
	if !ok || !o.SystemdCgroup || o.BinaryName != "/usr/local/bin/runc" {
		t.Fatalf("translated to %#v", v)
	}

	withPath, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: "/etc/snapboot/other.toml"})
	if _, path, err := translateOptions(&taskAPI.CreateTaskRequest{ID: "c", Options: withPath}); err != nil || path != "/etc/snapboot/other.toml" {
		t.Fatalf("ConfigPath: %q %v", path, err)
	}
}

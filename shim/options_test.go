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

	// SnapbootConfigPath in the table names the node configuration and
	// keeps the table's runc settings (containerd sends no table beside
	// ConfigPath).
	both, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigBody: []byte("SystemdCgroup = true\nSnapbootConfigPath = \"/etc/snapboot/team.toml\"\n")})
	r, path, err = translateOptions(&taskAPI.CreateTaskRequest{ID: "c", Options: both})
	if err != nil || path != "/etc/snapboot/team.toml" {
		t.Fatalf("SnapbootConfigPath: %q %v", path, err)
	}
	if v, _ := typeurl.UnmarshalAny(r.Options); !v.(*options.Options).SystemdCgroup {
		t.Fatalf("SnapbootConfigPath lost the runc settings: %#v", v)
	}
	clash, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: "/a.toml", ConfigBody: []byte("SnapbootConfigPath = \"/b.toml\"\n")})
	if _, _, err := translateOptions(&taskAPI.CreateTaskRequest{ID: "c", Options: clash}); err == nil {
		t.Fatal("ConfigPath and SnapbootConfigPath naming two files: no error")
	}

	withPath, _ := typeurl.MarshalAnyToProto(&runtimeoptions.Options{ConfigPath: "/etc/snapboot/other.toml"})
	if _, path, err := translateOptions(&taskAPI.CreateTaskRequest{ID: "c", Options: withPath}); err != nil || path != "/etc/snapboot/other.toml" {
		t.Fatalf("ConfigPath: %q %v", path, err)
	}
}

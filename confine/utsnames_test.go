package confine

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/utsns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

// fakeUTS answers "" with the node's names and "/pod" with the pod's.
func fakeUTS(path string) (string, string, error) {
	switch path {
	case "":
		return "node", "(none)", nil
	case "/pod":
		return "web-7d9", "pod.example", nil
	}
	return "", "", errors.New("no such namespace")
}

func TestFitUTSNames(t *testing.T) {
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "utsns-12.img"), "UTSNS",
		&utsns.UtsnsEntry{Nodename: proto.String("donor"), Domainname: proto.String("donor.example")})
	names := []string{"core-1.img", "utsns-12.img"}
	own := []specs.LinuxNamespace{{Type: specs.UTSNamespace}}
	for _, c := range []struct {
		name              string
		spec              *specs.Spec
		wantHost, wantDom string
	}{
		{"the spec's names", &specs.Spec{Hostname: "clone", Domainname: "example.org", Linux: &specs.Linux{Namespaces: own}}, "clone", "example.org"},
		{"the node's where the spec sets none", &specs.Spec{Linux: &specs.Linux{Namespaces: own}}, "node", "(none)"},
		{"kernel.domainname over the spec's", &specs.Spec{Hostname: "clone", Domainname: "example.org",
			Linux: &specs.Linux{Namespaces: own, Sysctl: map[string]string{"kernel/domainname": "sysctl.example"}}}, "clone", "sysctl.example"},
		{"a pod's, joined by path: its names now", &specs.Spec{Hostname: "clone",
			Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UTSNamespace, Path: "/pod"}}}}, "web-7d9", "pod.example"},
	} {
		out, err := fitUTSNames(dir, names, c.spec, fakeUTS)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		img := out["utsns-12.img"]
		if img == nil {
			t.Fatalf("%s: not rewritten", c.name)
		}
		e := img.Entries[0].Message.(*utsns.UtsnsEntry)
		if e.GetNodename() != c.wantHost || e.GetDomainname() != c.wantDom {
			t.Errorf("%s: %q %q, want %q %q", c.name, e.GetNodename(), e.GetDomainname(), c.wantHost, c.wantDom)
		}
	}

	// Names that are right already, or the node's UTS namespace: nothing
	// to rewrite.
	same := &specs.Spec{Hostname: "donor", Domainname: "donor.example", Linux: &specs.Linux{Namespaces: own}}
	if out, err := fitUTSNames(dir, names, same, fakeUTS); err != nil || len(out) != 0 {
		t.Fatalf("names already right: %v %v", out, err)
	}
	if out, err := fitUTSNames(dir, names, &specs.Spec{Linux: &specs.Linux{}}, fakeUTS); err != nil || len(out) != 0 {
		t.Fatalf("the node's UTS namespace: %v %v", out, err)
	}
	gone := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.UTSNamespace, Path: "/gone"}}}}
	if _, err := fitUTSNames(dir, names, gone, fakeUTS); err == nil {
		t.Fatal("a namespace that cannot be read: no error")
	}
}

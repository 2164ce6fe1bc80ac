package compat

import (
	"errors"
	"strings"
	"testing"

	"github.com/snapboot/snapboot/oci"
)

func TestCheck(t *testing.T) {
	node := &Node{Architecture: "amd64", Kernel: "6.18.44-fc-v782", CRIUVersion: 40201, CPU: oci.CPU{Flags: []string{"avx", "avx2", "sse2"}}}
	meta := func(edit func(*oci.Metadata)) *oci.Metadata {
		m := &oci.Metadata{FormatVersion: 1, CRIU: oci.Version{Version: "4.2.1"},
			Host: oci.Host{Architecture: "amd64", OS: "linux", CPU: oci.CPU{Flags: []string{"avx", "sse2", "hypervisor"}}}}
		if edit != nil {
			edit(m)
		}
		return m
	}
	if err := Check(meta(nil), node); err != nil {
		t.Fatalf("compatible checkpoint refused: %v", err)
	}
	if err := Check(meta(func(m *oci.Metadata) { m.Host.Kernel = "6.12.9-amd64" }), node); err != nil {
		t.Fatalf("checkpoint of an older kernel refused: %v", err)
	}
	if err := Check(meta(func(m *oci.Metadata) { m.CRIU.Version = "4.1" }), node); err != nil {
		t.Fatalf("older CRIU's images refused: %v", err)
	}
	cases := map[string]struct {
		edit func(*oci.Metadata)
		want string
	}{
		"arch":         {func(m *oci.Metadata) { m.Host.Architecture = "arm64" }, "architecture arm64"},
		"newer criu":   {func(m *oci.Metadata) { m.CRIU.Version = "4.3.0" }, "CRIU 4.3.0"},
		"cpu flags":    {func(m *oci.Metadata) { m.Host.CPU.Flags = append(m.Host.CPU.Flags, "avx512f") }, "avx512f"},
		"other os":     {func(m *oci.Metadata) { m.Host.OS = "windows" }, "os windows"},
		"newer kernel": {func(m *oci.Metadata) { m.Host.Kernel = "6.19.1" }, "older 6.18.44"},
		"bad version":  {func(m *oci.Metadata) { m.CRIU.Version = "x" }, "version"},
	}
	for name, c := range cases {
		err := Check(meta(c.edit), node)
		if !errors.Is(err, ErrIncompatible) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrIncompatible mentioning %q", name, err, c.want)
		}
	}
}

func TestParseCPUInfo(t *testing.T) {
	info := "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)\nflags\t\t: sse2 fpu avx\n\nprocessor\t: 1\nflags\t\t: other\n"
	c := parseCPUInfo([]byte(info))
	if c.Vendor != "GenuineIntel" || c.Model != "Intel(R) Xeon(R)" || strings.Join(c.Flags, " ") != "avx fpu sse2" {
		t.Fatalf("parsed %+v", c)
	}
}

func TestVersionString(t *testing.T) {
	if s := VersionString(40201); s != "4.2.1" {
		t.Fatal(s)
	}
}

func TestParseCRIUVersionOutput(t *testing.T) {
	v, err := ParseCRIUVersionOutput("Version: 4.2.1\nGitID: v4.2.1\n")
	if err != nil || v != 40201 {
		t.Fatalf("%d %v", v, err)
	}
	if _, err := ParseCRIUVersionOutput("criu: command not found"); err == nil {
		t.Fatal("want an error")
	}
}

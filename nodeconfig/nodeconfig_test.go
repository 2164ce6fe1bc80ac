package nodeconfig

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestLoadMissingFileDeniesEverything(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "absent.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Allowed("127.0.0.1:5000", "app") || c.Allowed("docker.io", "library/busybox") {
		t.Fatal("a node without configuration must allow no restore")
	}
	if c.Cache.Root != DefaultCacheRoot || time.Duration(c.Pull.Timeout) != DefaultPullTimeout {
		t.Fatalf("defaults not applied: %+v", c)
	}
}

func TestParse(t *testing.T) {
	c, err := Parse([]byte(`
allow = ["127.0.0.1:5000", "registry.example.com/team/", "registry.example.com/other/app"]
require_digest = true
insecure_registries = ["127.0.0.1:5000"]
[cache]
root = "/var/lib/snapboot-test"
max_size = "20GiB"
max_age = "168h"
[pull]
timeout = "90s"
max_artifact_size = 1048576
stream = false
`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.RequireDigest || c.Cache.Root != "/var/lib/snapboot-test" || c.Cache.MaxSize != 20<<30 ||
		time.Duration(c.Cache.MaxAge) != 168*time.Hour || time.Duration(c.Pull.Timeout) != 90*time.Second ||
		c.Pull.MaxArtifactSize != 1<<20 || c.Pull.Streaming() {
		t.Fatalf("parsed %+v", c)
	}
	if d, _ := Parse([]byte("allow = []\n")); !d.Pull.Streaming() {
		t.Error("streaming should be on by default")
	}
	allow := []struct {
		reg, repo string
		want      bool
	}{
		{"127.0.0.1:5000", "anything/at/all", true},
		{"127.0.0.1:5001", "app", false},
		{"registry.example.com", "team/app", true},
		{"registry.example.com", "team", true},
		{"registry.example.com", "teamster/app", false},
		{"registry.example.com", "other/app", true},
		{"registry.example.com", "other/app2", false},
		{"registry.example.com", "other/app/sub", false},
		{"evil.example.com", "team/app", false},
	}
	for _, a := range allow {
		if got := c.Allowed(a.reg, a.repo); got != a.want {
			t.Errorf("Allowed(%s, %s) = %v, want %v", a.reg, a.repo, got, a.want)
		}
	}
	if !c.Insecure("127.0.0.1:5000") || c.Insecure("registry.example.com") {
		t.Error("Insecure wrong")
	}
}

// namespaces ties Kubernetes namespaces to repositories, within allow.
func TestNamespaces(t *testing.T) {
	c, err := Parse([]byte(`
allow = ["registry.example.com"]
[namespaces]
team-a = ["registry.example.com/team-a/"]
team-b = ["registry.example.com/team-b/web", "registry.example.com/shared/"]
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ns, repo string
		want     bool
	}{
		{"team-a", "team-a/web", true},
		{"team-a", "team-b/web", false},
		{"team-b", "team-b/web", true},
		{"team-b", "team-b/db", false},
		{"team-b", "shared/base", true},
		{"team-c", "team-a/web", false}, // a namespace without a list
	} {
		if got := c.AllowedInNamespace(tc.ns, "registry.example.com", tc.repo); got != tc.want {
			t.Errorf("namespace %s, repository %s: allowed %v, want %v", tc.ns, tc.repo, got, tc.want)
		}
	}
	open, _ := Parse([]byte(`allow = ["registry.example.com"]`))
	if !open.AllowedInNamespace("any", "registry.example.com", "team-a/web") {
		t.Error("without namespaces, a namespace is bound by allow alone")
	}
	// A table whose entries are all commented out allows no namespace.
	empty, err := Parse([]byte("allow = [\"registry.example.com\"]\n[namespaces]\n# team-a = [\"registry.example.com/team-a/\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if empty.AllowedInNamespace("team-a", "registry.example.com", "team-a/web") {
		t.Error("an empty [namespaces] table let a namespace restore")
	}
}

func TestParseRejects(t *testing.T) {
	for name, in := range map[string]string{
		"unknown key":           `alow = ["x"]`,
		"unknown section":       "[cahce]\nroot = \"/x\"",
		"url in allow":          `allow = ["https://registry.example.com"]`,
		"digest in allow":       `allow = ["r.example.com/app@sha256:00"]`,
		"path in insecure":      `insecure_registries = ["r.example.com/app"]`,
		"relative root":         "[cache]\nroot = \"var/lib\"",
		"bad duration":          "[pull]\ntimeout = \"soon\"",
		"bad size":              "[cache]\nmax_size = \"lots\"",
		"NaN size":              "[cache]\nmax_size = \"NaN\"",
		"infinite size":         "[pull]\nmax_unpacked_size = \"Inf GiB\"",
		"size past 2^63":        "[pull]\nmax_unpacked_size = \"9e9 GiB\"",
		"negative duration":     "[pull]\ntimeout = \"-1s\"",
		"not toml":              `allow = [`,
		"url in namespaces":     "[namespaces]\nteam = [\"https://r.example.com/team/\"]",
		"namespaces not a list": "[namespaces]\nteam = \"r.example.com/team/\"",
	} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("%s: want an error", name)
		}
	}
}

func TestPathFromEnv(t *testing.T) {
	t.Setenv(EnvPath, "/tmp/x.toml")
	if Path() != "/tmp/x.toml" {
		t.Fatal(Path())
	}
	t.Setenv(EnvPath, "")
	if Path() != DefaultPath {
		t.Fatal(Path())
	}
}

func TestLoadUnreadable(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); err == nil { // a directory is not a file
		t.Fatal("want an error")
	}
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte(`allow = ["127.0.0.1:5000"]`), 0o600)
	c, err := Load(p)
	if err != nil || !c.Allowed("127.0.0.1:5000", "x") {
		t.Fatalf("Load: %v %+v", err, c)
	}
}

package criuconf

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestGoldenFiles(t *testing.T) {
	cases := []struct {
		golden  string
		purpose string
		user    string
		build   func([]Option) []Option
	}{
		{"restore-default.conf", "restore", "", RestoreOptions},
		{"dump-default.conf", "dump", "", DumpOptions},
		{"restore-migrate.conf", "restore", "tcp-established, ext-unix-sk", RestoreOptions},
		{"restore-ghost.conf", "restore", "ghost-limit=1048576,skip-in-flight", RestoreOptions},
		{"dump-user-tcp-close.conf", "dump", "tcp-close,link-remap", DumpOptions},
	}
	for _, c := range cases {
		t.Run(c.golden, func(t *testing.T) {
			user, err := ParseUserOptions(c.user)
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			path, err := WriteFile(dir, c.purpose, c.build(user))
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Base(path) != FileName || !filepath.IsAbs(path) {
				t.Fatalf("path %q: want an absolute path to %s", path, FileName)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", c.golden)
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./criuconf -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Fatalf("generated file differs from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}

func TestParseUserOptionsRejects(t *testing.T) {
	for _, in := range []string{
		"action-script=/tmp/x",
		"exec-cmd",
		"root=/",
		"images-dir=/etc",
		"tcp-close=1",
		"ghost-limit",
		"ghost-limit=abc",
		"ghost-limit=0",
		"lib=/tmp",
		"tcp-established,inherit-fd=fd[1]:x",
	} {
		if _, err := ParseUserOptions(in); err == nil {
			t.Errorf("ParseUserOptions(%q) = nil error, want a rejection", in)
		}
	}
}

func TestRestoreNeverHasBothTCPModes(t *testing.T) {
	for _, in := range []string{"", "tcp-established", "tcp-close", "tcp-established,tcp-close", "tcp-close,tcp-established"} {
		user, err := ParseUserOptions(in)
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Join(Lines(RestoreOptions(user)), "\n")
		if strings.Contains(lines, "tcp-close") == strings.Contains(lines, "tcp-established") {
			t.Errorf("options %q give %q: want exactly one of tcp-close and tcp-established", in, lines)
		}
	}
	dump := strings.Join(Lines(DumpOptions(nil)), " ")
	if !strings.Contains(dump, "tcp-established") {
		t.Errorf("dump options %q lack tcp-established", dump)
	}
}

// An option whose name or value CRIU would split into more words, or read
// a comment or a quoted string in, is not written.
func TestWriteFileRefusesWhatCRIUWouldSplit(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []Option{
		{Name: "external", Value: "mnt[k]:/a --action-script /tmp/x"},
		{Name: "external", Value: "mnt[k]:/a\n--action-script=/tmp/x"},
		{Name: "external", Value: "mnt[k]:/a#b"},
		{Name: "external", Value: `mnt[k]:/a"b`},
		{Name: "tcp-close --action-script"},
	} {
		if _, err := WriteFile(dir, "restore", append(RestoreOptions(nil), o)); err == nil {
			t.Errorf("%q: written", o.String())
		}
	}
	if _, err := WriteFile(dir, "restore", append(RestoreOptions(nil), Option{Name: "external", Value: "mnt[snapboot-cgroup-0]:/sys/fs/cgroup/cpu,cpuacct/k8s.io/x"})); err != nil {
		t.Errorf("a cgroup bind: %v", err)
	}
}

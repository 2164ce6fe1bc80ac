package confine

import (
	"archive/tar"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A tmpfs's contents as CRIU's GNU tar packs them list; anything GNU tar
// and Go's archive/tar could read apart, or that reaches through a link,
// is refused.
func TestListTar(t *testing.T) {
	dir := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeDir, Mode: 0o755} }
	file := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644} }
	link := func(name, target string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeSymlink, Linkname: target}
	}
	hard := func(name, target string) *tar.Header {
		return &tar.Header{Name: name, Typeflag: tar.TypeLink, Linkname: target}
	}
	pax := file("./" + strings.Repeat("p", 120)) // too long for ustar: a PAX path record
	pax.Format = tar.FormatPAX
	global := &tar.Header{Name: "./L", Typeflag: tar.TypeXGlobalHeader, Format: tar.FormatPAX, PAXRecords: map[string]string{"comment": "x"}}
	ustar := file("./u")
	ustar.Format = tar.FormatUSTAR
	paxTime := file("./t")
	paxTime.Format, paxTime.PAXRecords = tar.FormatPAX, map[string]string{"mtime": "1700000000.5"}
	for _, c := range []struct {
		name    string
		members []*tar.Header
		refuse  string
	}{
		{"as CRIU packs it", []*tar.Header{dir("./"), dir("./d/"), file("./d/f"), link("./l", "/data"), hard("./d/h", "./d/f")}, ""},
		{"a PAX global header", []*tar.Header{dir("./"), link("./L", "/data"), global}, `a PAX record "comment"`},
		{"a ustar header", []*tar.Header{dir("./"), ustar}, ""},
		{"a PAX path", []*tar.Header{dir("./"), pax}, `a PAX record "path"`},
		{"a PAX time", []*tar.Header{dir("./"), paxTime}, ""},
		{"a member twice", []*tar.Header{dir("./"), link("./L", "/data"), dir("./L/")}, `member "./L/" twice`},
		{"a member through an earlier link", []*tar.Header{dir("./"), dir("./d/"), link("./L", "d"), link("./L/e", "/data")}, "not in a directory listed before it"},
		{"a member before its directory", []*tar.Header{dir("./"), file("./d/f"), dir("./d/")}, "not in a directory listed before it"},
		{"a hard link to a link", []*tar.Header{dir("./"), link("./L", "/data"), hard("./h", "./L")}, "not a regular file listed before it"},
		{"a hard link to nothing", []*tar.Header{dir("./"), hard("./h", "./f")}, "not a regular file listed before it"},
		{"a name with ..", []*tar.Header{dir("./"), link("./../x", "/data")}, `".." in its name`},
		{"a name not from .", []*tar.Header{dir("./"), file("x")}, `not relative to "."`},
		{"an absolute name", []*tar.Header{dir("./"), file("/x")}, `not relative to "."`},
		{"a root that is a file", []*tar.Header{file(".")}, "is not a directory"},
		{"no root", []*tar.Header{file("./x")}, "not in a directory listed before it"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "tmpfs-dev-2.tar.gz.img")
			writeTmpfs(t, p, c.members)
			got, _, err := listTar(p)
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			case c.name == "as CRIU packs it" && (got["/l"].kind != tar.TypeSymlink || got["/l"].target != "/data" || got["/d/h"].kind != tar.TypeReg || got["/d"].kind != tar.TypeDir):
				t.Fatalf("listed %v", got)
			}
		})
	}
}

// GNU tar's own archive, made as CRIU makes it, lists.
func TestListTarOfGNUTar(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	src := t.TempDir()
	for _, d := range []string{"d/e", "x"} {
		if err := os.MkdirAll(filepath.Join(src, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "d/f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "d/f"), filepath.Join(src, "x/h")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/data/"+strings.Repeat("long/", 30), filepath.Join(src, "d/e/"+strings.Repeat("n", 120))); err != nil {
		t.Fatal(err)
	}
	got := gnuTarListing(t, src)
	if e := got["/d/e/"+strings.Repeat("n", 120)]; e.kind != tar.TypeSymlink || e.target != "/data/"+strings.Repeat("long/", 30) {
		t.Errorf("the long link: %+v", e)
	}
	if got["/x/h"].kind != tar.TypeReg || got["/d"].kind != tar.TypeDir || got["/"].kind != tar.TypeDir {
		t.Errorf("listed %v", got)
	}
}

// GNU tar's posix format (a distribution's default) lists too, with names
// that fit its headers.
func TestListTarOfGNUTarPosix(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		t.Skip("no tar")
	}
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/data", filepath.Join(src, "d/l")); err != nil {
		t.Fatal(err)
	}
	got := gnuTarListing(t, src, "--format=posix")
	if e := got["/d/l"]; e.kind != tar.TypeSymlink || e.target != "/data" {
		t.Errorf("the link: %+v (listed %v)", e, got)
	}
}

// gnuTarListing packs src with GNU tar as CRIU dumps a tmpfs (with extra
// flags), and lists the archive.
func gnuTarListing(t *testing.T, src string, extra ...string) map[string]tmpfsEntry {
	t.Helper()
	p := filepath.Join(t.TempDir(), "tmpfs-dev-2.tar.gz.img")
	args := append([]string{"--create", "--gzip"}, extra...)
	args = append(args, "--no-unquote", "--no-wildcards", "--one-file-system", "--check-links",
		"--preserve-permissions", "--sparse", "--numeric-owner", "--file", p, "--directory", src, ".")
	if out, err := exec.Command("tar", args...).CombinedOutput(); err != nil {
		t.Fatalf("tar: %v: %s", err, out)
	}
	got, _, err := listTar(p)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

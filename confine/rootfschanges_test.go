package confine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestRootfsChanges(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: files of other owners, whiteouts")
	}
	image := t.TempDir()
	put(t, image, "etc/", 0, 0, 0o755)
	put(t, image, "etc/shadow", 0, 0, 0o600)
	put(t, image, "etc/app.conf", 1000, 1000, 0o644)
	put(t, image, "home/app/", 1000, 1000, 0o755)
	put(t, image, "tmp/", 0, 0, 0o777|os.ModeSticky)
	put(t, image, "tmp/theirs", 0, 0, 0o644)
	put(t, image, "srv/", 0, 0, 0o755)
	put(t, image, "srv/shared", 0, 0, 0o666)
	put(t, image, "home/app/app/", 0, 0, 0o755)
	put(t, image, "home/app/app/server.py", 0, 0, 0o644)
	put(t, image, "home/app/cache/", 1000, 1000, 0o755)
	put(t, image, "home/app/cache/x", 1000, 1000, 0o644)
	put(t, image, "home/app/ro/", 1000, 1000, 0o555)
	put(t, image, "home/app/own", 1000, 1000, 0o644)
	put(t, image, "run/", 0, 0, 0o755)
	put(t, image, "var/", 0, 0, 0o755)
	if err := os.Symlink("../run", filepath.Join(image, "var/run")); err != nil {
		t.Fatal(err)
	}
	whiteout := func(t *testing.T, dir, name string) {
		if err := unix.Mknod(filepath.Join(dir, name), unix.S_IFCHR, 0); err != nil {
			t.Fatal(err)
		}
	}
	opaque := func(t *testing.T, dir, name string) {
		if err := unix.Setxattr(filepath.Join(dir, name), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
			t.Fatal(err)
		}
	}
	empty := func(t *testing.T, dir, name string) {
		if err := os.Truncate(filepath.Join(dir, name), 0); err != nil {
			t.Fatal(err)
		}
	}
	user := spec(1000, nil, false)
	withMount := spec(1000, nil, false)
	withMount.Mounts = []specs.Mount{{Destination: "/opt/app", Type: "bind", Source: "/srv/app", Options: []string{"rbind"}},
		{Destination: "/var/run/secrets/token", Type: "bind", Source: "/srv/token", Options: []string{"rbind"}},
		{Destination: "/etc/hostname", Type: "bind", Source: "/srv/hostname", Options: []string{"rbind"}}}
	withGroups := spec(1000, nil, false)
	withGroups.Process.User.AdditionalGids = []uint32{4000}
	for _, c := range []struct {
		name    string
		spec    *specs.Spec
		changes func(t *testing.T, dir string)
		refuse  string
	}{
		{"its own file changed", user, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			put(t, d, "etc/app.conf", 1000, 1000, 0o644)
		}, ""},
		{"root's file replaced", user, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			put(t, d, "etc/shadow", 0, 0, 0o600)
		}, "/etc/shadow (-rw-------, owner 0:0), which the spec's user (1000) could not: it may not write"},
		{"root's file replaced, CAP_DAC_OVERRIDE", spec(1000, []string{"CAP_DAC_OVERRIDE"}, false), func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			put(t, d, "etc/shadow", 0, 0, 0o600)
		}, ""},
		{"its own file in root's directory", user, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			put(t, d, "etc/new", 1000, 1000, 0o644)
		}, "may not make or remove files in its directory"},
		{"a new file in its directory", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/sub/", 1000, 1000, 0o755)
			put(t, d, "home/app/sub/new", 1000, 1000, 0o600)
		}, ""},
		{"root's new file in its directory", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/new", 0, 0, 0o644)
		}, "owned by 0:0"},
		{"its own directory's mode", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o700)
		}, ""},
		{"root's directory's mode", user, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o777)
		}, "does not own the image's entry, whose mode changed"},
		{"another user's file removed from a sticky directory", user, func(t *testing.T, d string) {
			put(t, d, "tmp/", 0, 0, 0o777|os.ModeSticky)
			whiteout(t, d, "tmp/theirs")
		}, "sticky"},
		{"a new file in a sticky directory", user, func(t *testing.T, d string) {
			put(t, d, "tmp/", 0, 0, 0o777|os.ModeSticky)
			put(t, d, "tmp/mine", 1000, 1000, 0o644)
		}, ""},
		{"a file anyone may write", user, func(t *testing.T, d string) {
			put(t, d, "srv/", 0, 0, 0o755)
			put(t, d, "srv/shared", 0, 0, 0o666)
		}, ""},
		{"a file anyone may write, its mode changed", user, func(t *testing.T, d string) {
			put(t, d, "srv/", 0, 0, 0o755)
			put(t, d, "srv/shared", 0, 0, 0o4777)
		}, "does not own the image's entry, whose mode changed"},
		{"root's directory made opaque", user, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			opaque(t, d, "etc")
		}, "may not make or remove files"},
		{"runc's mount point and the directory on the way", withMount, func(t *testing.T, d string) {
			put(t, d, "opt/", 0, 0, 0o755)
			put(t, d, "opt/app/", 0, 0, 0o755)
		}, ""},
		{"a mount point's directory on the way, the user's", withMount, func(t *testing.T, d string) {
			put(t, d, "opt/", 1000, 1000, 0o755)
			put(t, d, "opt/app/", 0, 0, 0o755)
		}, "/opt (drwxr-xr-x, owner 1000:1000), which the spec's user (1000) could not"},
		{"a file beside runc's mount point", withMount, func(t *testing.T, d string) {
			put(t, d, "opt/", 0, 0, 0o755)
			put(t, d, "opt/evil", 1000, 1000, 0o644)
		}, "may not make or remove files in its directory"},
		{"root's directory in its directory taken over", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/app/", 1000, 1000, 0o777)
		}, "would be owned by uid 1000, the image's is 0"},
		{"root's directory with files removed from its directory", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			whiteout(t, d, "home/app/app")
		}, "whose entries the user could not all remove"},
		{"its own directory emptied and made again", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/cache/", 1000, 1000, 0o755)
			opaque(t, d, "home/app/cache")
			put(t, d, "home/app/cache/y", 1000, 1000, 0o644)
		}, ""},
		{"a file in its own directory it may not write", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/ro/", 1000, 1000, 0o555)
			put(t, d, "home/app/ro/new", 1000, 1000, 0o444)
		}, ""},
		{"its own file in another of its groups", withGroups, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/own", 1000, 4000, 0o644)
		}, ""},
		{"its own file in a group not its", user, func(t *testing.T, d string) {
			put(t, d, "home/app/", 1000, 1000, 0o755)
			put(t, d, "home/app/own", 1000, 0, 0o644)
		}, "would be in group 0"},
		{"runc's mount point through the image's link", withMount, func(t *testing.T, d string) {
			put(t, d, "run/", 0, 0, 0o755)
			put(t, d, "run/secrets/", 0, 0, 0o755)
			put(t, d, "run/secrets/token", 0, 0, 0o755)
			empty(t, d, "run/secrets/token")
		}, ""},
		{"runc's file mount point", withMount, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			put(t, d, "etc/hostname", 0, 0, 0o755)
			empty(t, d, "etc/hostname")
		}, ""},
		{"a file with contents at a file mount point", withMount, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			put(t, d, "etc/hostname", 0, 0, 0o755)
			if err := os.WriteFile(filepath.Join(d, "etc/hostname"), []byte("x"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, "may not make or remove files in its directory"},
		{"a whiteout of nothing", user, func(t *testing.T, d string) {
			put(t, d, "etc/", 0, 0, 0o755)
			whiteout(t, d, "etc/none")
		}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			changes := t.TempDir()
			c.changes(t, changes)
			err := CheckRootfsChanges(changes, []string{image}, c.spec)
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

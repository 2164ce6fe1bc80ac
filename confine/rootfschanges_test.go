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
	user := spec(1000, nil, false)
	withMount := spec(1000, nil, false)
	withMount.Mounts = []specs.Mount{{Destination: "/opt/app", Type: "bind", Source: "/srv/app", Options: []string{"rbind"}}}
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
		}, "does not own the image's directory"},
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
		}, "does not own the image's file"},
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

package confine

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	skunix "github.com/checkpoint-restore/go-criu/v7/crit/images/sk-unix"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

func TestUnixSocketNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: directories of other owners")
	}
	upper, lower, volume := t.TempDir(), t.TempDir(), t.TempDir()
	put(t, lower, "run/", 0, 0, 0o755)
	put(t, lower, "run/app/", 1000, 1000, 0o755)
	put(t, lower, "var/", 0, 0, 0o755)
	put(t, lower, "shared/", 0, 0, 0o777|os.ModeSticky)
	put(t, lower, "shared/theirs.sock", 0, 0, 0o666)
	put(t, lower, "shared/mine.sock", 1000, 1000, 0o666)
	put(t, upper, "closed/", 0, 0, 0o700)
	put(t, upper, "closed/open/", 1000, 1000, 0o777)
	put(t, volume, "mine/", 1000, 1000, 0o755)
	put(t, volume, "rootonly/", 0, 0, 0o755)
	put(t, volume, "group/", 0, 5000, 0o775|os.ModeSetgid)
	for link, target := range map[string]string{
		filepath.Join(lower, "var/run"): "../run",   // as Debian has it
		filepath.Join(volume, "link"):   "/run/app", // into the root file system
		filepath.Join(volume, "escape"): "/data/rootonly",
		filepath.Join(volume, "loop"):   "loop",
		filepath.Join(upper, "tmplink"): "/tmp/sub",
	} {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	root := mount(1, 0, mnt.Fstype_AUTO, "/", "/", 0)
	tmp := mount(2, 1, mnt.Fstype_TMPFS, "/", "/tmp", 0)
	proc := mount(4, 1, mnt.Fstype_PROC, "/", "/proc", 0)
	data := mount(3, 1, mnt.Fstype_AUTO, "/", "/data", 0)
	data.ExtKey = proto.String("/data")
	mounts := []*mnt.MntEntry{root, tmp, data, proc}
	app := func(uid uint32, caps ...string) *specs.Spec {
		s := spec(uid, caps, false)
		s.Process.User.AdditionalGids = []uint32{4000}
		s.Mounts = []specs.Mount{{Destination: "/data", Type: "bind", Source: volume, Options: []string{"rbind"}}}
		return s
	}
	userns := func() *specs.Spec {
		s := app(1000)
		s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		return s
	}
	sock := func(name string) *skunix.UnixSkEntry {
		return &skunix.UnixSkEntry{Id: proto.Uint32(1), Ino: proto.Uint32(1), Name: []byte(name), MntId: proto.Int32(-1)}
	}
	relative := func(dir, name string) *skunix.UnixSkEntry {
		u := sock(name)
		u.NameDir = proto.String(dir)
		return u
	}
	owned := func(name string, uid, gid uint32) *skunix.UnixSkEntry {
		u := sock(name)
		u.FilePerms = &skunix.FilePermsEntry{Mode: proto.Uint32(0o140755), Uid: proto.Uint32(uid), Gid: proto.Uint32(gid)}
		return u
	}
	external := sock("/run/x.sock")
	external.Uflags = proto.Uint32(usockExtern)
	inMount := func(name string, id int32) *skunix.UnixSkEntry {
		u := sock(name)
		u.MntId = proto.Int32(id)
		return u
	}
	for _, c := range []struct {
		name   string
		spec   *specs.Spec
		sock   *skunix.UnixSkEntry
		refuse string // "" if allowed
	}{
		{"in the user's directory", app(1000), sock("/run/app/x.sock"), ""},
		{"in root's directory", app(1000), sock("/run/x.sock"), "may not make or remove files (mode 755, owner 0:0)"},
		{"in root's directory, CAP_DAC_OVERRIDE", app(1000, "CAP_DAC_OVERRIDE"), sock("/run/x.sock"), ""},
		{"in root's directory, a user namespace", userns(), sock("/run/x.sock"), ""},
		{"in root's directory, as root", app(0), sock("/run/x.sock"), ""},
		{"through Debian's /var/run", app(1000), sock("/var/run/app/x.sock"), ""},
		{"through Debian's /var/run, into root's directory", app(1000), sock("/var/run/x.sock"), "is in /run, where"},
		{"in the user's directory of a volume", app(1000), sock("/data/mine/x.sock"), ""},
		{"in a volume's root, root's", app(1000), sock("/data/x.sock"), "is in /data, where"},
		{"through a volume's link into the root file system", app(1000), sock("/data/link/x.sock"), ""},
		{"through a volume's link into root's directory of it", app(1000), sock("/data/escape/x.sock"), "is in /data/rootonly, where"},
		{"through a loop of links", app(1000), sock("/data/loop/x.sock"), "more than 40 symbolic links"},
		{"under a directory the user may not search", app(1000), sock("/closed/open/x.sock"), "may not search"},
		{"in a tmpfs's root", app(1000), sock("/tmp/x.sock"), ""},
		{"inside a tmpfs", app(1000), sock("/tmp/sub/x.sock"), "whose entries snapboot cannot look up"},
		{"through a link inside a tmpfs", app(1000), sock("/tmplink/x.sock"), "whose entries snapboot cannot look up"},
		{"in proc", app(1000), sock("/proc/self/cwd/x.sock"), "cannot look up"},
		{"relative, in the user's directory", app(1000), relative("/run/app", "x.sock"), ""},
		{"relative, in root's directory", app(1000), relative("/run", "x.sock"), "is in /run, where"},
		{"relative, without a directory", app(1000), relative("", "x.sock"), "is in /, where"},
		{"relative, a relative directory", app(1000), relative("run", "x.sock"), "not an absolute path"},
		{"with ..", app(1000), sock("/run/app/../x.sock"), `".." in its name`},
		{"ending with a NUL", app(1000), sock("/run/app/x.sock\x00"), ""},
		{"cut short by a NUL, in root's directory", app(1000), sock("/run/x.sock\x00/app/x.sock"), "is in /run, where"},
		{"deleted, under missing directories of the user's", app(1000), sock("/run/app/a/b/x.sock"), ""},
		{"deleted, under missing directories of root's", app(1000), sock("/run/a/b/x.sock"), "is in /run, where"},
		{"under a file", app(1000), sock("/shared/mine.sock/x.sock"), ""},
		{"replacing another user's file in a sticky directory", app(1000), sock("/shared/theirs.sock"), "sticky directory /shared"},
		{"replacing another user's file in a sticky directory, CAP_FOWNER", app(1000, "CAP_FOWNER"), sock("/shared/theirs.sock"), ""},
		{"replacing its own file in a sticky directory", app(1000), sock("/shared/mine.sock"), ""},
		{"new in a sticky directory", app(1000), sock("/shared/new.sock"), ""},
		{"abstract", app(1000), sock("\x00/run/x.sock"), ""},
		{"a peer outside the checkpoint", app(1000), external, ""},
		{"in a mount the checkpoint does not have", app(1000), inMount("/run/app/x.sock", 9), "mount 9"},
		{"in the root mount", app(1000), inMount("/run/app/x.sock", 1), ""},
		{"owned by the user", app(1000), owned("/run/app/x.sock", 1000, 1000), ""},
		{"owned by root", app(1000), owned("/run/app/x.sock", 0, 1000), "owned by uid 0"},
		{"owned by root, CAP_CHOWN", app(1000, "CAP_CHOWN"), owned("/run/app/x.sock", 0, 0), ""},
		{"in another of the spec's groups", app(1000), owned("/run/app/x.sock", 1000, 4000), ""},
		{"in a group not the spec's", app(1000), owned("/run/app/x.sock", 1000, 5000), "in group 5000"},
		{"in a set-group-ID directory's group", app(1000, "CAP_DAC_OVERRIDE"), owned("/data/group/x.sock", 1000, 5000), ""},
		{"owned by root, as root", app(0), owned("/run/x.sock", 0, 0), ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			m, err := specMasks(c.spec)
			if err != nil {
				t.Fatal(err)
			}
			caps, nodeCaps := grantedCaps(c.spec, m)
			checks := &fileChecks{caps: caps, hostCaps: nodeCaps, uid: c.spec.Process.User.UID, taskUIDs: map[uint32]bool{c.spec.Process.User.UID: true}}
			layers := &layers{dirs: []string{upper, lower}}
			defer layers.close()
			var access *fileAccess
			err = unixNames([]*skunix.UnixSkEntry{c.sock}, checks, func() *fileAccess {
				if access == nil {
					access = newFileAccess(c.spec, m, mounts, layers)
				}
				return access
			})
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

package confine

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"
)

const containerCgroup = "snapboot-it/web-1"

// donorCgroups is a cgroup v1 donor's cgroup.img, as CRIU dumped it: one
// set, the container's cgroup in every hierarchy.
func donorCgroups() *cgroup.CgroupEntry {
	cg := &cgroup.CgroupEntry{Sets: []*cgroup.CgSetEntry{{Id: proto.Uint32(2)}}}
	for _, name := range []string{"memory", "devices", "cpu", "name=systemd", ""} {
		cg.Sets[0].Ctls = append(cg.Sets[0].Ctls, &cgroup.CgMemberEntry{Name: proto.String(name), Path: proto.String("/" + containerCgroup)})
		cg.Controllers = append(cg.Controllers, &cgroup.CgControllerEntry{Cnames: []string{name},
			Dirs: []*cgroup.CgroupDirEntry{{DirName: proto.String(containerCgroup),
				Children: []*cgroup.CgroupDirEntry{{DirName: proto.String("worker")}}}}})
	}
	return cg
}

// testNodeCgroups are the cgroup v1 names of the tests' node.
var testNodeCgroups = map[string]bool{"memory": true, "devices": true, "cpu": true, "cpuacct": true, "name=systemd": true}

func checkCgroupImage(t *testing.T, cg *cgroup.CgroupEntry) error {
	t.Helper()
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "cgroup.img"), "CGROUP", cg)
	return checkCgroups(dir, []string{"cgroup.img"}, &specs.Spec{}, testNodeCgroups)
}

func TestCgroupsOfTheDonorFit(t *testing.T) {
	cg := donorCgroups()
	// A task in a cgroup the app made below the container's.
	cg.Sets = append(cg.Sets, &cgroup.CgSetEntry{Id: proto.Uint32(3), Ctls: []*cgroup.CgMemberEntry{
		{Name: proto.String("memory"), Path: proto.String("/" + containerCgroup + "/worker")}}})
	// A task in a cgroup namespace rooted at the container's cgroup.
	cg.Sets[0].Ctls[0].CgnsPrefix = proto.Uint32(uint32(len("/" + containerCgroup)))
	if err := checkCgroupImage(t, cg); err != nil {
		t.Fatal(err)
	}
	if err := checkCgroups(t.TempDir(), nil, &specs.Spec{}, testNodeCgroups); err != nil {
		t.Fatalf("no cgroup image: %v", err)
	}
}

// renamed renames the first controller, and the set entry it matches,
// to name: only the name is wrong.
func renamed(name string) func(*cgroup.CgroupEntry) {
	return func(cg *cgroup.CgroupEntry) {
		cg.Controllers[0].Cnames = []string{name}
		cg.Sets[0].Ctls[0].Name = proto.String(name)
	}
}

func TestCgroupRefusals(t *testing.T) {
	cases := map[string]func(*cgroup.CgroupEntry){
		"the root cgroup":           func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].Path = proto.String("/") },
		"another container's":       func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[1].Path = proto.String("/snapboot-it/other") },
		"climbing out with ..":      func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].Path = proto.String("/" + containerCgroup + "/../..") },
		"a relative path":           func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].Path = proto.String(containerCgroup) },
		"a controller without dirs": func(cg *cgroup.CgroupEntry) { cg.Controllers[0].Dirs = nil },
		"a directory with ..":       func(cg *cgroup.CgroupEntry) { cg.Controllers[2].Dirs[0].DirName = proto.String("../x") },
		"an empty top directory":    func(cg *cgroup.CgroupEntry) { cg.Controllers[0].Dirs[0].DirName = proto.String("") },
		"two top directories": func(cg *cgroup.CgroupEntry) {
			cg.Controllers[0].Dirs = append(cg.Controllers[0].Dirs, cg.Controllers[1].Dirs[0])
		},
		"top directories that differ":      func(cg *cgroup.CgroupEntry) { cg.Controllers[1].Dirs[0].DirName = proto.String("snapboot-it") },
		"a string prefix, not a directory": func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].Path = proto.String("/" + containerCgroup + "x") },
		"an entry two controllers match":   func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].Name = proto.String("memory,devices") },
		"an entry no controller matches":   func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].Name = proto.String("rdma") },
		"a controller without a name":      func(cg *cgroup.CgroupEntry) { cg.Controllers[0].Cnames = nil },
		"a namespace prefix inside a name": func(cg *cgroup.CgroupEntry) { cg.Sets[0].Ctls[0].CgnsPrefix = proto.Uint32(5) },
		"a namespace prefix past the top": func(cg *cgroup.CgroupEntry) {
			cg.Sets[0].Ctls[0].Path = proto.String("/" + containerCgroup + "/worker")
			cg.Sets[0].Ctls[0].CgnsPrefix = proto.Uint32(uint32(len("/" + containerCgroup + "/worker")))
		},
		"a child that is a path": func(cg *cgroup.CgroupEntry) {
			cg.Controllers[1].Dirs[0].Children[0].DirName = proto.String("a/b")
		},
		"a controller named with a path": renamed("../../etc"),
		"a controller named ..":          renamed(".."),
		"a named hierarchy named ..":     renamed("name=.."),
		"a named hierarchy without name": renamed("name="),
		"mount options in a name":        renamed("name=x,release_agent=/tmp/y"),
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			cg := donorCgroups()
			edit(cg)
			if err := checkCgroupImage(t, cg); !errors.Is(err, ErrRefused) {
				t.Fatalf("got %v, want ErrRefused", err)
			}
		})
	}
}

func TestCgroupNamespaceTheSpecHas(t *testing.T) {
	s := &specs.Spec{Linux: &specs.Linux{Namespaces: []specs.LinuxNamespace{{Type: specs.CgroupNamespace}}}}
	write := func(t *testing.T, cgSet uint32, prefix bool, withCgroups bool) string {
		tc := leader(0)
		tc.CgSet = proto.Uint32(cgSet)
		dir := writeImages(t, task{tc: tc})
		writeImage(t, filepath.Join(dir, "inventory.img"), "INVENTORY", &inventory.InventoryEntry{ImgVersion: proto.Uint32(2), RootCgSet: proto.Uint32(1)})
		writeImage(t, filepath.Join(dir, "pstree.img"), "PSTREE", &pstree.PstreeEntry{Pid: proto.Uint32(1), Ppid: proto.Uint32(0), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)})
		if withCgroups {
			// cgroup v2 with a cgroup namespace, as CRIU dumps it.
			m := &cgroup.CgMemberEntry{Name: proto.String(""), Path: proto.String("/" + containerCgroup)}
			if prefix {
				m.CgnsPrefix = proto.Uint32(uint32(len("/" + containerCgroup)))
			}
			writeImage(t, filepath.Join(dir, "cgroup.img"), "CGROUP", &cgroup.CgroupEntry{
				Sets:        []*cgroup.CgSetEntry{{Id: proto.Uint32(2), Ctls: []*cgroup.CgMemberEntry{m}}},
				Controllers: []*cgroup.CgControllerEntry{{Cnames: []string{""}, Dirs: []*cgroup.CgroupDirEntry{{DirName: proto.String(containerCgroup)}}}}})
		}
		return dir
	}
	check := func(dir string) error {
		names, err := imageNames(dir)
		if err != nil {
			return err
		}
		return checkCgroups(dir, names, s, testNodeCgroups)
	}
	if err := check(write(t, 2, true, true)); err != nil {
		t.Fatalf("a cgroup v2 dump with its namespace: %v", err)
	}
	for name, dir := range map[string]string{
		"the dumping CRIU's set": write(t, 1, true, true),
		"no set":                 write(t, 0, true, true),
		"no namespace prefix":    write(t, 2, false, true),
		"no cgroup image":        write(t, 2, true, false),
	} {
		if err := check(dir); !errors.Is(err, ErrRefused) {
			t.Errorf("%s: got %v, want ErrRefused", name, err)
		}
	}
}

func TestCRIUMatchesNamesAsSubstrings(t *testing.T) {
	if !criuContains([]string{"name=systemd"}, "memory,xname=systemd") {
		t.Error("CRIU's strstr finds name=systemd in xname=systemd")
	}
	if criuContains([]string{"cpu"}, "cpuacct") || !criuContains([]string{"cpu", "cpuacct"}, "cpuacct,cpu") {
		t.Error("a name must end at a comma or the end")
	}
	cg := donorCgroups()
	cg.Sets[0].Ctls[0].Name = proto.String("memory,xname=systemd")
	if err := checkCgroupImage(t, cg); !errors.Is(err, ErrRefused) {
		t.Errorf("an entry two controllers match by substring: got %v", err)
	}
}

// CRIU writes each directory's owner and mode, and the properties of the
// cgroups it makes, by names from the image, as root: all stripped.
func TestCgroupSettingsStripped(t *testing.T) {
	dir := t.TempDir()
	cg := donorCgroups()
	perms := func() *cgroup.CgroupPerms {
		return &cgroup.CgroupPerms{Mode: proto.Uint32(0o40777), Uid: proto.Uint32(1000), Gid: proto.Uint32(1000)}
	}
	top := cg.Controllers[0].Dirs[0]
	top.DirPerms = perms()
	top.Properties = []*cgroup.CgroupPropEntry{{Name: proto.String("memory.limit_in_bytes"), Value: proto.String("-1")}}
	child := top.Children[0]
	child.DirPerms = perms()
	child.Properties = []*cgroup.CgroupPropEntry{{Name: proto.String("../../../../../../../etc/passwd"), Value: proto.String("x"), Perms: perms()},
		{Name: proto.String("cpuset.cpus"), Value: proto.String("0-1"), Perms: perms()}, {Name: proto.String("cgroup.type"), Value: proto.String("domain")}}
	top.Properties = append(top.Properties, &cgroup.CgroupPropEntry{Name: proto.String("cpuset.cpus"), Value: proto.String("0")})
	writeImage(t, filepath.Join(dir, "cgroup.img"), "CGROUP", cg)
	out, err := stripCgroupSettings(dir, []string{"cgroup.img"})
	if err != nil {
		t.Fatal(err)
	}
	img := out["cgroup.img"]
	if img == nil {
		t.Fatal("cgroup.img not rewritten")
	}
	var walk func(dirs []*cgroup.CgroupDirEntry, first bool) int
	walk = func(dirs []*cgroup.CgroupDirEntry, first bool) int {
		n := 0
		for _, d := range dirs {
			want := 0
			if first && d.GetDirName() == child.GetDirName() {
				want = 1 // cpuset.cpus, which CRIU needs to put a task there
			}
			if d.DirPerms != nil || len(d.Properties) != want {
				t.Errorf("%s keeps %v %v", d.GetDirName(), d.DirPerms, d.Properties)
			}
			for _, p := range d.Properties {
				if p.GetName() != "cpuset.cpus" || p.Perms != nil {
					t.Errorf("%s keeps %v", d.GetDirName(), p)
				}
			}
			n += 1 + walk(d.Children, first)
		}
		return n
	}
	dirs := 0
	for i, c := range img.Entries[0].Message.(*cgroup.CgroupEntry).GetControllers() {
		dirs += walk(c.Dirs, i == 0)
	}
	if dirs != 10 {
		t.Errorf("%d directories after stripping, want the 10 of the image", dirs)
	}
	// Nothing to strip: not rewritten.
	writeImage(t, filepath.Join(dir, "cgroup.img"), "CGROUP", donorCgroups())
	if out, err := stripCgroupSettings(dir, []string{"cgroup.img"}); err != nil || out != nil {
		t.Errorf("plain image: %v, %v; want no rewrite", out, err)
	}
}

// CRIU mounts each controller's hierarchy by the image's names and makes
// the directories below the container's as root: a hierarchy the node
// lacks would be a new one, and the directories are bounded.
func TestCgroupHierarchiesAndDirectoriesOfTheNode(t *testing.T) {
	withController := func(name string) *cgroup.CgroupEntry {
		cg := donorCgroups()
		cg.Controllers = append(cg.Controllers, &cgroup.CgControllerEntry{Cnames: []string{name},
			Dirs: []*cgroup.CgroupDirEntry{{DirName: proto.String(containerCgroup)}}})
		return cg
	}
	withChildren := func(n int) *cgroup.CgroupEntry {
		cg := donorCgroups()
		top := cg.Controllers[0].Dirs[0]
		top.Children = nil
		for i := range n {
			top.Children = append(top.Children, &cgroup.CgroupDirEntry{DirName: proto.String(fmt.Sprintf("w%d", i))})
		}
		return cg // and the other hierarchies' one each
	}
	for _, c := range []struct {
		name   string
		cg     *cgroup.CgroupEntry
		refuse string
	}{
		{"the node's hierarchies", donorCgroups(), ""},
		{"a named hierarchy the node lacks", withController("name=x"), `"name=x" is no cgroup v1 hierarchy`},
		{"a controller the node has no hierarchy of", withController("net_cls"), `"net_cls" is no cgroup v1 hierarchy`},
		{"as many cgroups below the container's as allowed", withChildren(maxCgroupDirs - 4), ""},
		{"more cgroups below the container's", withChildren(maxCgroupDirs - 3), "more than 256 cgroups"},
	} {
		err := checkCgroupImage(t, c.cg)
		switch {
		case c.refuse == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
			t.Errorf("%s: %v, want a refusal about %q", c.name, err, c.refuse)
		}
	}
}

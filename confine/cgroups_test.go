package confine

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
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

func checkCgroupImage(t *testing.T, cg *cgroup.CgroupEntry) error {
	t.Helper()
	dir := t.TempDir()
	writeImage(t, filepath.Join(dir, "cgroup.img"), "CGROUP", cg)
	return checkCgroups(dir, []string{"cgroup.img"})
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
	if err := checkCgroups(t.TempDir(), nil); err != nil {
		t.Fatalf("no cgroup image: %v", err)
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

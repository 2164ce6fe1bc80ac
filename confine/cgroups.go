package confine

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
)

// checkCgroups refuses a checkpoint whose cgroup image (cgroup.img) would
// put a task in a cgroup outside the container's. runc gives CRIU the
// container's cgroup as the new root of each hierarchy, and CRIU moves
// each task into its set's path rewritten under that root; but it rewrites
// only paths under one of the image's top directories for that controller.
// Any other path ("/", or one with "..") is used as it is, from the
// hierarchy's root: the clone would run outside its limits.
func checkCgroups(imagesDir string, names []string) error {
	if !slices.Contains(names, "cgroup.img") {
		return nil
	}
	img, err := decodeImage(filepath.Join(imagesDir, "cgroup.img"), &cgroup.CgroupEntry{})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	for _, e := range img.Entries {
		cg, ok := e.Message.(*cgroup.CgroupEntry)
		if !ok {
			return fmt.Errorf("%w: cgroup.img: not a cgroup entry", ErrRefused)
		}
		if err := checkCgroupEntry(cg); err != nil {
			return fmt.Errorf("%w: cgroup.img: %w", ErrRefused, err)
		}
	}
	return nil
}

func checkCgroupEntry(cg *cgroup.CgroupEntry) error {
	for _, c := range cg.GetControllers() {
		for _, d := range c.GetDirs() {
			// A top directory may be a path ("a/b"), its children are names.
			if err := checkCgroupDir(d, true); err != nil {
				return err
			}
		}
	}
	for _, set := range cg.GetSets() {
		for _, m := range set.GetCtls() {
			p := m.GetPath()
			if !path.IsAbs(p) || path.Clean(p) != p {
				return fmt.Errorf("set %d puts %s tasks in %q, not a clean absolute path", set.GetId(), m.GetName(), p)
			}
			if !underTopDir(cg, m.GetName(), p) {
				return fmt.Errorf("set %d puts %s tasks in %q, outside the container's cgroup", set.GetId(), m.GetName(), p)
			}
		}
	}
	return nil
}

func checkCgroupDir(d *cgroup.CgroupDirEntry, top bool) error {
	name := d.GetDirName()
	bad := strings.HasPrefix(name, "/") || (name != "" && path.Clean(name) != name) || slices.Contains(strings.Split(name, "/"), "..")
	if !top && (name == "" || strings.Contains(name, "/")) {
		bad = true
	}
	if bad {
		return fmt.Errorf("cgroup directory %q", name)
	}
	for _, c := range d.GetChildren() {
		if err := checkCgroupDir(c, false); err != nil {
			return err
		}
	}
	return nil
}

// underTopDir reports whether CRIU rewrites path p of controller name
// under the container's cgroup: p is one of the top directories of a
// controller that holds every controller the name lists, or under one.
func underTopDir(cg *cgroup.CgroupEntry, name, p string) bool {
	for _, c := range cg.GetControllers() {
		if !holdsAll(c.GetCnames(), strings.Split(name, ",")) {
			continue
		}
		for _, d := range c.GetDirs() {
			top := "/" + d.GetDirName()
			if d.GetDirName() == "" || p == top || strings.HasPrefix(p, top+"/") {
				return true
			}
		}
	}
	return false
}

func holdsAll(cnames, names []string) bool {
	for _, n := range names {
		if !slices.Contains(cnames, n) {
			return false
		}
	}
	return true
}

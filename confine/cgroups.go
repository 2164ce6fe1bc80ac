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
// container's cgroup as the new root of each hierarchy, and CRIU rewrites
// each set's path under it: for each controller whose names the set's
// entry lists, the part of the path that matches one of the controller's
// top directories, as a string prefix, becomes the new root. A path that
// matches none is used from the hierarchy's root ("/": outside every
// limit); one that matches a top directory only as a string ("/ab" for
// "a") becomes a sibling of the container's cgroup. So the image must have
// the layout CRIU dumps for a container: each controller with one top
// directory, the same for all, each set entry matched by exactly one
// controller, its path that directory or below it, and a cgroup namespace
// prefix, if any, that ends on a path separator.
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
	top := ""
	for _, c := range cg.GetControllers() {
		if len(c.GetCnames()) == 0 || (len(c.GetCnames()) > 1 && slices.Contains(c.GetCnames(), "")) {
			return fmt.Errorf("controller names %q", c.GetCnames())
		}
		if len(c.GetDirs()) != 1 {
			return fmt.Errorf("controller %s has %d top directories, want 1", strings.Join(c.GetCnames(), ","), len(c.GetDirs()))
		}
		d := c.GetDirs()[0]
		name := d.GetDirName()
		if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name || slices.Contains(strings.Split(name, "/"), "..") {
			return fmt.Errorf("top cgroup directory %q", name)
		}
		if top != "" && name != top {
			return fmt.Errorf("top cgroup directories %q and %q", top, name)
		}
		top = name
		for _, child := range d.GetChildren() {
			if err := checkCgroupChild(child); err != nil {
				return err
			}
		}
	}
	for _, set := range cg.GetSets() {
		for _, m := range set.GetCtls() {
			p := m.GetPath()
			if m.GetName() != "" && slices.Contains(strings.Split(m.GetName(), ","), "") {
				return fmt.Errorf("set %d entry %q", set.GetId(), m.GetName())
			}
			matched := 0
			for _, c := range cg.GetControllers() {
				if criuContains(c.GetCnames(), m.GetName()) {
					matched++
				}
			}
			switch {
			case matched != 1:
				return fmt.Errorf("set %d entry %q is matched by %d controllers, want 1", set.GetId(), m.GetName(), matched)
			case top == "" || !(p == "/"+top || strings.HasPrefix(p, "/"+top+"/")) || path.Clean(p) != p:
				return fmt.Errorf("set %d puts %s tasks in %q, outside the container's cgroup", set.GetId(), m.GetName(), p)
			}
			// CRIU keeps the path from the prefix on, under the new root,
			// and takes as many bytes of the top directory's name.
			if n := int(m.GetCgnsPrefix()); n != 0 && n != len("/"+top) {
				return fmt.Errorf("set %d entry %q: cgroup namespace prefix %d, want the top directory's (%d)", set.GetId(), m.GetName(), n, len("/"+top))
			}
		}
	}
	return nil
}

// checkCgroupChild checks a directory below a top one: a plain name.
func checkCgroupChild(d *cgroup.CgroupDirEntry) error {
	name := d.GetDirName()
	if name == "" || name == "." || name == ".." || strings.Contains(name, "/") {
		return fmt.Errorf("cgroup directory %q", name)
	}
	for _, c := range d.GetChildren() {
		if err := checkCgroupChild(c); err != nil {
			return err
		}
	}
	return nil
}

// criuContains is CRIU's cgroup_contains: whether a set entry named name
// ("cpu,cpuacct") lists every one of a controller's names; a controller
// named "" (cgroup v2) matches only the entry named "".
func criuContains(cnames []string, name string) bool {
	if len(cnames) == 1 && cnames[0] == "" {
		return name == ""
	}
	listed := strings.Split(name, ",")
	for _, c := range cnames {
		if !slices.Contains(listed, c) {
			return false
		}
	}
	return true
}

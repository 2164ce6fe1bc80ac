package confine

import (
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/cgroup"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/inventory"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/snapboot/snapboot/restorehook"
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
//
// For a spec with a cgroup namespace, the root task's set must also make
// CRIU create one: CRIU leaves the cgroup namespace out of its clone flags
// and unshares one only for a root task in a set of its own (not the
// dumping CRIU's, inventory.img's root_cg_set) whose entries have a cgroup
// namespace prefix; otherwise the clone stays in the host's, where a
// cgroup mount shows the whole hierarchy.
//
// CRIU mounts each controller's hierarchy with the image's names, and
// makes every directory below the top one, as root: the names must be
// those of hierarchies the node has (nodeNames, cgroup v1's; "" is cgroup
// v2's), or the mount would make a new hierarchy on the node, which the
// directory CRIU leaves in it keeps for good; and there may be at most
// maxCgroupDirs such directories in all: each one takes kernel memory,
// and in the memory hierarchy one of the node's 65535 memory cgroup ids.
func checkCgroups(imagesDir string, names []string, spec *specs.Spec, nodeNames map[string]bool) error {
	wantNS := hasCgroupNamespace(spec)
	if !slices.Contains(names, "cgroup.img") {
		if wantNS {
			return fmt.Errorf("%w: no cgroup.img: CRIU would not make the cgroup namespace the spec has", ErrRefused)
		}
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
		if err := checkCgroupHierarchies(cg, nodeNames); err != nil {
			return fmt.Errorf("%w: cgroup.img: %w", ErrRefused, err)
		}
		if wantNS {
			if err := checkCgroupNS(imagesDir, cg); err != nil {
				return fmt.Errorf("%w: %w", ErrRefused, err)
			}
		}
	}
	return nil
}

// checkCgroupNS checks that CRIU makes the root task a cgroup namespace.
func checkCgroupNS(imagesDir string, cg *cgroup.CgroupEntry) error {
	inv, err := decodeOne(filepath.Join(imagesDir, "inventory.img"), &inventory.InventoryEntry{})
	if err != nil {
		return err
	}
	tree, err := decodeImage(filepath.Join(imagesDir, "pstree.img"), &pstree.PstreeEntry{})
	if err != nil {
		return err
	}
	if len(tree.Entries) == 0 {
		return fmt.Errorf("pstree.img has no tasks")
	}
	rootPid := tree.Entries[0].Message.(*pstree.PstreeEntry).GetPid()
	_, core, err := decodeCore(filepath.Join(imagesDir, fmt.Sprintf("core-%d.img", rootPid)))
	if err != nil {
		return err
	}
	id := core.GetTc().GetCgSet()
	if id == 0 || id == inv.Entries[0].Message.(*inventory.InventoryEntry).GetRootCgSet() {
		return fmt.Errorf("the root task is in the dumping CRIU's cgroup set: CRIU would not make the cgroup namespace the spec has")
	}
	for _, set := range cg.GetSets() {
		if set.GetId() != id {
			continue
		}
		for _, m := range set.GetCtls() {
			if m.GetCgnsPrefix() == 0 {
				return fmt.Errorf("cgroup.img: the root task's set has no cgroup namespace for %q: CRIU would not make the one the spec has", m.GetName())
			}
		}
		return nil
	}
	return fmt.Errorf("cgroup.img has no set %d, the root task's", id)
}

func checkCgroupEntry(cg *cgroup.CgroupEntry) error {
	top := ""
	for _, c := range cg.GetControllers() {
		if len(c.GetCnames()) == 0 || (len(c.GetCnames()) > 1 && slices.Contains(c.GetCnames(), "")) {
			return fmt.Errorf("controller names %q", c.GetCnames())
		}
		for _, n := range c.GetCnames() {
			if !controllerName(n) {
				return fmt.Errorf("controller name %q", n)
			}
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
			matched, exact := 0, false
			for _, c := range cg.GetControllers() {
				if criuContains(c.GetCnames(), m.GetName()) {
					matched++
					exact = exact || sameNames(c.GetCnames(), m.GetName())
				}
			}
			switch {
			case matched != 1 || !exact:
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

// maxCgroupDirs is the most directories below the container's cgroup,
// in all hierarchies, that a checkpoint may have CRIU make.
const maxCgroupDirs = 256

// checkCgroupHierarchies checks the controllers' names against the node's
// hierarchies and counts the directories below the top ones (see
// checkCgroups).
func checkCgroupHierarchies(cg *cgroup.CgroupEntry, nodeNames map[string]bool) error {
	dirs := 0
	var count func(ds []*cgroup.CgroupDirEntry)
	count = func(ds []*cgroup.CgroupDirEntry) {
		for _, d := range ds {
			if dirs++; dirs <= maxCgroupDirs {
				count(d.GetChildren())
			}
		}
	}
	for _, c := range cg.GetControllers() {
		for _, n := range c.GetCnames() {
			if n != "" && !nodeNames[n] {
				return fmt.Errorf("controller %q is no cgroup v1 hierarchy of this node's: CRIU would mount a new one", n)
			}
		}
		for _, d := range c.GetDirs() {
			count(d.GetChildren())
		}
	}
	if dirs > maxCgroupDirs {
		return fmt.Errorf("more than %d cgroups below the container's, which CRIU would make as root", maxCgroupDirs)
	}
	return nil
}

// criuContains is CRIU's cgroup_contains: whether a set entry named name
// ("cpu,cpuacct") has every one of a controller's names, each found as a
// substring that ends the name or a comma (CRIU does not look at what
// comes before it); a controller named "" (cgroup v2) matches only the
// entry named "".
func criuContains(cnames []string, name string) bool {
	if len(cnames) == 1 && cnames[0] == "" {
		return name == ""
	}
	for _, c := range cnames {
		found := false
		for rest := name; ; {
			i := strings.Index(rest, c)
			if i < 0 {
				break
			}
			rest = rest[i+len(c):]
			if rest == "" || rest[0] == ',' {
				found = true
				break
			}
			if c == "" {
				break // CRIU's strstr would find "" again, at the same place
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// sameNames reports whether a set entry's name lists exactly a
// controller's names, in any order.
func sameNames(cnames []string, name string) bool {
	if len(cnames) == 1 && cnames[0] == "" {
		return name == ""
	}
	listed := strings.Split(name, ",")
	if len(listed) != len(cnames) {
		return false
	}
	for _, c := range cnames {
		if !slices.Contains(listed, c) {
			return false
		}
	}
	return true
}

// hasCgroupNamespace reports whether the spec gives the container a cgroup
// namespace of its own.
func hasCgroupNamespace(spec *specs.Spec) bool {
	_, ok := restorehook.SpecNamespace(spec, specs.CgroupNamespace)
	return ok
}

// controllerName reports whether n is a controller's name as CRIU may use
// it: it mounts each hierarchy at a directory named after its controllers
// ("name=" taken off a named hierarchy's) and passes the names as the
// mount's options. "" is cgroup v2's.
func controllerName(n string) bool {
	if n == "" {
		return true // cgroup v2's
	}
	if rest, named := strings.CutPrefix(n, "name="); named {
		if n = rest; n == "" {
			return false
		}
	}
	return n != "." && n != ".." && !strings.ContainsAny(n, "/,=\x00")
}

// keptProperties are the properties of a cgroup CRIU makes below the
// container's that stay in cgroup.img: without them CRIU could not put
// a task there (a v1 cpuset's CPUs and memory nodes, a v2 threaded
// cgroup's type). The kernel keeps a child's within its parent's.
var keptProperties = map[string]func(value string) bool{
	"cpuset.cpus": func(string) bool { return true },
	"cpuset.mems": func(string) bool { return true },
	"cgroup.type": func(v string) bool { return v == "threaded" },
}

// stripCgroupSettings returns cgroup.img without the settings CRIU would
// write into the hierarchy as root: each directory's owner and mode
// (dir_perms, which CRIU applies to the container's own cgroup directory
// too, making it the app's to change) and properties (the files of a
// cgroup CRIU creates below the container's, opened by a name from the
// image, "../" included, and written, chowned and chmodded as root: any
// file of the node, and net_cls.classid or net_prio.ifpriomap, which the
// node's traffic rules trust). The cold start gets runc's cgroup with the
// spec's limits, and the kernel's defaults below it; a cgroup below the
// container's keeps only keptProperties, by exact name, without owners.
// nil if there is nothing to strip.
func stripCgroupSettings(imagesDir string, names []string) (map[string]*crit.CriuImage, error) {
	if !slices.Contains(names, "cgroup.img") {
		return nil, nil
	}
	img, err := decodeImage(filepath.Join(imagesDir, "cgroup.img"), &cgroup.CgroupEntry{})
	if err != nil {
		return nil, err
	}
	var strip func(dirs []*cgroup.CgroupDirEntry, child bool) bool
	strip = func(dirs []*cgroup.CgroupDirEntry, child bool) bool {
		changed := false
		for _, d := range dirs {
			var kept []*cgroup.CgroupPropEntry
			for _, p := range d.Properties {
				if ok := keptProperties[p.GetName()]; child && ok != nil && ok(p.GetValue()) {
					if p.Perms != nil {
						p.Perms, changed = nil, true
					}
					kept = append(kept, p)
				}
			}
			if d.DirPerms != nil || len(kept) != len(d.Properties) {
				d.DirPerms, d.Properties = nil, kept
				changed = true
			}
			changed = strip(d.Children, true) || changed
		}
		return changed
	}
	changed := false
	for _, e := range img.Entries {
		for _, c := range e.Message.(*cgroup.CgroupEntry).GetControllers() {
			changed = strip(c.Dirs, false) || changed
		}
	}
	if !changed {
		return nil, nil
	}
	return map[string]*crit.CriuImage{"cgroup.img": img}, nil
}

package confine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// layers are the directories of the container's root file system, topmost
// first (an overlay's upper and lower directories), opened when first
// needed: confine looks up paths in them as overlayfs would show them.
type layers struct {
	dirs  []string
	roots []*os.Root
	steps map[string]step // lookup's results, by path
}

// step is what lookup found at a path: the entry shown (nil: none), and
// the layers to look into below it.
type step struct {
	top  *entry
	next []int
}

func (l *layers) close() {
	for _, r := range l.roots {
		r.Close()
	}
}

func (l *layers) open() error {
	if l.roots != nil {
		return nil
	}
	if len(l.dirs) == 0 {
		return errNoLayers
	}
	roots := make([]*os.Root, 0, len(l.dirs))
	for _, dir := range l.dirs {
		r, err := os.OpenRoot(dir)
		if err != nil {
			for _, o := range roots {
				o.Close()
			}
			return fmt.Errorf("a layer of the container's root file system: %w", err)
		}
		roots = append(roots, r)
	}
	l.roots = roots
	return nil
}

// errNoLayers is open's error for a root file system it cannot look into.
var errNoLayers = errors.New("this container's root file system is not an overlay or a bind mount, which snapboot can look into (a limit of the node's snapshotter, not of the checkpoint)")

// entry is what the root file system shows at a path: the topmost layer's
// entry, none where a whiteout hides the ones below.
type entry struct {
	fi    os.FileInfo
	layer int
	path  string // on the node (for its ACL)
}

// lookup returns the entries the root file system shows at each prefix of
// rel (a relative path without "." or ".."), from the first component on,
// as far as they exist: a missing one ends the list, and so does anything
// else than a directory (a symbolic link, which the caller sees last). It
// resolves one component at a time, as overlayfs merges directories: the
// topmost layer's entry is shown; only the layers below it that have a
// directory there too (down to an opaque one, a whiteout or anything else)
// are looked into further, so no layer's path goes through a link.
func (l *layers) lookup(rel string) ([]entry, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	var out []entry
	active := make([]int, len(l.roots))
	for j := range active {
		active[j] = j
	}
	parts := splitPath(rel)
	if l.steps == nil {
		l.steps = map[string]step{}
	}
	for i := range parts {
		prefix := filepath.Join(parts[:i+1]...)
		st, known := l.steps[prefix]
		if !known {
			var err error
			if st, err = l.step(prefix, active); err != nil {
				return nil, err
			}
			l.steps[prefix] = st
		}
		if st.top == nil {
			return out, nil
		}
		out = append(out, *st.top)
		if !st.top.fi.IsDir() {
			return out, nil
		}
		active = st.next
	}
	return out, nil
}

// step looks prefix up in the active layers.
func (l *layers) step(prefix string, active []int) (step, error) {
	var top *entry
	var next []int
	for _, j := range active {
		fi, err := l.roots[j].Lstat(prefix)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return step{}, fmt.Errorf("/%s in layer %d of the root file system: %w", prefix, j, err)
		}
		if isWhiteout(fi) {
			break
		}
		if top == nil {
			top = &entry{fi: fi, layer: j, path: filepath.Join(l.dirs[j], prefix)}
		}
		if !fi.IsDir() {
			break // the topmost, or what ends the merge below a directory
		}
		next = append(next, j)
		if l.opaque(j, prefix) {
			break
		}
	}
	return step{top: top, next: next}, nil
}

// opaque reports whether directory prefix of layer j is an overlay opaque
// directory, which hides what the layers below have under it.
func (l *layers) opaque(j int, prefix string) bool {
	d, err := l.roots[j].Open(prefix)
	if err != nil {
		return false
	}
	defer d.Close()
	for _, name := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		buf := make([]byte, 8)
		if n, err := unix.Fgetxattr(int(d.Fd()), name, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}

// isWhiteout reports whether fi is an overlay whiteout: a 0/0 character
// device.
func isWhiteout(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && fi.Mode()&os.ModeCharDevice != 0 && st.Rdev == 0
}

// splitPath splits a relative path into its components.
func splitPath(rel string) []string {
	var parts []string
	for _, p := range strings.Split(rel, "/") {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return parts
}

// rootInfo returns the file information of the root file system's root
// directory, which overlayfs takes from its topmost layer.
func (l *layers) rootInfo() (os.FileInfo, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	return l.roots[0].Stat(".")
}

// names returns the names of the entries the layers have in directory
// rel, each once: those a whiteout or an opaque directory hides among
// them (imageEntry tells).
func (l *layers) names(rel string) ([]string, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []string
	for _, root := range l.roots {
		d, err := root.Open(rel)
		if err != nil {
			continue
		}
		ents, err := d.ReadDir(-1)
		d.Close()
		if err != nil {
			continue
		}
		for _, e := range ents {
			if !seen[e.Name()] {
				seen[e.Name()] = true
				out = append(out, e.Name())
			}
		}
	}
	return out, nil
}

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
		return errors.New("the container's root file system has no layers snapboot can look into")
	}
	l.roots = []*os.Root{}
	for _, dir := range l.dirs {
		r, err := os.OpenRoot(dir)
		if err != nil {
			return fmt.Errorf("a layer of the container's root file system: %w", err)
		}
		l.roots = append(l.roots, r)
	}
	return nil
}

// entry is what the root file system shows at a path: the topmost layer's
// entry, none where a whiteout hides the ones below.
type entry struct {
	fi    os.FileInfo
	layer int
}

// lookup returns the entries the root file system shows at each prefix of
// rel (a relative path without "." or ".."), from the first component on,
// as far as they exist: a missing one ends the list. A symbolic link that
// is not the last component ends it too (the caller sees it), as does
// anything else than a directory.
func (l *layers) lookup(rel string) ([]entry, error) {
	if err := l.open(); err != nil {
		return nil, err
	}
	var out []entry
	parts := splitPath(rel)
	limit := len(l.roots) // an opaque directory hides the layers below it
	for i := range parts {
		prefix := filepath.Join(parts[:i+1]...)
		var found *entry
		for j := 0; j < limit; j++ {
			fi, err := l.roots[j].Lstat(prefix)
			if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("/%s in layer %d of the root file system: %w", prefix, j, err)
			}
			if isWhiteout(fi) {
				break
			}
			found = &entry{fi: fi, layer: j}
			break
		}
		if found == nil {
			return out, nil
		}
		out = append(out, *found)
		if !found.fi.IsDir() {
			return out, nil
		}
		if l.opaque(found.layer, prefix) {
			limit = found.layer + 1
		}
	}
	return out, nil
}

// opaque reports whether directory prefix of layer j is an overlay opaque
// directory, which hides what the layers below have under it.
func (l *layers) opaque(j int, prefix string) bool {
	p := filepath.Join(l.dirs[j], prefix)
	for _, name := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		buf := make([]byte, 8)
		if n, err := unix.Lgetxattr(p, name, buf); err == nil && n == 1 && buf[0] == 'y' {
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

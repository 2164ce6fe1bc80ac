package confine

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
)

// tmpfsTrees lists what CRIU puts in the container's tmpfs mounts: the
// contents CRIU dumped with tar, which it unpacks there as root before the
// files and sockets are restored (tmpfs-dev-<device>.tar.gz.img, or the
// older tmpfs-<mount id>.tar.gz.img when that one is missing or empty,
// as CRIU picks them). Each image is listed once, when first needed.
type tmpfsTrees struct {
	imagesDir string
	names     []string
	trees     map[string]map[string]*tar.Header // by image name: entries by path from the tmpfs's root
}

// maxTmpfsEntries bounds the entries of one tmpfs image that are listed.
const maxTmpfsEntries = 1 << 20

// lookup returns the entry the tmpfs m shows at p (an absolute path within
// the file system, from its root), or nil for none.
func (t *tmpfsTrees) lookup(m *mnt.MntEntry, p string) (*tar.Header, error) {
	name := fmt.Sprintf("tmpfs-dev-%d.tar.gz.img", m.GetRootDev())
	if fi, err := os.Stat(filepath.Join(t.imagesDir, name)); err != nil || fi.Size() == 0 || !slices.Contains(t.names, name) {
		name = fmt.Sprintf("tmpfs-%d.tar.gz.img", m.GetMntId())
	}
	tree, ok := t.trees[name]
	if !ok {
		var err error
		if tree, err = listTar(filepath.Join(t.imagesDir, name)); err != nil {
			return nil, fmt.Errorf("the contents of the tmpfs at %s (%s): %w", m.GetMountpoint(), name, err)
		}
		if t.trees == nil {
			t.trees = map[string]map[string]*tar.Header{}
		}
		t.trees[name] = tree
	}
	return tree[path.Clean(p)], nil
}

// listTar lists a gzipped tar file's entries by their paths, cleaned and
// rooted at "/" (tar gives CRIU's as "./a/b"). A missing file lists none:
// CRIU then fails to fill the tmpfs.
func listTar(p string) (map[string]*tar.Header, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]*tar.Header{}, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, err
	}
	defer z.Close()
	r := tar.NewReader(z)
	out := map[string]*tar.Header{}
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if len(out) == maxTmpfsEntries {
			return nil, fmt.Errorf("more than %d entries", maxTmpfsEntries)
		}
		if slices.Contains(strings.Split(h.Name, "/"), "..") {
			continue // GNU tar, which CRIU runs, skips such a member
		}
		out[path.Clean("/"+h.Name)] = h
	}
}

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
// contents CRIU dumped with GNU tar, which it unpacks there as root with
// GNU tar before the files and sockets are restored
// (tmpfs-dev-<device>.tar.gz.img, or the older tmpfs-<mount id>.tar.gz.img
// where that one is missing, as CRIU picks them). Each image is listed
// once, when first needed.
//
// Only the forms CRIU's `tar --create` makes are listed (see listTar):
// GNU tar and Go's archive/tar read other forms differently, and GNU tar
// resolves members through the links earlier members made, so a listing
// of anything else could show no link where GNU tar leaves one.
type tmpfsTrees struct {
	imagesDir string
	names     []string
	trees     map[string]tmpfsTree // by image name
}

type tmpfsTree struct {
	entries map[string]tmpfsEntry // by path from the tmpfs's root
	order   []string              // the paths, as the members come
	err     error
}

// tmpfsEntry is what a member makes: its kind (a tar type flag) and, for a
// symbolic link, its target; its owner (in the ids of the container's user
// namespace, where CRIU runs tar), mode and, for a device, its numbers.
type tmpfsEntry struct {
	kind         byte
	target       string
	uid, gid     uint32
	mode         os.FileMode // permission and set-id bits, as tar unpacks them
	size         int64
	major, minor int64
}

// Bounds of one tmpfs image's listing: members, bytes of their names and
// link targets, and bytes unpacked (the members' data, skipped over).
const (
	maxTmpfsEntries   = 1 << 18
	maxTmpfsNameBytes = 64 << 20
	maxTmpfsBytes     = 8 << 30
	maxPathLen        = 4096 // PATH_MAX
)

// lookup returns the entry the tmpfs m shows at p (an absolute path within
// the file system, from its root); ok is false for none.
func (t *tmpfsTrees) lookup(m *mnt.MntEntry, p string) (e tmpfsEntry, ok bool, err error) {
	tree := t.tree(m)
	if tree.err != nil {
		return tmpfsEntry{}, false, tree.err
	}
	e, ok = tree.entries[path.Clean(p)]
	return e, ok, nil
}

// tree lists the contents CRIU puts in the tmpfs m, once.
func (t *tmpfsTrees) tree(m *mnt.MntEntry) tmpfsTree {
	name := fmt.Sprintf("tmpfs-dev-%d.tar.gz.img", m.GetRootDev())
	if !slices.Contains(t.names, name) {
		name = fmt.Sprintf("tmpfs-%d.tar.gz.img", m.GetMntId())
	}
	tree, listed := t.trees[name]
	if !listed {
		tree.entries, tree.order, tree.err = listTar(filepath.Join(t.imagesDir, name))
		if tree.err != nil {
			tree.err = fmt.Errorf("the contents of the tmpfs at %s (%s): %w", m.GetMountpoint(), name, tree.err)
		}
		if t.trees == nil {
			t.trees = map[string]tmpfsTree{}
		}
		t.trees[name] = tree
	}
	return tree
}

// listTar lists a gzipped tar file's members by their paths, rooted at
// "/", as CRIU's GNU tar made it: GNU, ustar or PAX headers (PAX records
// of times, ids and sizes only; no global headers, volume labels or other
// extensions), names relative to
// "." without "..", each path once, each member in a directory listed
// before it (so that no member goes through a link), hard links to regular
// files listed before them. Anything else is refused. A missing file lists
// nothing: CRIU then fails to fill the tmpfs.
func listTar(p string) (map[string]tmpfsEntry, []string, error) {
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]tmpfsEntry{}, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, nil, err
	}
	defer z.Close()
	unpacked := &io.LimitedReader{R: z, N: maxTmpfsBytes + 1}
	r := tar.NewReader(unpacked)
	out := map[string]tmpfsEntry{}
	var order []string
	nameBytes := 0
	for {
		h, err := r.Next()
		if err == io.EOF {
			if _, ok := out["/"]; !ok && len(out) > 0 {
				return nil, nil, errors.New("no member for the tmpfs's root (./)")
			}
			return out, order, nil
		}
		if unpacked.N <= 0 {
			return nil, nil, fmt.Errorf("more than %d bytes unpacked", int64(maxTmpfsBytes))
		}
		if err != nil {
			return nil, nil, err
		}
		if len(out) == maxTmpfsEntries {
			return nil, nil, fmt.Errorf("more than %d members", maxTmpfsEntries)
		}
		if nameBytes += len(h.Name) + len(h.Linkname); nameBytes > maxTmpfsNameBytes {
			return nil, nil, fmt.Errorf("more than %d bytes of names", maxTmpfsNameBytes)
		}
		key, err := memberPath(h)
		if err != nil {
			return nil, nil, err
		}
		if _, seen := out[key]; seen {
			return nil, nil, fmt.Errorf("member %q twice", h.Name)
		}
		if key != "/" {
			if parent, ok := out[path.Dir(key)]; !ok || parent.kind != tar.TypeDir {
				return nil, nil, fmt.Errorf("member %q is not in a directory listed before it", h.Name)
			}
		} else if h.Typeflag != tar.TypeDir {
			return nil, nil, fmt.Errorf("the tmpfs's root (%q) is not a directory", h.Name)
		}
		e := tmpfsEntry{kind: h.Typeflag, uid: uint32(h.Uid), gid: uint32(h.Gid), mode: tarMode(h.Mode), size: h.Size, major: h.Devmajor, minor: h.Devminor}
		switch h.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeGNUSparse:
		case tar.TypeSymlink:
			if len(h.Linkname) > maxPathLen || strings.ContainsRune(h.Linkname, 0) {
				return nil, nil, fmt.Errorf("member %q links to a name that is too long", h.Name)
			}
			e.target = h.Linkname
		case tar.TypeLink:
			target, ok := out[path.Clean("/"+h.Linkname)]
			if !ok || (target.kind != tar.TypeReg && target.kind != tar.TypeGNUSparse) {
				return nil, nil, fmt.Errorf("member %q is a hard link to %q, not a regular file listed before it", h.Name, h.Linkname)
			}
			e.kind, e.uid, e.gid, e.mode, e.size = tar.TypeReg, target.uid, target.gid, target.mode, target.size
		default:
			return nil, nil, fmt.Errorf("member %q is of type %q, which CRIU's tar does not make", h.Name, h.Typeflag)
		}
		out[key] = e
		order = append(order, key)
	}
}

// tarMode is a member's permission and set-id bits as an os.FileMode.
func tarMode(m int64) os.FileMode {
	mode := os.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		mode |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		mode |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		mode |= os.ModeSticky
	}
	return mode
}

// paxKeys are the PAX records a member may have: those GNU tar writes, in
// its posix format (a distribution's default), for times, ids and sizes
// that do not fit the header, but not user or group names (see
// memberPath). Any other (a path, a link's target, a sparse file's name)
// is refused: GNU tar and Go's archive/tar pick names
// differently where they meet other headers.
var paxKeys = map[string]bool{"atime": true, "ctime": true, "mtime": true, "uid": true, "gid": true, "size": true}

// memberPath returns a member's path from the tmpfs's root, refusing any
// header CRIU's tar does not make.
func memberPath(h *tar.Header) (string, error) {
	if h.Format&(tar.FormatGNU|tar.FormatUSTAR|tar.FormatPAX) == 0 {
		return "", fmt.Errorf("member %q has a %v header, not GNU tar's", h.Name, h.Format)
	}
	for key := range h.PAXRecords {
		if !paxKeys[key] {
			return "", fmt.Errorf("member %q has a PAX record %q, which snapboot does not read as GNU tar would", h.Name, key)
		}
	}
	// CRIU's tar extracts without --numeric-owner: a member's user and
	// group names, where the node has them, would win over its ids. CRIU
	// packs with --numeric-owner, which leaves them out.
	if h.Uname != "" || h.Gname != "" {
		return "", fmt.Errorf("member %q has a user or group name (%q, %q), which CRIU's tar would take over its ids", h.Name, h.Uname, h.Gname)
	}
	name := h.Name
	if len(name) > maxPathLen || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("member name %.64q… is too long", name)
	}
	if name != "./" && name != "." && !strings.HasPrefix(name, "./") {
		return "", fmt.Errorf("member %q is not relative to \".\"", name)
	}
	if slices.Contains(strings.Split(name, "/"), "..") {
		return "", fmt.Errorf("member %q has \"..\" in its name", name)
	}
	return path.Clean("/" + name), nil
}

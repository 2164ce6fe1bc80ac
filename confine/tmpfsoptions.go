package confine

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mnt"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// tmpfsLimits is what checkTmpfsOptions compares: the file system's root
// (its mode and owner, in the container's ids) and its bounds, in pages.
type tmpfsLimits struct {
	mode       uint32
	uid, gid   uint32
	pages      uint64 // size= or nr_blocks=
	inodes     uint64 // nr_inodes=
	hasPages   bool
	hasInodes  bool
	parseError error
}

// checkTmpfsOptions checks the options CRIU mounts a tmpfs of the spec's
// (m) with, the image's (e): its root's mode and owner must be the spec's,
// and where the spec bounds its size or its inodes, the image's bounds
// must be no larger. userns: the spec has a user namespace. memPages is
// the node's memory, in pages, which a size in percent and the kernel's
// defaults are of.
func checkTmpfsOptions(e *mnt.MntEntry, m specs.Mount, userns bool, memPages uint64) error {
	// The kernel shows what differs from its defaults (mode 1777, half
	// the memory for both bounds) and an owner other than the node's
	// root, in the ids of the container's user namespace.
	image := tmpfsLimits{mode: 0o1777, pages: memPages / 2, inodes: memPages / 2}
	if userns {
		image.uid, image.gid = unmappedID, unmappedID
	}
	image.parse(strings.Split(e.GetOptions(), ","), memPages)
	spec := specTmpfs(m, memPages)
	where := e.GetMountpoint()
	if err := firstErr(image.parseError, spec.parseError); err != nil {
		return fmt.Errorf("the tmpfs at %s: %w", where, err)
	}
	switch {
	case image.mode != spec.mode:
		return fmt.Errorf("the tmpfs at %s has mode %04o, the spec's is %04o", where, image.mode, spec.mode)
	case image.uid != spec.uid || image.gid != spec.gid:
		return fmt.Errorf("the tmpfs at %s is owned by %s, the spec's by %d:%d", where, ownerIDs(image.uid, image.gid), spec.uid, spec.gid)
	case spec.hasPages && image.pages > spec.pages:
		return fmt.Errorf("the tmpfs at %s may hold %s pages, the spec's %s", where, bound(image.pages), bound(spec.pages))
	case spec.hasInodes && image.inodes > spec.inodes:
		return fmt.Errorf("the tmpfs at %s may hold %s inodes, the spec's %s", where, bound(image.inodes), bound(spec.inodes))
	}
	return nil
}

// bound names a tmpfs bound.
func bound(n uint64) string {
	if n == math.MaxUint64 {
		return "any number of"
	}
	return strconv.FormatUint(n, 10)
}

// ownerIDs names an owner in the container's ids.
func ownerIDs(uid, gid uint32) string {
	if uid == unmappedID || gid == unmappedID {
		return "the node's root, which the user namespace does not map"
	}
	return fmt.Sprintf("%d:%d", uid, gid)
}

// specTmpfs is the tmpfs runc mounts for m: as the container's root, which
// owns it unless the options say otherwise, with the kernel's mode where
// they give none.
func specTmpfs(m specs.Mount, memPages uint64) tmpfsLimits {
	l := tmpfsLimits{mode: 0o1777}
	l.parse(specOptions(m), memPages)
	return l
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// parse reads the options that tmpfsLimits holds, as the kernel's tmpfs
// does (shmem_parse_one); others are left.
func (l *tmpfsLimits) parse(options []string, memPages uint64) {
	for _, o := range options {
		key, value, ok := strings.Cut(o, "=")
		if !ok {
			continue
		}
		var err error
		switch key {
		case "mode":
			var v uint64
			v, err = strconv.ParseUint(value, 8, 32)
			l.mode = uint32(v) & 0o7777
		case "uid", "gid":
			var v uint64
			if v, err = strconv.ParseUint(value, 0, 32); err == nil {
				if key == "uid" {
					l.uid = uint32(v)
				} else {
					l.gid = uint32(v)
				}
			}
		case "size":
			var bytes uint64
			if bytes, err = memSize(value, memPages*pageSize); err == nil {
				l.pages, l.hasPages = unlimitedIfZero((bytes+pageSize-1)/pageSize), true
			}
		case "nr_blocks":
			l.pages, err = memSize(value, 0)
			l.pages, l.hasPages = unlimitedIfZero(l.pages), err == nil
		case "nr_inodes":
			l.inodes, err = memSize(value, 0)
			l.inodes, l.hasInodes = unlimitedIfZero(l.inodes), err == nil
		}
		if err != nil && l.parseError == nil {
			l.parseError = fmt.Errorf("option %q: %w", o, err)
		}
	}
}

// unlimitedIfZero is a tmpfs bound as the kernel takes it: 0 for none.
func unlimitedIfZero(n uint64) uint64 {
	if n == 0 {
		return math.MaxUint64
	}
	return n
}

// pageSize is the node's page size.
var pageSize = uint64(os.Getpagesize())

// nodeMemPages is the node's memory, in pages (0 where it cannot be read:
// then a size in percent does not parse).
var nodeMemPages = sync.OnceValue(func() uint64 {
	var info unix.Sysinfo_t
	if err := unix.Sysinfo(&info); err != nil {
		return 0
	}
	return uint64(info.Totalram) * uint64(info.Unit) / pageSize
})

// memSize parses a number with the kernel's memparse suffixes (k, m, g, t,
// p, e), or, where of is not 0, a percentage of of.
func memSize(s string, of uint64) (uint64, error) {
	if pct, ok := strings.CutSuffix(s, "%"); ok && of != 0 {
		v, err := strconv.ParseUint(pct, 10, 64)
		if err != nil {
			return 0, err
		}
		if v > 1<<20 {
			return 0, fmt.Errorf("%s%% is too large", pct)
		}
		return of * v / 100, nil
	}
	shift := 0
	if n := len(s); n > 0 {
		if i := strings.IndexByte("kmgtpe", s[n-1]|0x20); i >= 0 {
			shift, s = 10*(i+1), s[:n-1]
		}
	}
	v, err := strconv.ParseUint(s, 0, 64)
	if err != nil {
		return 0, err
	}
	if shift > 0 && v > ^uint64(0)>>shift {
		return 0, fmt.Errorf("%s is too large", s)
	}
	return v << shift, nil
}

//go:build linux

// Package cowpages finds the page images that CRIU reads a page at a time
// when it restores them: a child's memory maps that coincide with its
// parent's may still share pages with it, copy-on-write, and CRIU reads
// each of their pages on its own to compare it with the parent's (criu/
// mem.c, restore_priv_vma_content). A forking server whose workers were
// forked after it loaded the app (puma's cluster mode with --preload, for
// one) has almost all of its workers' memory restored so.
//
// Read through a FUSE mount with direct I/O, every such page is a request
// to the FUSE server: restoring a Rails app in puma's cluster mode with two
// workers took 21 s so from snapboot's cache, against 4.7 s with those
// images read through the page cache (session 27). snapboot reads them
// through the page cache, or from the cached files themselves.
package cowpages

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// CRIU's VMA status bits (criu/include/image.h) and pagemap flags
// (criu/include/pagemap.h).
const (
	vmaAreaRegular = 1 << 0
	vmaFilePrivate = 1 << 6
	vmaAnonPrivate = 1 << 9
	vmaAreaShstk   = 1 << 15
	vmaAreaAioring = 1 << 13
	pagePresent    = 1 << 2
	pageSize       = 4096
)

// 1/minShare is the share of a page image's pages, compared one at a
// time, from which it is read through the page cache: a page read on its
// own through FUSE costs a request (some 70 µs on session 27's VM), one
// read through the page cache a few µs, but the page cache costs a copy
// more for the rest, read in large runs (some 10 µs a page more there).
const minShare = 8

// PageByPage returns the names of the page images in imagesDir (CRIU's
// images, those before the page images at least) of which CRIU compares
// an eighth of the pages or more one at a time. Images it cannot read
// are an error; the caller then reads every page image as before.
func PageByPage(imagesDir string) (names []string, err error) {
	// The images are untrusted, and go-criu decodes by their magic, not by
	// the message asked for: whatever it does with a crafted one is an
	// error here, not a shim brought down.
	defer func() {
		if r := recover(); r != nil {
			names, err = nil, fmt.Errorf("decoding the images: %v", r)
		}
	}()
	tree, err := decode(filepath.Join(imagesDir, "pstree.img"), &pstree.PstreeEntry{})
	if err != nil {
		return nil, err
	}
	parent := map[uint32]uint32{}
	var tasks []*pstree.PstreeEntry
	for _, e := range tree.Entries {
		t, ok := e.Message.(*pstree.PstreeEntry)
		if !ok {
			return nil, fmt.Errorf("pstree.img: not a process tree")
		}
		tasks = append(tasks, t)
		parent[t.GetPid()] = t.GetPpid()
	}
	maps := map[uint32][]*vma.VmaEntry{}
	vmasOf := func(pid uint32) ([]*vma.VmaEntry, error) {
		if v, ok := maps[pid]; ok {
			return v, nil
		}
		img, err := decode(filepath.Join(imagesDir, fmt.Sprintf("mm-%d.img", pid)), &mm.MmEntry{})
		if os.IsNotExist(err) {
			maps[pid] = nil // a zombie: no memory
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if len(img.Entries) != 1 {
			return nil, fmt.Errorf("mm-%d.img: %d entries, want 1", pid, len(img.Entries))
		}
		m, ok := img.Entries[0].Message.(*mm.MmEntry)
		if !ok {
			return nil, fmt.Errorf("mm-%d.img: not a memory map image", pid)
		}
		v := m.GetVmas()
		sort.Slice(v, func(i, j int) bool { return v[i].GetStart() < v[j].GetStart() })
		maps[pid] = v
		return v, nil
	}
	for _, t := range tasks {
		ppid := t.GetPpid()
		if _, inTree := parent[ppid]; ppid == 0 || !inTree {
			continue // the root: nothing to share with
		}
		own, err := vmasOf(t.GetPid())
		if err != nil {
			return nil, err
		}
		theirs, err := vmasOf(ppid)
		if err != nil {
			return nil, err
		}
		shared := sharedMaps(own, theirs)
		if len(shared) == 0 {
			continue
		}
		path := filepath.Join(imagesDir, fmt.Sprintf("pagemap-%d.img", t.GetPid()))
		img, err := decode(path, &pagemap.PagemapEntry{})
		if err != nil {
			return nil, err
		}
		if len(img.Entries) == 0 {
			return nil, fmt.Errorf("%s: no head", filepath.Base(path))
		}
		head, ok := img.Entries[0].Message.(*pagemap.PagemapHead)
		if !ok {
			return nil, fmt.Errorf("%s: no head", filepath.Base(path))
		}
		var pages, compared uint64
		for _, pe := range img.Entries[1:] {
			m, ok := pe.Message.(*pagemap.PagemapEntry)
			if !ok || m.GetFlags()&pagePresent == 0 {
				continue
			}
			n := nrPages(m)
			pages += n
			compared += overlap(shared, m.GetVaddr(), m.GetVaddr()+n*pageSize) / pageSize
		}
		if compared > 0 && compared*minShare >= pages {
			names = append(names, fmt.Sprintf("pages-%d.img", head.GetPagesId()))
		}
	}
	sort.Strings(names)
	return names, nil
}

// sharedMaps returns the runs of own's private maps that coincide with
// one of theirs, as CRIU's check_cow_vmas has it: the same start and end,
// both private, neither hugetlb, the same MAP_ANONYMOUS and MAP_GROWSDOWN,
// and the same file for a file map. Both are sorted by start.
func sharedMaps(own, theirs []*vma.VmaEntry) [][2]uint64 {
	var runs [][2]uint64
	j := 0
	for _, v := range own {
		for j < len(theirs) && theirs[j].GetStart() < v.GetStart() {
			j++
		}
		if j == len(theirs) {
			break
		}
		p := theirs[j]
		if p.GetStart() != v.GetStart() || p.GetEnd() != v.GetEnd() || !private(v) || !private(p) {
			continue
		}
		if (v.GetFlags()|p.GetFlags())&unix.MAP_HUGETLB != 0 || (v.GetFlags()^p.GetFlags())&(unix.MAP_GROWSDOWN|unix.MAP_ANONYMOUS) != 0 {
			continue
		}
		if v.GetFlags()&unix.MAP_ANONYMOUS == 0 && v.GetShmid() != p.GetShmid() {
			continue
		}
		runs = append(runs, [2]uint64{v.GetStart(), v.GetEnd()})
	}
	return runs
}

func private(v *vma.VmaEntry) bool {
	s := v.GetStatus()
	return s&vmaAreaRegular != 0 && s&(vmaAnonPrivate|vmaFilePrivate) != 0 || s&(vmaAreaShstk|vmaAreaAioring) != 0
}

// overlap is how many bytes of [from, to) the sorted runs cover.
func overlap(runs [][2]uint64, from, to uint64) uint64 {
	i := sort.Search(len(runs), func(i int) bool { return runs[i][1] > from })
	var n uint64
	for ; i < len(runs) && runs[i][0] < to; i++ {
		n += min(to, runs[i][1]) - max(from, runs[i][0])
	}
	return n
}

// nrPages is how many pages a pagemap entry maps. CRIU writes it in field
// 5 (nr_pages, 64 bits), and 0 in field 2 (compat_nr_pages) unless it
// fits: go-criu's proto knows field 2 only, as nr_pages, so field 5 comes
// in the entry's unknown fields.
func nrPages(m *pagemap.PagemapEntry) uint64 {
	b := m.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		if num == 5 && typ == protowire.VarintType {
			if v, n := protowire.ConsumeVarint(b); n > 0 {
				return v
			}
			break
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			break
		}
		b = b[n:]
	}
	return uint64(m.GetNrPages())
}

func decode(path string, msg proto.Message) (*crit.CriuImage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, false).Decode(msg)
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", filepath.Base(path), err)
	}
	return img, nil
}

//go:build linux

package cowpages

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/pstree"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func writeImage(t *testing.T, path, magic string, msgs ...proto.Message) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img := &crit.CriuImage{Magic: magic}
	for _, m := range msgs {
		img.Entries = append(img.Entries, &crit.CriuEntry{Message: m})
	}
	if err := crit.New(nil, f, "", false, false).Encode(img); err != nil {
		t.Fatal(err)
	}
}

const anonPrivate = vmaAreaRegular | vmaAnonPrivate

func anon(start, end uint64) *vma.VmaEntry {
	return &vma.VmaEntry{Start: proto.Uint64(start), End: proto.Uint64(end), Pgoff: proto.Uint64(0), Shmid: proto.Uint64(0),
		Prot: proto.Uint32(unix.PROT_READ | unix.PROT_WRITE), Flags: proto.Uint32(unix.MAP_PRIVATE | unix.MAP_ANONYMOUS),
		Status: proto.Uint32(anonPrivate), Fd: proto.Int64(-1)}
}

// task is a process of a test tree: its memory maps, and its pagemap's
// present runs (start, pages).
type task struct {
	pid, ppid, pagesID uint32
	maps               []*vma.VmaEntry
	present            [][2]uint64
}

func writeTree(t *testing.T, tasks ...task) string {
	t.Helper()
	dir := t.TempDir()
	var tree []proto.Message
	for _, k := range tasks {
		tree = append(tree, &pstree.PstreeEntry{Pid: proto.Uint32(k.pid), Ppid: proto.Uint32(k.ppid), Pgid: proto.Uint32(1), Sid: proto.Uint32(1)})
		writeImage(t, filepath.Join(dir, fmt.Sprintf("mm-%d.img", k.pid)), "MM", &mm.MmEntry{
			MmStartCode: proto.Uint64(0), MmEndCode: proto.Uint64(0), MmStartData: proto.Uint64(0), MmEndData: proto.Uint64(0),
			MmStartStack: proto.Uint64(0), MmStartBrk: proto.Uint64(0), MmBrk: proto.Uint64(0), MmArgStart: proto.Uint64(0),
			MmArgEnd: proto.Uint64(0), MmEnvStart: proto.Uint64(0), MmEnvEnd: proto.Uint64(0), ExeFileId: proto.Uint32(1),
			Vmas: k.maps})
		pm := []proto.Message{&pagemap.PagemapHead{PagesId: proto.Uint32(k.pagesID)}}
		for i, p := range k.present {
			e := &pagemap.PagemapEntry{Vaddr: proto.Uint64(p[0]), NrPages: proto.Uint32(uint32(p[1])), Flags: proto.Uint32(pagePresent)}
			if i%2 == 0 {
				// As CRIU 4 writes it: the count in field 5, 0 in field 2.
				e.NrPages = proto.Uint32(0)
				e.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 5, protowire.VarintType), p[1]))
			}
			pm = append(pm, e)
		}
		writeImage(t, filepath.Join(dir, fmt.Sprintf("pagemap-%d.img", k.pid)), "PAGEMAP", pm...)
	}
	writeImage(t, filepath.Join(dir, "pstree.img"), "PSTREE", tree...)
	return dir
}

// A forking server: the workers' maps coincide with the master's and hold
// most of their pages, so CRIU compares those one by one; a child that
// exec'd shares no map; one whose shared pages are under an eighth of its
// pages is read as before.
func TestPageByPage(t *testing.T) {
	const mb = 1 << 20
	heap, lib, own := anon(0x10000000, 0x10000000+64*mb), anon(0x20000000, 0x20000000+mb), anon(0x30000000, 0x30000000+64*mb)
	dir := writeTree(t,
		task{pid: 1, ppid: 0, pagesID: 1, maps: []*vma.VmaEntry{heap, lib}, present: [][2]uint64{{0x10000000, 64 * 256}, {0x20000000, 256}}},
		// a worker: the master's heap and library, a few pages of its own
		task{pid: 7, ppid: 1, pagesID: 2, maps: []*vma.VmaEntry{heap, lib, anon(0x40000000, 0x40000000+mb)},
			present: [][2]uint64{{0x10000000, 64 * 256}, {0x20000000, 256}, {0x40000000, 256}}},
		// exec'd: other maps
		task{pid: 8, ppid: 1, pagesID: 3, maps: []*vma.VmaEntry{own}, present: [][2]uint64{{0x30000000, 64 * 256}}},
		// the library shared, 64 MiB of its own: 1/65 compared
		task{pid: 9, ppid: 1, pagesID: 10, maps: []*vma.VmaEntry{lib, own}, present: [][2]uint64{{0x20000000, 256}, {0x30000000, 64 * 256}}},
		// a grandchild sharing the worker's map of its own
		task{pid: 11, ppid: 7, pagesID: 11, maps: []*vma.VmaEntry{anon(0x40000000, 0x40000000+mb)}, present: [][2]uint64{{0x40000000, 256}}},
	)
	got, err := PageByPage(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"pages-11.img", "pages-2.img"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("PageByPage = %v, want %v", got, want)
	}
}

// Maps that differ in what CRIU's check_cow_vmas looks at are not shared.
func TestSharedMapsAsCRIUMatchesThem(t *testing.T) {
	base := anon(0x1000, 0x9000)
	for name, change := range map[string]func(v *vma.VmaEntry){
		"end":       func(v *vma.VmaEntry) { v.End = proto.Uint64(0xa000) },
		"shared":    func(v *vma.VmaEntry) { v.Status = proto.Uint32(vmaAreaRegular | 1<<8) },
		"hugetlb":   func(v *vma.VmaEntry) { v.Flags = proto.Uint32(v.GetFlags() | unix.MAP_HUGETLB) },
		"growsdown": func(v *vma.VmaEntry) { v.Flags = proto.Uint32(v.GetFlags() | unix.MAP_GROWSDOWN) },
		"file": func(v *vma.VmaEntry) {
			v.Flags = proto.Uint32(unix.MAP_PRIVATE)
			v.Status = proto.Uint32(vmaAreaRegular | vmaFilePrivate)
			v.Shmid = proto.Uint64(5)
		},
	} {
		v := proto.Clone(base).(*vma.VmaEntry)
		change(v)
		if runs := sharedMaps([]*vma.VmaEntry{v}, []*vma.VmaEntry{base}); len(runs) != 0 {
			t.Errorf("%s: shared %v", name, runs)
		}
	}
	if runs := sharedMaps([]*vma.VmaEntry{base}, []*vma.VmaEntry{proto.Clone(base).(*vma.VmaEntry)}); len(runs) != 1 {
		t.Errorf("the same map: shared %v", runs)
	}
}

// A checkpoint whose images cannot be read is an error, not a guess.
func TestPageByPageBadImages(t *testing.T) {
	dir := t.TempDir()
	if _, err := PageByPage(dir); err == nil {
		t.Fatal("no pstree.img: no error")
	}
	if err := os.WriteFile(filepath.Join(dir, "pstree.img"), []byte("not an image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := PageByPage(dir); err == nil {
		t.Fatal("a bad pstree.img: no error")
	}
	// go-criu decodes by the file's magic: a pstree.img, or an mm image,
	// that says PAGEMAP decodes as pagemap entries (a review found the
	// shim panicked then).
	writeImage(t, filepath.Join(dir, "pstree.img"), "PAGEMAP", &pagemap.PagemapHead{PagesId: proto.Uint32(1)})
	if _, err := PageByPage(dir); err == nil {
		t.Fatal("a pstree.img of pagemap entries: no error")
	}
	tree := writeTree(t, task{pid: 1, pagesID: 1, maps: []*vma.VmaEntry{anon(0x1000, 0x2000)}},
		task{pid: 2, ppid: 1, pagesID: 2, maps: []*vma.VmaEntry{anon(0x1000, 0x2000)}, present: [][2]uint64{{0x1000, 1}}})
	writeImage(t, filepath.Join(tree, "mm-2.img"), "PAGEMAP", &pagemap.PagemapHead{PagesId: proto.Uint32(2)})
	if _, err := PageByPage(tree); err == nil {
		t.Fatal("an mm image of pagemap entries: no error")
	}
}

// CRIU 4 writes an entry's page count in field 5, which go-criu's proto
// does not know, and 0 in field 2; older CRIUs field 2 only.
func TestNrPages(t *testing.T) {
	e := &pagemap.PagemapEntry{Vaddr: proto.Uint64(0x1000), NrPages: proto.Uint32(0), Flags: proto.Uint32(pagePresent)}
	e.ProtoReflect().SetUnknown(protowire.AppendVarint(protowire.AppendTag(nil, 5, protowire.VarintType), 5<<32))
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	back := &pagemap.PagemapEntry{}
	if err := proto.Unmarshal(b, back); err != nil {
		t.Fatal(err)
	}
	if n := nrPages(back); n != 5<<32 {
		t.Fatalf("field 5: %d pages, want %d", n, uint64(5<<32))
	}
	if n := nrPages(&pagemap.PagemapEntry{NrPages: proto.Uint32(7)}); n != 7 {
		t.Fatalf("field 2: %d pages, want 7", n)
	}
}

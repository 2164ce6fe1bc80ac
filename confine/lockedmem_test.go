package confine

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	pipedata "github.com/checkpoint-restore/go-criu/v7/crit/images/pipe-data"
	"github.com/checkpoint-restore/go-criu/v7/crit/images/vma"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

func TestLockedMemoryWithinRLIMITMemlock(t *testing.T) {
	area := func(start, end uint64, flags uint32) *vma.VmaEntry {
		return &vma.VmaEntry{Start: proto.Uint64(start), End: proto.Uint64(end), Pgoff: proto.Uint64(0), Shmid: proto.Uint64(0),
			Prot: proto.Uint32(unix.PROT_READ | unix.PROT_WRITE), Flags: proto.Uint32(flags), Status: proto.Uint32(1), Fd: proto.Int64(-1)}
	}
	private := uint32(unix.MAP_PRIVATE | unix.MAP_ANONYMOUS)
	limit := unix.Rlimit{Cur: 8 << 20, Max: 8 << 20}
	for _, c := range []struct {
		name    string
		areas   []*vma.VmaEntry
		limit   unix.Rlimit
		ipcLock bool
		refuse  string
	}{
		{name: "nothing locked", areas: []*vma.VmaEntry{area(0x10000, 0x10000+64<<20, private)}, limit: limit},
		{name: "locked within the limit", areas: []*vma.VmaEntry{area(0x10000, 0x10000+4<<20, private|unix.MAP_LOCKED), area(0x1000000, 0x1000000+4<<20, private|unix.MAP_LOCKED)}, limit: limit},
		{name: "locked past the limit in two mappings", areas: []*vma.VmaEntry{area(0x10000, 0x10000+4<<20, private|unix.MAP_LOCKED), area(0x1000000, 0x1000000+4<<20+4096, private|unix.MAP_LOCKED)}, limit: limit,
			refuse: "mm-1.img locks 8392704 bytes of memory (MAP_LOCKED), more than RLIMIT_MEMLOCK lets a cold start's process lock (8388608)"},
		{name: "locked past the limit, CAP_IPC_LOCK", areas: []*vma.VmaEntry{area(0x10000, 0x10000+64<<20, private|unix.MAP_LOCKED)}, limit: limit, ipcLock: true},
		{name: "locked, no limit", areas: []*vma.VmaEntry{area(0x10000, 0x10000+64<<20, private|unix.MAP_LOCKED)}, limit: unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}},
		{name: "locked, a limit of 0", areas: []*vma.VmaEntry{area(0x10000, 0x11000, private|unix.MAP_LOCKED)}, limit: unix.Rlimit{}, refuse: "locks 4096 bytes"},
		{name: "locked past the soft limit, within the hard one", areas: []*vma.VmaEntry{area(0x10000, 0x10000+16<<20, private|unix.MAP_LOCKED)}, limit: unix.Rlimit{Cur: 8 << 20, Max: 16 << 20}},
		{name: "locked sizes that wrap", areas: []*vma.VmaEntry{area(0x1000, 1<<63+0x1000, private|unix.MAP_LOCKED), area(0x1000, 1<<63+0x1000, private|unix.MAP_LOCKED)}, limit: limit,
			refuse: "locks 18446744073709551615 bytes"},
		{name: "no memory maps", areas: nil, limit: limit, ipcLock: true, refuse: "has no memory maps"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeImage(t, filepath.Join(dir, "mm-1.img"), "MM", &mm.MmEntry{MmStartCode: proto.Uint64(0), MmEndCode: proto.Uint64(0), MmStartData: proto.Uint64(0),
				MmEndData: proto.Uint64(0), MmStartStack: proto.Uint64(0), MmStartBrk: proto.Uint64(0), MmBrk: proto.Uint64(0), MmArgStart: proto.Uint64(0),
				MmArgEnd: proto.Uint64(0), MmEnvStart: proto.Uint64(0), MmEnvEnd: proto.Uint64(0), ExeFileId: proto.Uint32(1), Vmas: c.areas})
			err := checkLockedMemory(dir, []string{"mm-1.img"}, c.limit, c.ipcLock)
			if c.refuse == "" {
				if err := checkLockedMemory(dir, []string{"mm-1.img", "vmas-1.img"}, c.limit, true); err == nil || !strings.Contains(err.Error(), "old format (vmas-1.img)") {
					t.Errorf("with vmas-1.img: %v, want a refusal", err)
				}
			}
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

func TestPipeSizesWithinPipeMaxSize(t *testing.T) {
	pipe := func(id, size uint32, data string) *crit.CriuEntry {
		e := &pipedata.PipeDataEntry{PipeId: proto.Uint32(id), Bytes: proto.Uint32(uint32(len(data)))}
		if size != 0 {
			e.Size = proto.Uint32(size)
		}
		return &crit.CriuEntry{Message: e, Extra: base64.StdEncoding.EncodeToString([]byte(data))}
	}
	max := func() (uint32, error) { return 1 << 20, nil }
	for _, c := range []struct {
		name        string
		image       string
		magic       string
		pipes       []*crit.CriuEntry
		sysResource bool
		refuse      string
	}{
		{name: "the default size", image: "pipes-data.img", magic: "PIPES_DATA", pipes: []*crit.CriuEntry{pipe(1, 64<<10, "hello")}},
		{name: "no size", image: "pipes-data.img", magic: "PIPES_DATA", pipes: []*crit.CriuEntry{pipe(1, 0, "hello")}},
		{name: "at the limit, after a pipe's data", image: "pipes-data.img", magic: "PIPES_DATA", pipes: []*crit.CriuEntry{pipe(1, 64<<10, strings.Repeat("x", 5000)), pipe(2, 1<<20, "")}},
		{name: "past the limit, after a pipe's data", image: "pipes-data.img", magic: "PIPES_DATA", pipes: []*crit.CriuEntry{pipe(1, 64<<10, strings.Repeat("x", 5000)), pipe(2, 256<<20, "y")},
			refuse: "pipes-data.img: pipe 0x2 gets a buffer of 268435456 bytes, more than fs.pipe-max-size (1048576), which takes CAP_SYS_RESOURCE"},
		{name: "a FIFO past the limit", image: "fifo-data.img", magic: "FIFO_DATA", pipes: []*crit.CriuEntry{pipe(3, 2<<20, "")}, refuse: "fifo-data.img: pipe 0x3 gets"},
		{name: "past the limit, CAP_SYS_RESOURCE", image: "pipes-data.img", magic: "PIPES_DATA", pipes: []*crit.CriuEntry{pipe(1, 256<<20, "")}, sysResource: true},
		{name: "the wrong magic", image: "pipes-data.img", magic: "FIFO_DATA", pipes: []*crit.CriuEntry{pipe(1, 64<<10, "")}, refuse: "a FIFO_DATA image, want PIPES_DATA"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			f, err := os.Create(filepath.Join(dir, c.image))
			if err != nil {
				t.Fatal(err)
			}
			if err := crit.New(nil, f, "", false, false).Encode(&crit.CriuImage{Magic: c.magic, Entries: c.pipes}); err != nil {
				t.Fatal(err)
			}
			f.Close()
			err = checkPipeSizes(dir, []string{c.image}, max, c.sysResource)
			switch {
			case c.refuse == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case c.refuse != "" && (err == nil || !strings.Contains(err.Error(), c.refuse)):
				t.Fatalf("%v, want a refusal about %q", err, c.refuse)
			}
		})
	}
}

// A pipe's bytes that run past the end of its image.
func TestPipeDataPastItsImage(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "pipes-data.img"))
	if err != nil {
		t.Fatal(err)
	}
	e := &crit.CriuEntry{Message: &pipedata.PipeDataEntry{PipeId: proto.Uint32(1), Bytes: proto.Uint32(4), Size: proto.Uint32(4096)}, Extra: base64.StdEncoding.EncodeToString([]byte("abcd"))}
	if err := crit.New(nil, f, "", false, false).Encode(&crit.CriuImage{Magic: "PIPES_DATA", Entries: []*crit.CriuEntry{e}}); err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	f.Truncate(fi.Size() - 2)
	f.Close()
	err = checkPipeSizes(dir, []string{"pipes-data.img"}, func() (uint32, error) { return 1 << 20, nil }, false)
	if err == nil || !strings.Contains(err.Error(), "past the end of the image") {
		t.Fatalf("%v, want a refusal of the cut image", err)
	}
}

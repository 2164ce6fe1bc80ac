package confine

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"

	"github.com/checkpoint-restore/go-criu/v7/crit/images/mm"
	pipedata "github.com/checkpoint-restore/go-criu/v7/crit/images/pipe-data"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// checkLockedMemory refuses a process whose locked memory (its mappings
// with MAP_LOCKED, which CRIU's restorer maps locked before it drops the
// task's capabilities) is more than limit allows, the RLIMIT_MEMLOCK a
// cold start's processes get (up to its hard limit, to which a process
// may raise its own), unless ipcLock: the spec grants CAP_IPC_LOCK on the
// node. The kernel holds a process's locked memory to that limit without
// the capability; as root, CRIU's restorer is not held to it, and locked
// memory is never reclaimed or swapped. The memory maps must be in the
// mm image: CRIU reads them from CRIU's old vmas-<pid>.img for an mm image
// without any, which is refused (a process has at least one).
func checkLockedMemory(imagesDir string, names []string, limit unix.Rlimit, ipcLock bool) error {
	for _, name := range names {
		if strings.HasPrefix(name, "vmas-") {
			return fmt.Errorf("the checkpoint has memory maps in CRIU's old format (%s)", name)
		}
	}
	for _, name := range names {
		if !strings.HasPrefix(name, "mm-") || !strings.HasSuffix(name, ".img") {
			continue
		}
		img, err := decodeOne(filepath.Join(imagesDir, name), &mm.MmEntry{})
		if err != nil {
			return err
		}
		vmas := img.Entries[0].Message.(*mm.MmEntry).GetVmas()
		if len(vmas) == 0 {
			return fmt.Errorf("%s has no memory maps; CRIU would read them from elsewhere, unchecked", name)
		}
		if ipcLock || limit.Max == unix.RLIM_INFINITY {
			continue
		}
		var locked uint64
		for _, v := range vmas {
			if v.GetFlags()&unix.MAP_LOCKED != 0 && v.GetEnd() > v.GetStart() {
				if locked += v.GetEnd() - v.GetStart(); locked < v.GetEnd()-v.GetStart() {
					locked = math.MaxUint64 // wrapped
				}
			}
		}
		if locked > limit.Max {
			return fmt.Errorf("%s locks %d bytes of memory (MAP_LOCKED), more than RLIMIT_MEMLOCK lets a cold start's process lock (%d), which takes CAP_IPC_LOCK; the spec does not grant it", name, locked, limit.Max)
		}
	}
	return nil
}

// pipeDataImages are the images of the pipes' and FIFOs' buffered data,
// with the size of each buffer.
var pipeDataImages = map[string]string{"pipes-data.img": "PIPES_DATA", "fifo-data.img": "FIFO_DATA"}

// checkPipeSizes refuses a pipe or FIFO whose buffer is larger than
// fs.pipe-max-size (maxSize), unless sysResource: the spec grants
// CAP_SYS_RESOURCE on the node. CRIU sets the image's size
// (F_SETPIPE_SZ) as root, where the kernel holds a cold start's process
// to that limit.
func checkPipeSizes(imagesDir string, names []string, maxSize func() (uint32, error), sysResource bool) error {
	if sysResource {
		return nil
	}
	var max uint32
	for _, name := range names {
		magic, ok := pipeDataImages[name]
		if !ok {
			continue
		}
		err := eachPipeData(filepath.Join(imagesDir, name), magic, func(e *pipedata.PipeDataEntry) error {
			if e.Size == nil {
				return nil
			}
			if max == 0 {
				var err error
				if max, err = maxSize(); err != nil {
					return fmt.Errorf("fs.pipe-max-size: %w", err)
				}
			}
			if e.GetSize() > max {
				return fmt.Errorf("pipe %#x gets a buffer of %d bytes, more than fs.pipe-max-size (%d), which takes CAP_SYS_RESOURCE; the spec does not grant it", e.GetPipeId(), e.GetSize(), max)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// eachPipeData reads a pipe data image: entries each followed by the
// pipe's bytes, which are skipped.
func eachPipeData(path, want string, each func(*pipedata.PipeDataEntry) error) error {
	f, fi, err := openImage(path, want)
	if err != nil {
		return err
	}
	defer f.Close()
	err = walkEntries(f, fi.Size(), 1<<10, func(entry []byte, at int64) (int64, error) {
		e := &pipedata.PipeDataEntry{}
		if err := proto.Unmarshal(entry, e); err != nil {
			return 0, fmt.Errorf("entry at %d: %w", at, err)
		}
		return int64(e.GetBytes()), each(e)
	})
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	return nil
}

// pipeMaxSize reads this node's fs.pipe-max-size.
func pipeMaxSize() (uint32, error) {
	b, err := os.ReadFile("/proc/sys/fs/pipe-max-size")
	if err != nil {
		return 0, err
	}
	var v uint32
	if _, err := fmt.Sscan(string(b), &v); err != nil || v == 0 {
		return 0, errors.Join(errors.New("not a size: "+strings.TrimSpace(string(b))), err)
	}
	return v, nil
}

//go:build integration

package integration

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/checkpoint-restore/go-criu/v7/crit"
	pipedata "github.com/checkpoint-restore/go-criu/v7/crit/images/pipe-data"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// TestLockedMemoryNeedsCAPIPCLock restores a donor with CAP_IPC_LOCK that
// maps 16 MiB MAP_LOCKED, past the RLIMIT_MEMLOCK of 8 MiB (soft and hard)
// the test's containerd passes on. CRIU's restorer maps it locked as root: a clone
// without the capability cold-starts, one with it gets its locked memory
// back.
func TestLockedMemoryNeedsCAPIPCLock(t *testing.T) {
	requireShim(t)
	var memlock unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &memlock); err != nil {
		t.Fatal(err)
	}
	if memlock.Max == unix.RLIM_INFINITY || memlock.Max >= 16<<20 {
		t.Skipf("RLIMIT_MEMLOCK's hard limit is %d here: a lock of 16 MiB takes no capability", memlock.Max)
	}
	program, flags := buildProgram(t, "limits", limitsProgram)
	script := program + " lock"
	locked := func(t *testing.T, id string) {
		t.Helper()
		if got := statusField(t, taskPID(t, id), "VmLck"); got != "16384 kB" {
			t.Errorf("%s has VmLck %s, want 16384 kB", id, got)
		}
	}
	donor, donorLog := startScriptClone(t, "", script, append(flags, "--cap-add", "CAP_IPC_LOCK")...)
	waitCount(t, donorLog, 5)
	locked(t, donor)
	ck := packAndPush(t, donor, registryAddr+"/it/crafted:memlock", packOptions{})
	t.Run("without CAP_IPC_LOCK", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
		expectSpecFallback(t, offset, clone, cloneLog, "locks 16777216 bytes of memory (MAP_LOCKED), more than RLIMIT_MEMLOCK lets a cold start's process lock (8388608)")
	})
	t.Run("with CAP_IPC_LOCK", func(t *testing.T) {
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, append(flags, "--cap-add", "CAP_IPC_LOCK")...)
		expectRestored(t, offset, clone, cloneLog)
		locked(t, clone)
	})
}

// TestPipeSizeNeedsCAPSysResource restores a donor holding a pipe with a
// 1 MiB buffer, fs.pipe-max-size, its images edited to make it 4 MiB,
// which takes CAP_SYS_RESOURCE: CRIU sets the size as root, so a clone
// without the capability cold-starts. (This machine's root has no
// CAP_SYS_RESOURCE: CRIU could not set that size here either, and no
// donor can be given one.) As dumped, it restores with its 1 MiB.
func TestPipeSizeNeedsCAPSysResource(t *testing.T) {
	requireShim(t)
	if b, err := os.ReadFile("/proc/sys/fs/pipe-max-size"); err != nil || strings.TrimSpace(string(b)) != "1048576" {
		t.Skipf("fs.pipe-max-size is %q (%v), not the default", b, err)
	}
	program, flags := buildProgram(t, "limits", limitsProgram)
	script := program + " pipe"
	donor, donorLog := startScriptClone(t, "", script, flags...)
	waitCount(t, donorLog, 5)
	if got := pipeSize(t, taskPID(t, donor), 3); got != 1<<20 {
		t.Fatalf("the donor's pipe holds %d bytes, want %d", got, 1<<20)
	}
	t.Run("as dumped", func(t *testing.T) {
		ck := packAndPush(t, donor, registryAddr+"/it/crafted:pipe", packOptions{})
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
		expectRestored(t, offset, clone, cloneLog)
		if got := pipeSize(t, taskPID(t, clone), 3); got != 1<<20 {
			t.Errorf("the clone's pipe holds %d bytes, want %d", got, 1<<20)
		}
	})
	t.Run("edited to 4 MiB", func(t *testing.T) {
		ck := packAndPush(t, donor, registryAddr+"/it/crafted:pipe-4m", packOptions{tamper: func(t *testing.T, dir string) {
			edited := 0
			editImages(t, dir, "pipes-data.img", &pipedata.PipeDataEntry{}, func(img *crit.CriuImage) {
				for _, e := range img.Entries {
					if p := e.Message.(*pipedata.PipeDataEntry); p.GetSize() == 1<<20 {
						p.Size = proto.Uint32(4 << 20)
						edited++
					}
				}
			})
			if edited != 1 {
				t.Fatalf("%d pipes of 1 MiB in the checkpoint, want 1", edited)
			}
		}})
		offset := containerdLogOffset()
		clone, cloneLog := startScriptClone(t, ck.Ref, script, flags...)
		expectSpecFallback(t, offset, clone, cloneLog, "a buffer of 4194304 bytes, more than fs.pipe-max-size (1048576), which takes CAP_SYS_RESOURCE")
	})
}

// pipeSize returns the buffer size of the pipe at a process's fd.
func pipeSize(t *testing.T, pid, fd int) int {
	t.Helper()
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/fd/" + strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, err := unix.FcntlInt(f.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// limitsProgram ("lock": maps 16 MiB locked; "pipe": makes a pipe, fd 3
// its read end, with a 1 MiB buffer and a few bytes in it) and counts, as
// counterScript does. A cold start that may not says so.
const limitsProgram = `package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"
)

func main() {
	var keep any
	switch os.Args[1] {
	case "lock":
		b, err := syscall.Mmap(-1, 0, 16<<20, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON|syscall.MAP_LOCKED)
		if err != nil {
			fmt.Fprintln(os.Stderr, "no lock:", err)
		}
		keep = b
	case "pipe":
		var p [2]int
		if err := syscall.Pipe(p[:]); err != nil {
			panic(err)
		}
		if p[0] != 3 {
			panic(fmt.Sprint("the pipe's read end is fd ", p[0]))
		}
		// F_SETPIPE_SZ
		if _, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(p[0]), 1031, 1<<20); errno != 0 {
			fmt.Fprintln(os.Stderr, "no size:", errno)
		}
		syscall.Write(p[1], []byte("queued"))
		keep = p
	}
	for i := 1; ; i++ {
		fmt.Println(i)
		time.Sleep(100 * time.Millisecond)
		runtime.KeepAlive(keep)
	}
}
`
